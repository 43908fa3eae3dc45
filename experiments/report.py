"""Turn a grid's run records into results.csv, results.md, summary.md and two plots.

* ``results.csv``: one row per run (cell, seed, test accuracy, macro F1, best epoch, the
  epoch that was tested, epochs run, train-validation accuracy gap at the tested epoch,
  wall time, status).
* ``results.md``: one row per cell (mean and 95% CI over seeds of test accuracy and macro
  F1, beside the published single-run number where there is one), then every pairwise
  comparison of cells that differ in exactly one factor, then the generated summary.
* ``summary.md``: the published claims' table (below) and the generated summary (also
  printed).
* ``summary.json``: the same claims, machine-readable (strict JSON):
  ``{"claims": [{"claim", "a", "b", "paired", "difference", "ci95", "p",
  "p_permutation", "p_holm", "prob_improvement", "significant", ...}], "runs": n,
  "seeds": k, "family": ..., "comparisons": [...]}`` (see :func:`summary_json`).
* ``accuracy_bars.png``: test accuracy per cell, mean with 95% CI error bars, the single
  seeds as dots, the published number as a cross, the majority-class rate as a line.
* ``learning_curves.png``: per cell, train (dashed) and validation (solid) accuracy per
  epoch for every seed, read from each run's ``metrics.jsonl``.

Statistics matched to the design (``cxrjax.reporting.stats.compare_runs``): runs of the
same seed in two cells of the same network (same initial weights and batch order) are
paired -- paired t-test on the per-seed differences, the exact sign-flip permutation p
beside it (its floor 2/2^n stated), a bootstrap 95% interval of the mean difference and
P(A > B) over seeds; cells of different networks get Welch's t-test, the two-sample
permutation test, a bootstrap interval and P(A > B) over all pairs of runs. A difference
"exceeds seed noise" when its t-test (paired t or Welch) gives p < 0.05.

Each published claim states what it expects (:class:`Claim`): A above B (``">"``), A
below B (``"<"``), or no difference (``"="``: within a stated margin, default
:data:`EQUIVALENCE_MARGIN`). A directional claim is tested by the difference test above;
a no-difference claim by an equivalence test (``stats.equivalence_test``: two one-sided
tests, TOST), since a difference test that fails to reject is no evidence of equality.
Each claim gets a verdict: **supported** (Holm-significant in the stated direction, or
equivalent), **contradicted** (Holm-significant the other way; for a no-difference
claim: its whole 95% interval outside the margin) or **inconclusive**.

Two families for Holm's correction (Holm 1979), each said in the report: the
experiment's **published claims** (``summary.json["claims"]``, one test per claim:
"significant" = Holm p < 0.05 within that family, "supported" = significant in the
claimed direction), and, separately, the exploratory family of **every one-factor
comparison** in results.md.
"""

from __future__ import annotations

import csv
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from cxrjax.reporting import stats
from cxrjax.reporting.jsonio import write_json
from cxrjax.train.workdir import read_history
from experiments.grid import Cell, RunRecord

ALPHA = 0.05
# A "no difference" claim holds when |A - B| < this (test accuracy, fractions) with 95%
# confidence: 5 points is below every difference S4 reports as an effect between its
# networks (11 to 24 points) and well above the 0.4-0.6 points it calls "no difference".
EQUIVALENCE_MARGIN = 0.05
EXPECTATIONS = (">", "<", "=")
CSV_FIELDS = (
    "cell",
    "seed",
    "status",
    "test_accuracy",
    "test_macro_f1",
    "best_epoch",
    "evaluated_epoch",
    "epochs_run",
    "train_val_gap",
    "wall_time_s",
    "run_dir",
)

# Names the engine may use in metrics.jsonl (flat "train_accuracy" or nested
# {"train": {"accuracy": ...}}); the first present wins.
_TRAIN_ACC_KEYS = ("train_accuracy", "train/accuracy", "train_acc")
_VAL_ACC_KEYS = ("validation_accuracy", "val_accuracy", "validation/accuracy", "val/accuracy", "val_acc")
_NESTED = {"train": ("train",), "val": ("validation", "val")}


@dataclass(frozen=True)
class Claim:
    """A published statement comparing two cells: ``a`` minus ``b`` in test accuracy.

    ``expect``: what the statement says of ``a - b``: ``">"`` (positive), ``"<"``
    (negative) or ``"="`` (no difference: ``|a - b| < margin``, tested for equivalence).
    """

    a: str
    b: str
    statement: str
    expect: str = ">"
    margin: float = EQUIVALENCE_MARGIN

    def __post_init__(self) -> None:
        if self.expect not in EXPECTATIONS:
            raise ValueError(f"Claim {self.statement!r}: expect={self.expect!r} is not one of {EXPECTATIONS}")
        if not self.margin > 0:
            raise ValueError(f"Claim {self.statement!r}: margin must be > 0, got {self.margin!r}")

    @property
    def expectation(self) -> str:
        """What the claim expects, in words: "A > B", "A < B", "A = B within 5 pts" (no "|":
        the text goes into Markdown tables)."""
        if self.expect == "=":
            return f"A = B within {100 * self.margin:g} pts"
        return f"A {self.expect} B"


@dataclass
class CellStats:
    cell: Cell
    accuracy: stats.MeanCI
    macro_f1: stats.MeanCI
    gap: stats.MeanCI
    epochs_run: stats.MeanCI
    wall_time_s: stats.MeanCI
    n_failed: int


@dataclass
class Comparison:
    a: Cell
    b: Cell
    factor: str
    result: stats.Difference
    p_holm: float = float("nan")

    @property
    def context(self) -> str:
        shared = [f"{k}={v}" for k, v in self.a.factors.items() if k != self.factor]
        return ", ".join(shared)

    @property
    def label(self) -> str:
        return f"{self.factor}: {self.b.factors[self.factor]} -> {self.a.factors[self.factor]}"


# --------------------------------------------------------------------------- per run


def _get(d: Mapping[str, Any], dotted: str) -> Any:
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def _count(x: Any) -> int | float:
    """An epoch count as int (NaN when missing), so results.csv says 3, not 3.0."""
    v = _num(x)
    return int(v) if math.isfinite(v) and v == int(v) else v


def _acc(row: Mapping[str, Any], which: str) -> float:
    for key in _TRAIN_ACC_KEYS if which == "train" else _VAL_ACC_KEYS:
        if key in row:
            return _num(row[key])
    for group in _NESTED[which]:
        value = _get(row, f"{group}.accuracy")
        if value is not None:
            return _num(value)
    return float("nan")


def curves(run_dir: str | Path) -> tuple[list[float], list[float], list[float]]:
    """(epochs, train accuracy, validation accuracy) from ``metrics.jsonl``, read with the
    engine's own reader (``cxrjax.train.workdir.read_history``)."""
    rows = read_history(run_dir)
    epochs = [_num(r.get("epoch", i + 1)) for i, r in enumerate(rows)]
    return epochs, [_acc(r, "train") for r in rows], [_acc(r, "val") for r in rows]


def train_val_gap(run_dir: str | Path, epoch: Any) -> float:
    """Train minus validation accuracy at ``epoch`` (that of the tested checkpoint); at the
    last logged epoch when ``epoch`` is not in the log."""
    epochs, train, val = curves(run_dir)
    if not epochs:
        return float("nan")
    i = len(epochs) - 1
    target = _num(epoch)
    if math.isfinite(target) and target in epochs:
        i = epochs.index(target)
    return train[i] - val[i]


def evaluated_epoch(results: Mapping[str, Any]) -> float:
    """The epoch whose weights were tested: the best one when the run restored its best
    checkpoint, the last one otherwise (the engine's ``evaluated.epoch``)."""
    value = _get(results, "evaluated.epoch")
    return _count(value if value is not None else results.get("best_epoch"))


def run_row(record: RunRecord) -> dict:
    r = record.results
    tested = evaluated_epoch(r) if record.ok else float("nan")
    return {
        "cell": record.cell,
        "seed": record.seed,
        "status": "ok" if record.ok else f"failed: {record.error}",
        "test_accuracy": _num(_get(r, "test.accuracy")),
        "test_macro_f1": _num(_get(r, "test.macro_f1")),
        "best_epoch": _count(r.get("best_epoch")),
        "evaluated_epoch": tested,
        "epochs_run": _count(r.get("epochs_run")),
        "train_val_gap": train_val_gap(record.run_dir, tested) if record.ok else float("nan"),
        "wall_time_s": _num(record.wall_time_s),
        "run_dir": str(record.run_dir),
    }


def majority_rate(records: Iterable[RunRecord]) -> float:
    """Share of the most frequent class in the test set, from a confusion matrix."""
    for rec in records:
        cm = _get(rec.results, "test.confusion_matrix")
        if cm:
            m = np.asarray(cm, dtype=np.float64)
            if m.sum() > 0:
                return float(m.sum(axis=1).max() / m.sum())
    return float("nan")


# --------------------------------------------------------------------------- aggregation


def cell_stats(cells: Sequence[Cell], rows: Sequence[Mapping[str, Any]]) -> list[CellStats]:
    out = []
    for cell in cells:
        mine = [r for r in rows if r["cell"] == cell.name]
        ok = [r for r in mine if r["status"] == "ok"]
        out.append(
            CellStats(
                cell=cell,
                accuracy=stats.mean_ci([r["test_accuracy"] for r in ok]),
                macro_f1=stats.mean_ci([r["test_macro_f1"] for r in ok]),
                gap=stats.mean_ci([r["train_val_gap"] for r in ok]),
                epochs_run=stats.mean_ci([r["epochs_run"] for r in ok]),
                wall_time_s=stats.mean_ci([r["wall_time_s"] for r in ok]),
                n_failed=len(mine) - len(ok),
            )
        )
    return out


def _by_seed(rows: Sequence[Mapping[str, Any]], cell: str, metric: str) -> dict[int, float]:
    return {int(r["seed"]): _num(r[metric]) for r in rows if r["cell"] == cell and r["status"] == "ok"}


def samples(
    a: Cell, b: Cell, rows: Sequence[Mapping[str, Any]], metric: str = "test_accuracy"
) -> tuple[list[float], list[float], bool]:
    """(a's values, b's values, paired): paired over the common seeds when both cells train
    the same network (seed k: the same initial weights and batch order in both), else two
    independent samples."""
    xa, xb = _by_seed(rows, a.name, metric), _by_seed(rows, b.name, metric)
    if a.network == b.network:
        seeds = sorted(set(xa) & set(xb))
        return [xa[s] for s in seeds], [xb[s] for s in seeds], True
    return list(xa.values()), list(xb.values()), False


def compare(a: Cell, b: Cell, rows: Sequence[Mapping[str, Any]], metric: str = "test_accuracy") -> stats.Difference:
    """Test ``a - b`` (:func:`samples` says whether paired)."""
    xa, xb, paired = samples(a, b, rows, metric)
    return stats.compare_runs(xa, xb, paired=paired)


def one_factor_pairs(cells: Sequence[Cell]) -> list[tuple[Cell, Cell, str]]:
    """(later, earlier, factor) for every pair of cells that differ in exactly one factor."""
    pairs = []
    for b, a in itertools.combinations(cells, 2):
        if set(a.factors) != set(b.factors):
            continue
        diff = [k for k in a.factors if a.factors[k] != b.factors[k]]
        if len(diff) == 1:
            pairs.append((a, b, diff[0]))
    return pairs


def comparisons(cells: Sequence[Cell], rows: Sequence[Mapping[str, Any]]) -> list[Comparison]:
    comps = [Comparison(a, b, f, compare(a, b, rows)) for a, b, f in one_factor_pairs(cells)]
    for comp, p in zip(comps, stats.holm([c.result.p for c in comps])):
        comp.p_holm = p
    return comps


@dataclass
class ClaimResult:
    """One published claim tested here; ``p_holm`` within the family of claims.

    ``result``: the difference tests of A - B (every claim); ``equivalence``: the TOST of
    a no-difference claim (None for directional ones). ``p``: the claim's own test (the
    difference t-test, or the TOST), the one Holm's correction and the verdict use.
    """

    claim: Claim
    a: Cell
    b: Cell
    result: stats.Difference
    equivalence: stats.Equivalence | None = None
    p_holm: float = float("nan")

    @property
    def p(self) -> float:
        return self.equivalence.p if self.equivalence is not None else self.result.p

    @property
    def p_permutation(self) -> float:
        return self.equivalence.p_permutation if self.equivalence is not None else self.result.permutation.p

    @property
    def significant(self) -> bool:
        return math.isfinite(self.p_holm) and self.p_holm < ALPHA

    @property
    def verdict(self) -> str:
        """supported | contradicted | inconclusive | not testable (see the module docstring)."""
        r = self.result
        if not math.isfinite(self.p):
            return "not testable"
        if self.claim.expect == "=":
            if self.significant:
                return "supported"
            m = self.claim.margin
            outside = math.isfinite(r.ci_low) and (r.ci_low >= m or r.ci_high <= -m)
            return "contradicted" if outside else "inconclusive"
        if not self.significant:
            return "inconclusive"
        right = r.difference > 0 if self.claim.expect == ">" else r.difference < 0
        return "supported" if right else "contradicted"

    @property
    def supported(self) -> bool:
        return self.verdict == "supported"


def verdict_counts(claims: Sequence[ClaimResult]) -> tuple[int, int]:
    """(supported, contradicted) among ``claims``."""
    verdicts = [c.verdict for c in claims]
    return verdicts.count("supported"), verdicts.count("contradicted")


def claim_results(
    cells: Sequence[Cell], rows: Sequence[Mapping[str, Any]], claims: Sequence[Claim]
) -> list[ClaimResult]:
    """The claims whose two cells are in this grid, tested, with Holm's correction over
    them (the family: these claims)."""
    by_name = {c.name: c for c in cells}
    out = []
    for claim in claims:
        if claim.a not in by_name or claim.b not in by_name:
            continue
        a, b = by_name[claim.a], by_name[claim.b]
        xa, xb, paired = samples(a, b, rows)
        equivalence = None
        if claim.expect == "=":
            equivalence = stats.equivalence_test(xa, xb, paired=paired, margin=claim.margin)
        out.append(ClaimResult(claim, a, b, stats.compare_runs(xa, xb, paired=paired), equivalence))
    for item, p in zip(out, stats.holm([c.p for c in out])):
        item.p_holm = p
    return out


def family_note(claims: Sequence[ClaimResult], comps: Sequence[Comparison]) -> str:
    """Which family Holm's correction runs over, in words."""
    return (
        f"the family of the {len(claims)} published claim(s) tested here; the {len(comps)} one-factor "
        "comparisons of results.md are a separate, exploratory family"
    )


DECISION = (
    "significant = Holm-adjusted p < 0.05 within the family, where p is the claim's own test: for a "
    "directional claim (A > B, A < B) the two-sided paired t-test (paired claims) or Welch's t-test "
    "(unpaired), for a no-difference claim the equivalence test (two one-sided t-tests, TOST, that "
    "|A - B| < its margin); supported = significant in the claimed direction (or equivalent), "
    "contradicted = significant the other way (a no-difference claim: its 95% interval outside the "
    "margin), else inconclusive; the permutation p (exact sign-flip for paired claims, two-sample "
    "permutation test otherwise; one-sided pairs for TOST) is given beside it"
)


def floor_note(items: Sequence[ClaimResult | Comparison]) -> str:
    """The resolution of the exact sign-flip p-values, e.g. "2/2^3 = 0.25" (empty when
    nothing paired was tested exactly)."""
    sizes = sorted(
        {
            c.result.permutation.n
            for c in items
            if c.result.paired and c.result.permutation.exact and c.result.permutation.n
        }
    )
    if not sizes:
        return ""
    return (
        "The exact sign-flip p of a paired difference over n seeds cannot go below 2/2^n ("
        + ", ".join(f"n={n}: {2.0 / 2**n:.3g}" for n in sizes)
        + "), however large the difference."
    )


def difference_dict(result: stats.Difference, p_holm: float) -> dict[str, Any]:
    """One difference in summary.json: the issue's keys in its order, then the test names,
    the permutation p's floor and the sample sizes (test accuracy, fractions)."""
    perm = result.permutation
    return {
        "paired": result.paired,
        "difference": result.difference,
        "ci95": [result.ci_low, result.ci_high],
        "p": result.p,
        "p_permutation": perm.p,
        "p_holm": p_holm,
        "prob_improvement": result.prob_improvement,
        "significant": math.isfinite(p_holm) and p_holm < ALPHA,
        "test": "paired t-test" if result.paired else "Welch's t-test",
        "permutation_test": ("exact " if perm.exact else "Monte Carlo ") + perm.test,
        "p_permutation_floor": perm.floor,
        "ci_method": "percentile bootstrap of the mean difference",
        "n_a": result.t_test.n_a,
        "n_b": result.t_test.n_b,
    }


def timing_summary(records: Sequence[RunRecord]) -> dict[str, Any]:
    """Mean seconds per phase of a run (``results.json["timings"]``, written by the engine
    for the session that finished the run) over the runs that have them, and what the
    grid measured around the engine call (``wall_time_s`` minus the engine's total: the
    dataset lookup, a fresh process's first imports...). For before/after comparisons of
    a run's fixed costs on a quiet machine."""
    timed = [r for r in records if r.ok and isinstance(r.results.get("timings"), Mapping)]
    if not timed:
        return {"runs": 0, "mean_s": {}}
    phases = list(dict.fromkeys(k for r in timed for k in r.results["timings"]))
    mean = {k: float(np.mean([_num(r.results["timings"].get(k, 0.0)) for r in timed])) for k in phases}
    outside = [
        r.wall_time_s - _num(r.results["timings"].get("total"))
        for r in timed
        if r.wall_time_s is not None and math.isfinite(_num(r.results["timings"].get("total")))
    ]
    if outside:
        mean["outside_engine"] = float(np.mean(outside))
    continued = [r.continued for r in records if r.ok and r.continued]
    return {
        "runs": len(timed),
        "mean_s": mean,
        # runs that started from the last epoch of their early-stopping twin (grid.run_one)
        "continued_runs": len(continued),
        "epochs_not_retrained": int(sum(int(c.get("epochs") or 0) for c in continued)),
    }


def timing_table(timings: Mapping[str, Any]) -> str:
    """One row per phase: mean seconds per run and share of the engine's total."""
    mean = timings.get("mean_s") or {}
    total = mean.get("total", float("nan"))
    lines = ["| Phase | Mean s per run | Share of total |", "|---|---|---|"]
    for phase, value in mean.items():
        share = "" if phase in ("total", "outside_engine") or not total else f"{100 * value / total:.0f}%"
        lines.append(f"| {phase} | {value:.2f} | {share} |")
    return "\n".join(lines)


def summary_json(
    claims: Sequence[ClaimResult],
    comps: Sequence[Comparison],
    records: Sequence[RunRecord],
    *,
    metric: str = "test_accuracy",
    timings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """summary.json's content: the claims (the issue's keys first), then what else helps;
    ``timings``: :func:`timing_summary` of ``records`` when the caller has it already."""
    ok = [r for r in records if r.ok]
    supported, contradicted = verdict_counts(claims)
    return {
        "claims": [claim_dict(c) for c in claims],
        "supported": supported,
        "contradicted": contradicted,
        "runs": len(ok),
        "seeds": len({r.seed for r in records}),
        "failed_runs": len(records) - len(ok),
        "metric": metric,
        "alpha": ALPHA,
        "family": family_note(claims, comps),
        "decision": DECISION,
        "references": [
            'Bouthillier et al., MLSys 2021, "Accounting for variance in machine learning benchmarks"',
            "Holm, Scand. J. Statist. 1979, a simple sequentially rejective multiple test procedure",
        ],
        "timings": timing_summary(records) if timings is None else dict(timings),
        "comparisons": [
            {
                "comparison": c.label,
                "a": c.a.name,
                "b": c.b.name,
                "factor": c.factor,
                "context": c.context,
                **difference_dict(c.result, c.p_holm),
            }
            for c in comps
        ],
    }


def claim_dict(c: ClaimResult) -> dict[str, Any]:
    """One claim in summary.json: :func:`difference_dict`'s keys, with p, p_permutation
    and the test names those of the claim's own test (the TOST for a no-difference
    claim, whose difference test's p is kept as "p_difference"), then what it expects
    and its verdict."""
    out = {"claim": c.claim.statement, "a": c.a.name, "b": c.b.name, **difference_dict(c.result, c.p_holm)}
    eq = c.equivalence
    if eq is not None:
        paired = "paired" if c.result.paired else "Welch"
        out.update(
            p=eq.p,
            p_permutation=eq.p_permutation,
            test=f"{paired} TOST (two one-sided t-tests), margin {100 * eq.margin:g} pts",
            permutation_test="TOST of two one-sided "
            + ("sign-flip tests" if c.result.paired else "two-sample permutation tests")
            + ", A shifted by the margin",
            p_permutation_floor=eq.floor,
            p_difference=c.result.p,
            margin=eq.margin,
        )
    out.update(expect=c.claim.expect, expectation=c.claim.expectation, verdict=c.verdict, supported=c.supported)
    return out


def verdict(p: float) -> str:
    if not math.isfinite(p):
        return "not testable (fewer than 2 runs)"
    return "exceeds seed noise" if p < ALPHA else "within seed noise"


# --------------------------------------------------------------------------- formatting


def pct(x: float, digits: int = 1) -> str:
    if not math.isfinite(x):
        return "n/a"
    text = f"{100 * x:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.0"


def fmt_ci(m: stats.MeanCI) -> str:
    if m.n == 0:
        return "n/a"
    if m.n < 2:
        return f"{pct(m.mean)} (1 run)"
    return f"{pct(m.mean)} [{pct(m.low)}, {pct(m.high)}]"


def fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def _signed(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:+.1f}"


def cell_table(cs: Sequence[CellStats], factor_names: Sequence[str], reference_title: str) -> str:
    head = [
        "Cell",
        *factor_names,
        "n",
        "Test accuracy % (95% CI)",
        "Macro F1 % (95% CI)",
        "Train-val gap (pts)",
        "Epochs",
        reference_title,
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cs:
        ref = "" if c.cell.reference is None else f"{pct(c.cell.reference, 2).rstrip('0').rstrip('.')}"
        if ref and c.cell.reference_name:
            ref = f"{ref} ({c.cell.reference_name})"
        n = f"{c.accuracy.n}" + (f" (+{c.n_failed} failed)" if c.n_failed else "")
        lines.append(
            "| "
            + " | ".join(
                [
                    c.cell.label,
                    *[c.cell.factors.get(f, "") for f in factor_names],
                    n,
                    fmt_ci(c.accuracy),
                    fmt_ci(c.macro_f1),
                    pct(c.gap.mean),
                    "n/a" if not math.isfinite(c.epochs_run.mean) else f"{c.epochs_run.mean:.1f}",
                    ref,
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def _ci_text(result: stats.Difference) -> str:
    ci = "" if not math.isfinite(result.ci_low) else f" [{_signed(result.ci_low)}, {_signed(result.ci_high)}]"
    return f"{_signed(result.difference)}{ci}"


def _perm_text(result: stats.Difference, p: float | None = None) -> str:
    """The permutation p (or ``p``, another permutation test on the same runs: a claim's
    TOST), marked MC when it is Monte Carlo."""
    perm = result.permutation
    return fmt_p(perm.p if p is None else p) + ("" if perm.exact else " (MC)")


def _prob_text(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.2f}"


def _test_name(result: stats.Difference) -> str:
    return "paired" if result.paired else "welch"


def comparison_table(comps: Sequence[Comparison]) -> str:
    head = [
        "Comparison",
        "Other factors",
        "Difference (pts, 95% CI)",
        "Test",
        "p",
        "Permutation p",
        "P(A>B)",
        "Holm p",
        "Verdict",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in comps:
        r = c.result
        lines.append(
            "| "
            + " | ".join(
                [
                    c.label,
                    c.context,
                    _ci_text(r),
                    _test_name(r),
                    fmt_p(r.p),
                    _perm_text(r),
                    _prob_text(r.prob_improvement),
                    fmt_p(c.p_holm),
                    verdict(r.p),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def claims_table(claims: Sequence[ClaimResult]) -> str:
    """One row per published claim: A - B with its tests and Holm p within the claims."""
    head = [
        "Claim",
        "A - B",
        "Expects",
        "Difference (pts, 95% CI)",
        "Test",
        "p",
        "Permutation p",
        "P(A>B)",
        "Holm p",
        "Verdict",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in claims:
        r = c.result
        lines.append(
            "| "
            + " | ".join(
                [
                    c.claim.statement,
                    f"{c.a.label} - {c.b.label}",
                    c.claim.expectation,
                    _ci_text(r),
                    _test_name(r) + (" TOST" if c.equivalence is not None else ""),
                    fmt_p(c.p),
                    _perm_text(r, c.p_permutation),
                    _prob_text(r.prob_improvement),
                    fmt_p(c.p_holm),
                    c.verdict,
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def claims_section(claims: Sequence[ClaimResult], comps: Sequence[Comparison]) -> list[str]:
    """The claims table with what it means (family, decision, CI, permutation floor)."""
    if not claims:
        return []
    floor = floor_note(claims)
    return [
        claims_table(claims),
        "",
        f"Difference: mean of A - B in test accuracy, with a 95% percentile-bootstrap interval. Test: paired "
        "t-test over seeds when A and B train the same network (same seed = same initial weights and batch "
        "order), else Welch's t-test; TOST: the equivalence test of a no-difference claim; Permutation p: exact "
        "sign-flip test (paired) or two-sample permutation test (MC: Monte Carlo); P(A>B): share of seeds "
        "(paired) or of run pairs (unpaired) where A beats B. "
        f"Holm's correction over {family_note(claims, comps)}; {DECISION}." + (f" {floor}" if floor else ""),
    ]


def summary_text(
    cs: Sequence[CellStats],
    comps: Sequence[Comparison],
    claims: Sequence[ClaimResult],
    rows: Sequence[Mapping[str, Any]],
    *,
    references_comparable: bool,
    reference_source: str,
) -> str:
    """A few generated paragraphs: noise level, what exceeds it, published claims."""
    out: list[str] = []
    sds = [(c.accuracy.sd, c.cell.label) for c in cs if math.isfinite(c.accuracy.sd)]
    if sds:
        med = float(np.median([s for s, _ in sds]))
        worst = max(sds)
        out.append(
            f"Seed noise: the seed-to-seed standard deviation of test accuracy is {pct(med)} points "
            f"in the median cell and at most {pct(worst[0])} points ({worst[1]})."
        )
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        out.append(
            f"{len(failed)} run(s) failed and are excluded: "
            + "; ".join(f"{r['cell']} seed {r['seed']} ({r['status'][8:][:80]})" for r in failed)
        )
    sig = [c for c in comps if math.isfinite(c.result.p) and c.result.p < ALPHA]
    holm_sig = [c for c in sig if c.p_holm < ALPHA]
    if comps:
        out.append(
            f"Of {len(comps)} one-factor comparisons, {len(sig)} exceed{'s' if len(sig) == 1 else ''} seed noise "
            f"(p < {ALPHA}; {len(holm_sig)} of them also after Holm's correction for {len(comps)} comparisons):"
        )
        factors = list(dict.fromkeys(c.factor for c in comps))
        for factor in factors:
            mine = [c for c in comps if c.factor == factor]
            big = [c for c in mine if c in sig]
            items = ", ".join(
                f"{c.b.factors[factor]} -> {c.a.factors[factor]} ({c.context}): "
                f"{_signed(c.result.difference)} pts, p={fmt_p(c.result.p)}{'*' if c in holm_sig else ''}"
                for c in big
            )
            line = f"- {factor}: {len(big)} of {len(mine)} comparison{'s' if len(mine) != 1 else ''} exceed seed noise"
            out.append(line + (f": {items}." if big else "."))
        if holm_sig:
            out.append("  (* = also significant after Holm's correction.)")
    else:
        out.append("No two cells differ in exactly one factor, so no difference was tested.")
    if claims:
        n_supported, n_against = verdict_counts(claims)
        out.append(
            f"Published claims: {n_supported} of {len(claims)} supported after Holm's correction over the "
            f"{len(claims)} claims, {n_against} contradicted:"
        )
    for c in claims:
        a, b, r = c.a, c.b, c.result
        ref = ""
        if a.reference is not None and b.reference is not None:
            ref = f" ({reference_source}: {_signed(a.reference - b.reference)} pts from one run each)"
        perm = r.permutation
        tests = f"{'paired t' if r.paired else 'Welch'} p={fmt_p(r.p)}, {perm.test} p={fmt_p(perm.p)}"
        if c.equivalence is not None:
            tests = (
                f"equivalence within {100 * c.claim.margin:g} pts (TOST) p={fmt_p(c.p)}, permutation TOST "
                f"p={fmt_p(c.p_permutation)}; difference {tests}"
            )
        out.append(
            f'- Claim "{c.claim.statement}"{ref}: here {a.label} - {b.label} = {_signed(r.difference)} pts'
            + ("" if not math.isfinite(r.ci_low) else f" (95% CI {_signed(r.ci_low)} to {_signed(r.ci_high)})")
            + f", {tests}, Holm p={fmt_p(c.p_holm)}, P(A>B)={_prob_text(r.prob_improvement)}: {c.verdict}."
        )
    if references_comparable:
        inside = [c for c in cs if c.cell.reference is not None and c.accuracy.n >= 2]
        hits = [c for c in inside if c.accuracy.low <= c.cell.reference <= c.accuracy.high]
        if inside:
            out.append(
                f"{reference_source}'s single-run number lies inside our 95% CI for {len(hits)} of "
                f"{len(inside)} cells" + (": " + ", ".join(c.cell.label for c in hits) if hits else "") + "."
            )
    else:
        out.append(
            f"{reference_source}'s numbers come from a different dataset; they are shown for orientation, "
            "not as a test."
        )
    return "\n".join(out)


# --------------------------------------------------------------------------- plots


def plot_accuracy_bars(
    cs: Sequence[CellStats],
    rows: Sequence[Mapping[str, Any]],
    path: Path,
    *,
    title: str,
    majority: float,
    reference_source: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(cs)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * n + 2), 4.8))
    x = np.arange(n)
    means = np.array([c.accuracy.mean for c in cs]) * 100
    err = np.array([[c.accuracy.mean - c.accuracy.low, c.accuracy.high - c.accuracy.mean] for c in cs]).T * 100
    err = np.nan_to_num(err)
    ax.bar(x, np.nan_to_num(means), yerr=err, capsize=4, color="#7fa7d9", edgecolor="#2b5d9b", label="mean, 95% CI")
    for i, c in enumerate(cs):
        seeds = [100 * r["test_accuracy"] for r in rows if r["cell"] == c.cell.name and r["status"] == "ok"]
        ax.scatter(
            np.full(len(seeds), i) + np.linspace(-0.15, 0.15, len(seeds)),
            seeds,
            s=12,
            color="k",
            zorder=3,
            label="single seeds" if i == 0 else None,
        )
    refs = [(i, 100 * c.cell.reference) for i, c in enumerate(cs) if c.cell.reference is not None]
    if refs:
        ax.scatter(*zip(*refs), marker="x", s=60, color="#c0392b", zorder=4, label=f"{reference_source} (1 run)")
    if math.isfinite(majority):
        ax.axhline(100 * majority, color="gray", ls=":", lw=1, label="majority class")
    ax.set_xticks(x, [c.cell.label for c in cs], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_learning_curves(cs: Sequence[CellStats], records: Sequence[RunRecord], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(cs)
    ncol = min(4, n)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), squeeze=False, sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, c in zip(axes.flat, cs):
        mine = [r for r in records if r.cell == c.cell.name and r.ok]
        for k, rec in enumerate(sorted(mine, key=lambda r: r.seed)):
            epochs, train, val = curves(rec.run_dir)
            col = colors[k % len(colors)]
            ax.plot(epochs, 100 * np.asarray(train), ls="--", color=col, lw=1)
            ax.plot(
                epochs,
                100 * np.asarray(val),
                ls="-",
                color=col,
                lw=1.2,
                marker="." if len(epochs) < 3 else None,
                label=f"seed {rec.seed}",
            )
            tested = evaluated_epoch(rec.results)
            if tested in epochs:
                ax.plot([tested], [100 * val[epochs.index(tested)]], marker="o", mfc="none", color=col, ms=6)
        ax.set_title(c.cell.label, fontsize=8)
        ax.set_ylim(0, 100)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%)", fontsize=8)
    for ax in axes[-1, :]:
        ax.set_xlabel("epoch", fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.suptitle(f"{title}\nsolid: validation, dashed: train, circle: tested epoch", fontsize=9)
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- all files


@dataclass
class ReportFiles:
    csv: Path
    markdown: Path
    summary: Path
    summary_json: Path
    bars: Path
    curves: Path

    def all(self) -> list[Path]:
        return [self.csv, self.markdown, self.summary, self.summary_json, self.bars, self.curves]


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()})


def write_report(
    workdir: str | Path,
    cells: Sequence[Cell],
    records: Sequence[RunRecord],
    *,
    title: str,
    description: Sequence[str] = (),
    claims: Sequence[Claim] = (),
    reference_source: str = "published",
    references_comparable: bool = False,
) -> tuple[ReportFiles, str]:
    """Write every report file into ``workdir``; returns the paths and the summary text."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(
        csv=workdir / "results.csv",
        markdown=workdir / "results.md",
        summary=workdir / "summary.md",
        summary_json=workdir / "summary.json",
        bars=workdir / "accuracy_bars.png",
        curves=workdir / "learning_curves.png",
    )
    rows = [run_row(r) for r in records]
    write_csv(rows, files.csv)
    cs = cell_stats(cells, rows)
    comps = comparisons(cells, rows)
    tested = claim_results(cells, rows, claims)
    summary = summary_text(
        cs, comps, tested, rows, references_comparable=references_comparable, reference_source=reference_source
    )
    majority = majority_rate(records)
    seeds = sorted({r.seed for r in records})
    walls = [r.wall_time_s for r in records if r.wall_time_s is not None]
    md = [f"# {title}", ""]
    md += [*description, ""] if description else []
    md += [
        f"Seeds: {', '.join(map(str, seeds))} ({len(records)} runs). Mean over seeds with a 95% "
        "t confidence interval. Majority-class rate of the test set: "
        f"{pct(majority)}%. Train-val gap: train minus validation accuracy at the tested epoch "
        "(the best one with early stopping, else the last). Epochs: mean epochs run."
        + (
            f" Training wall time, summed over the {len(walls)} timed runs: {sum(walls) / 60:.1f} min." if walls else ""
        ),
        "",
    ]
    for group in dict.fromkeys(c.group for c in cells):
        members = [c for c in cs if c.cell.group == group]
        factor_names = list(dict.fromkeys(k for c in members for k in c.cell.factors))
        md += [
            f"## Cells{': ' + group if group else ''}",
            "",
            cell_table(members, factor_names, f"{reference_source} (1 run)"),
            "",
        ]
    if comps:
        md += [
            "## Differences between cells (test accuracy)",
            "",
            "Every pair of cells that differs in exactly one factor. Test: Welch's t-test when the "
            "two cells train different networks (independent initialisations); paired t-test over "
            "seeds when they train the same network (same seed = same initial weights and batches). "
            "Difference: 95% percentile-bootstrap interval; Permutation p: exact sign-flip test "
            "(paired) or two-sample permutation test (Welch rows; MC: Monte Carlo); P(A>B): share "
            f"of seeds (paired) or run pairs where the later level wins. Two-sided; 'exceeds seed "
            f"noise' means p < {ALPHA}; Holm p corrects for the {len(comps)} comparisons (an "
            "exploratory family, separate from the published claims)."
            + (f" {floor_note(comps)}" if floor_note(comps) else ""),
            "",
            comparison_table(comps),
            "",
        ]
    if tested:
        md += ["## Published claims (test accuracy)", "", *claims_section(tested, comps), ""]
    timings = timing_summary(records)
    if timings["runs"]:
        md += [
            "## Where a run's time goes",
            "",
            f"Mean over the {timings['runs']} runs with timings (results.json `timings`: the session that "
            "finished each run; `outside_engine`: the grid's wall time of the run minus the engine's total). "
            "Meaningful only on a quiet machine."
            + (
                f" {timings['continued_runs']} run(s) started from the last epoch of their early-stopping twin "
                f"(the same trajectory up to its stop; {timings['epochs_not_retrained']} epochs not trained again), "
                "so their means cover only the epochs after it."
                if timings.get("continued_runs")
                else ""
            ),
            "",
            timing_table(timings),
            "",
        ]
    md += [
        "## Summary",
        "",
        summary,
        "",
        "## Files",
        "",
        *[f"- `{p.name}`" for p in files.all()],
        "- `runs/<cell>/seed_<k>/`: each run's own workdir",
        "",
    ]
    files.markdown.write_text("\n".join(md))
    claims_md = claims_section(tested, comps)
    files.summary.write_text(
        f"# {title}: summary\n\n"
        + (f"Seeds: {len(seeds)} per cell ({len(records)} runs).\n\n")
        + ("\n".join(claims_md) + "\n\n" if claims_md else "")
        + f"{summary}\n"
    )
    write_json(files.summary_json, summary_json(tested, comps, records, timings=timings))
    plot_accuracy_bars(cs, rows, files.bars, title=title, majority=majority, reference_source=reference_source)
    plot_learning_curves(cs, records, files.curves, title=title)
    return files, summary

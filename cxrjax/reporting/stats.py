"""Seed statistics for experiment grids: mean with a t confidence interval, Welch's and
the paired t-test, and Holm's correction for many comparisons.

Why these tests: each cell of a grid is trained with a handful of seeds (3 by default),
so the spread between seeds is the noise that a difference between two cells has to beat.

* Two cells whose networks differ (BatchNorm placement, dropout, channel order, model)
  get different initial weights from the same seed, so their runs are independent
  samples: we use **Welch's unequal-variance t-test** (no assumption that the two cells
  are equally noisy; a cell stuck at the majority-class rate has almost no spread while a
  learning cell has a lot).
* Two cells that train the *same* network and differ only in a training option (early
  stopping on/off) start from identical weights and see identical batches for a given
  seed, so run k of one cell is paired with run k of the other: we use the **paired
  t-test** on the per-seed differences, which removes the shared seed-to-seed noise.

Both are two-sided. Because a grid asks many questions at once, the report also gives
Holm-adjusted p-values (family-wise error control, valid under any dependence).

Degenerate cases are handled explicitly instead of returning NaN: when the standard
error of a difference is exactly zero (e.g. two cells that always predict the majority
class), an equal difference gives p = 1 and an unequal one p = 0 -- the difference is
then not noise at all. With fewer than two runs per side no test is possible (p = NaN).

scipy (a hard dependency of scikit-learn) provides the Student t distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as _sps

CONFIDENCE = 0.95


@dataclass(frozen=True)
class MeanCI:
    """Mean of ``n`` values with a two-sided t confidence interval ``[low, high]``."""

    mean: float
    low: float
    high: float
    sd: float  # sample standard deviation (ddof=1); NaN when n < 2
    n: int

    @property
    def half_width(self) -> float:
        return self.high - self.mean


@dataclass(frozen=True)
class TestResult:
    """A two-sided test of ``mean(a) - mean(b) == 0``.

    ``diff`` is mean(a) - mean(b) (paired: mean of a_i - b_i, the same number for equal
    lengths); ``[ci_low, ci_high]`` its confidence interval; ``test`` is "welch" or
    "paired".
    """

    test: str
    diff: float
    t: float
    df: float
    p: float
    ci_low: float
    ci_high: float
    n_a: int
    n_b: int


def _clean(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    return arr[np.isfinite(arr)]


def t_quantile(df: float, confidence: float = CONFIDENCE) -> float:
    """Two-sided critical value of Student's t with ``df`` degrees of freedom."""
    return float(_sps.t.ppf(0.5 + confidence / 2.0, df))


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> MeanCI:
    """Mean and t-based confidence interval; non-finite values (failed runs) are dropped."""
    x = _clean(values)
    n = int(x.size)
    if n == 0:
        nan = float("nan")
        return MeanCI(nan, nan, nan, nan, 0)
    mean = float(x.mean())
    if n < 2:
        nan = float("nan")
        return MeanCI(mean, nan, nan, nan, n)
    sd = float(x.std(ddof=1))
    half = t_quantile(n - 1, confidence) * sd / math.sqrt(n)
    return MeanCI(mean, mean - half, mean + half, sd, n)


def _two_sided(diff: float, se: float, df: float, confidence: float) -> tuple[float, float, float, float]:
    """(t, p, ci_low, ci_high) for an estimate ``diff`` with standard error ``se``."""
    if se == 0.0:
        t = 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
        p = 1.0 if diff == 0.0 else 0.0
        return t, p, diff, diff
    t = diff / se
    p = float(2.0 * _sps.t.sf(abs(t), df))
    half = t_quantile(df, confidence) * se
    return t, p, diff - half, diff + half


def welch_test(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> TestResult:
    """Welch's t-test with Welch-Satterthwaite degrees of freedom."""
    xa, xb = _clean(a), _clean(b)
    na, nb = int(xa.size), int(xb.size)
    nan = float("nan")
    if na < 2 or nb < 2:
        diff = float(xa.mean() - xb.mean()) if na and nb else nan
        return TestResult("welch", diff, nan, nan, nan, nan, nan, na, nb)
    va, vb = xa.var(ddof=1) / na, xb.var(ddof=1) / nb
    diff = float(xa.mean() - xb.mean())
    se = float(math.sqrt(va + vb))
    if se == 0.0:
        df = float(na + nb - 2)
    else:
        df = float((va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1)))
    t, p, lo, hi = _two_sided(diff, se, df, confidence)
    return TestResult("welch", diff, t, df, p, lo, hi, na, nb)


def paired_test(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> TestResult:
    """Paired t-test on ``a[i] - b[i]``; pairs with a non-finite member are dropped."""
    if len(a) != len(b):
        raise ValueError(f"paired_test needs equal lengths, got {len(a)} and {len(b)}")
    xa = np.asarray(a, dtype=np.float64)
    xb = np.asarray(b, dtype=np.float64)
    keep = np.isfinite(xa) & np.isfinite(xb)
    d = xa[keep] - xb[keep]
    n = int(d.size)
    nan = float("nan")
    if n < 2:
        diff = float(d.mean()) if n else nan
        return TestResult("paired", diff, nan, nan, nan, nan, nan, n, n)
    diff = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(n))
    t, p, lo, hi = _two_sided(diff, se, float(n - 1), confidence)
    return TestResult("paired", diff, t, float(n - 1), p, lo, hi, n, n)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and does not count as a test)."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = idx.size
    if m == 0:
        return out.tolist()
    order = idx[np.argsort(p[idx], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


# ----------------------------------------------------------------------------------------
# Per-example statistics: predictions of one split
# ----------------------------------------------------------------------------------------
# A split's metrics are estimates from a finite sample of images: a 66-image test set
# (DP) carries about +-10 accuracy points. These functions give the interval of one run's
# metrics (stratified bootstrap) and compare two runs' predictions of the SAME examples
# (paired bootstrap, exact McNemar).
#
# The bootstrap is stratified by label: each resample draws, class by class, as many
# examples as the class has, with replacement, so every resample keeps the split's class
# counts (the design of a test set with fixed class sizes, and every class present for
# its ROC curve). The intervals are percentile intervals. A resample's metrics come from
# how many times it drew each example (a count matrix), computed for all resamples at
# once; they equal scikit-learn's accuracy_score, f1_score(average="macro") and
# roc_auc_score (one-vs-rest, macro over the classes with positives and negatives, as
# cxrjax.reporting.metrics.classification_report) on the resampled arrays
# (tests/reporting/test_example_stats.py checks it) -- 2,000 scikit-learn calls per
# metric would cost seconds per split at the end of every run.

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_METRICS = ("accuracy", "macro_f1", "roc_auc_ovr")
_CHUNK_CELLS = 2_000_000  # resamples x examples drawn at a time (memory bound)


def _labels_probs(labels: Sequence[int] | np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(
            f"probs must have shape [examples, classes] with {labels.shape[0]} examples, got {probs.shape}"
        )
    return labels, probs


def stratified_counts(labels: np.ndarray, resamples: int, rng: np.random.Generator):
    """Chunks of float64 [r, N]: how often each resample drew each example, class by class
    with replacement (``sum(chunk, 1) == N``, per class the class's size)."""
    labels = np.asarray(labels, np.int64)
    n = labels.shape[0]
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    chunk = max(1, _CHUNK_CELLS // max(n, 1))
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        draws = np.concatenate([g[rng.integers(0, len(g), size=(r, len(g)))] for g in groups], axis=1)
        flat = (np.arange(r)[:, None] * n + draws).ravel()
        yield np.bincount(flat, minlength=r * n).reshape(r, n).astype(np.float64)


def _weighted_auc(weights: np.ndarray, positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC-AUC of each row of example weights [r, N] (Mann-Whitney with ties as 1/2)."""
    values, inverse = np.unique(scores, return_inverse=True)
    u = len(values)
    r = weights.shape[0]

    def per_value(mask: np.ndarray) -> np.ndarray:  # [r, u]: weight of the masked examples at each score value
        idx = (np.arange(r)[:, None] * u + inverse[mask][None, :]).ravel()
        return np.bincount(idx, weights=weights[:, mask].ravel(), minlength=r * u).reshape(r, u)

    pos, neg = per_value(positive), per_value(~positive)
    below = np.cumsum(neg, axis=1) - neg  # negatives strictly below each score value
    wins = np.sum(pos * (below + 0.5 * neg), axis=1)
    return wins / (pos.sum(axis=1) * neg.sum(axis=1))


def _weighted_metrics(weights: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    """accuracy, macro-F1 and one-vs-rest macro ROC-AUC (NaN: no class has both positives
    and negatives) of each row of example weights [r, N]."""
    k = probs.shape[1]
    preds = probs.argmax(axis=1)
    total = weights.sum(axis=1)
    out = {"accuracy": weights @ (preds == labels).astype(np.float64) / total}
    f1 = []
    for c in range(k):
        tp = weights @ ((labels == c) & (preds == c)).astype(np.float64)
        fp = weights @ ((labels != c) & (preds == c)).astype(np.float64)
        fn = weights @ ((labels == c) & (preds != c)).astype(np.float64)
        denominator = 2 * tp + fp + fn
        f1.append(np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0))
    out["macro_f1"] = np.mean(f1, axis=0)
    aucs = [
        _weighted_auc(weights, labels == c, probs[:, c])
        for c in range(k)
        if (labels == c).any() and (labels != c).any()
    ]
    out["roc_auc_ovr"] = np.mean(aucs, axis=0) if aucs else np.full(weights.shape[0], np.nan)
    return out


def split_metrics(labels: Sequence[int] | np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    """accuracy, macro_f1, roc_auc_ovr of the whole split (what the bootstrap resamples)."""
    labels, probs = _labels_probs(labels, probs)
    values = _weighted_metrics(np.ones((1, labels.shape[0])), labels, probs)
    return {name: (float(v[0]) if np.isfinite(v[0]) else None) for name, v in values.items()}


def _percentile(values: np.ndarray, confidence: float) -> tuple[list[float] | None, int]:
    """([low, high] percentile interval of the finite values or None, number skipped)."""
    finite = values[np.isfinite(values)]
    skipped = int(values.size - finite.size)
    if not finite.size:
        return None, skipped
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return [float(low), float(high)], skipped


def bootstrap_ci(
    labels: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, object]:
    """Stratified percentile bootstrap intervals of accuracy, macro-F1 and ROC-AUC (ovr):

    ``{"accuracy": [lo, hi], "macro_f1": [lo, hi], "roc_auc_ovr": [lo, hi] or None,
    "resamples", "seed", "confidence", "skipped_resamples": {metric: n}}``. A resample
    whose ROC-AUC is undefined (no class with both positives and negatives) is skipped
    for that metric and counted; an interval with no defined resample is None.
    """
    labels, probs = _labels_probs(labels, probs)
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not labels.shape[0]:
        raise ValueError("bootstrap_ci needs at least one example")
    rng = np.random.default_rng(seed)
    chunks = [_weighted_metrics(c, labels, probs) for c in stratified_counts(labels, resamples, rng)]
    out: dict[str, object] = {}
    skipped = {}
    for name in BOOTSTRAP_METRICS:
        out[name], skipped[name] = _percentile(np.concatenate([c[name] for c in chunks]), confidence)
    settings = {"resamples": int(resamples), "seed": int(seed), "confidence": confidence}
    return {**out, **settings, "skipped_resamples": skipped}


def paired_bootstrap(
    labels: Sequence[int] | np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, object]:
    """Two runs' predictions of the same examples: per metric (:data:`BOOTSTRAP_METRICS`)
    ``{"a", "b", "difference" (a - b), "ci": [lo, hi] of the difference}``, every
    resample drawing the same examples for both (stratified as :func:`bootstrap_ci`), so
    what the two runs share (the hard and the easy images) cancels out of the interval."""
    labels, probs_a = _labels_probs(labels, probs_a)
    _, probs_b = _labels_probs(labels, probs_b)
    if probs_a.shape != probs_b.shape:
        raise ValueError(f"paired_bootstrap: probabilities of different shapes {probs_a.shape} and {probs_b.shape}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    diffs: dict[str, list[np.ndarray]] = {name: [] for name in BOOTSTRAP_METRICS}
    for counts in stratified_counts(labels, resamples, rng):
        a, b = _weighted_metrics(counts, labels, probs_a), _weighted_metrics(counts, labels, probs_b)
        for name in BOOTSTRAP_METRICS:
            diffs[name].append(a[name] - b[name])
    point_a, point_b = split_metrics(labels, probs_a), split_metrics(labels, probs_b)
    out: dict[str, object] = {}
    for name in BOOTSTRAP_METRICS:
        ci, skipped = _percentile(np.concatenate(diffs[name]), confidence)
        a, b = point_a[name], point_b[name]
        diff = None if a is None or b is None else a - b
        out[name] = {"a": a, "b": b, "difference": diff, "ci": ci, "skipped_resamples": skipped}
    return {**out, "resamples": int(resamples), "seed": int(seed), "confidence": confidence}


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test of two classifiers on the same examples: ``b`` examples only A
    got right, ``c`` only B got right; ``p`` two-sided, binomial(b + c, 1/2) on b."""

    b: int
    c: int
    p: float
    n: int  # examples compared

    def to_dict(self) -> dict[str, object]:
        return {"a_right_b_wrong": self.b, "a_wrong_b_right": self.c, "p": self.p, "examples": self.n}


def mcnemar_exact(correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray) -> McNemar:
    """Exact (binomial) McNemar test on the discordant pairs; no discordant pair: p = 1."""
    a, b_ = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b_.shape:
        raise ValueError(f"mcnemar_exact needs equal lengths, got {a.shape[0]} and {b_.shape[0]}")
    b, c = int(np.sum(a & ~b_)), int(np.sum(~a & b_))
    p = 1.0 if b + c == 0 else float(min(1.0, 2.0 * _sps.binom.cdf(min(b, c), b + c, 0.5)))
    return McNemar(b=b, c=c, p=p, n=int(a.size))


def format_interval(name: str, value: float | None, ci: Sequence[float] | None, n: int | None = None) -> str:
    """``accuracy 0.833 [0.742, 0.909] (n=66: +-8.4 points)``: a metric, its interval and
    the interval's half-width in percentage points, so a small split's noise is shown
    with its number."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return f"{name} n/a"
    text = f"{name} {value:.3f}"
    if ci is not None:
        half = 100.0 * (ci[1] - ci[0]) / 2.0
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}] ({'' if n is None else f'n={n}: '}+-{half:.1f} points)"
    return text

"""Ingredient ablation of a recipe under k-fold cross-validation, with the mask-free probe.

    python -m experiments.recipe_ablation --model s0_c --base-recipe cxr \\
        --dataset image_folder --manual-dir DEV --folds 5 --seeds 3 [--add-one] [train options]

Why: issue 17 asks that the recipe's contents be chosen by measurement -- each ingredient
on and off, with the mean and interval over seeds, and the shortcut probe beside
accuracy (prefer what raises thorax-only accuracy). Cells, per ``--model``:

* ``none``: the studies' settings (the preset's, or TrainConfig's defaults);
* the full recipe (``--base-recipe``, any recipe expression, default ``cxr``);
* leave-one-out: the recipe without each of its ingredients (``cxr-label_smoothing``);
* with ``--add-one``: the studies' settings plus each ingredient (``none+augment``),
  every ingredient of ``cxrjax.train.recipes.INGREDIENTS``.

``--ingredients A,B`` limits both lists to those ingredients. A cell that two lists name
(the same resolved recipe) is trained once. A row whose resolved settings equal its
reference's for that model (the recipe's name aside) is not trained: removing or adding the
ingredient changes nothing there, e.g. ``cxr-no_hflip`` for a preset that never flips
(S0's), whose preset value is the ingredient's. Such rows are listed, not measured (the
table would otherwise show a difference of exactly zero for an ingredient never tested).
Every cell runs through ``experiments.cross_validate``
(:func:`~experiments.cross_validate.prepare`, ``run_folds``, ``report``): the same folds
for every cell, the same workdir layout (folds.json,
``runs/<model>__<recipe>__fold<f>/seed_<s>/`` with cv_predictions.json and the probe),
resumable by re-running the same command, and its results.* files.

Then ``ablation.json`` / ``ablation.md``: per cell the mean over its folds x seeds runs
with a 95% t-interval (``stats.mean_ci``) of accuracy, macro-F1, ROC-AUC, the probe's
accuracies (thorax box blanked, thorax only, border only) and thorax-only minus full;
and the paired difference to its reference -- the full recipe for ``none`` and the
leave-one-out cells, ``none`` for the add-one cells -- of accuracy and of thorax-only
accuracy: runs are paired by (fold, seed) (same test fold, same initial weights), tested
with ``cxrjax.reporting.stats.compare_runs(paired=True)`` (paired t, exact sign-flip,
bootstrap interval, P(cell > reference)), Holm-adjusted over each family (leave-one-out;
add-one; none vs the recipe alone). A leave-one-out difference below zero means the
ingredient helps.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from experiments import cross_validate as cv
from experiments import experiment, grid

EXPERIMENT = "recipe_ablation"
DESCRIPTION = (
    "Ingredient ablation of a recipe (leave-one-out, optionally add-one) under k-fold cross-validation, with "
    "the mask-free probe beside accuracy and paired differences to the full recipe. Resumable: re-run the same "
    "command."
)
ABLATION_JSON = "ablation.json"
ABLATION_MD = "ablation.md"
SUMMARY_METRICS = (*cv.METRICS, *cv.PROBE_METRICS)
DIFF_METRICS = ("accuracy", cv.mask_free.CENTER_ONLY)  # accuracy, and thorax-only accuracy
FAMILIES = ("recipe", "leave_one_out", "add_one")
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class AblationCell:
    """One row of the ablation table: a CV cell, what it is (``role``: "none", "full",
    "leave_one_out", "add_one"), the ingredient it removes or adds, and the cell it is
    compared with (``reference``, a CV cell name; None for the full recipe)."""

    cv_cell: cv.CvCell
    role: str
    ingredient: str | None
    reference: str | None

    @property
    def family(self) -> str | None:
        return {"none": "recipe", "leave_one_out": "leave_one_out", "add_one": "add_one"}.get(self.role)


def build_parser() -> argparse.ArgumentParser:
    p = cv.build_parser()
    p.prog = f"python -m experiments.{EXPERIMENT}"
    p.description = DESCRIPTION
    p.add_argument(
        "--base-recipe",
        default="cxr",
        metavar="EXPRESSION",
        help="the recipe ablated (a recipe or expression of cxrjax.train.recipes, e.g. cxr or cxr+ema)",
    )
    p.add_argument(
        "--add-one",
        action="store_true",
        help="also run the studies' settings plus each ingredient (none+NAME), compared with none",
    )
    p.add_argument(
        "--ingredients",
        default=None,
        metavar="NAME[,NAME]",
        help="ablate only these ingredients (default: every ingredient of the base recipe; with --add-one every "
        "known ingredient)",
    )
    for action in p._actions:
        if action.dest == "recipe":
            action.help = "not used here: the cells are decided by --base-recipe, --ingredients and --add-one"
    return p


def ablation_cells(
    models: Sequence[str], base: str, ingredients: Sequence[str] | None, add: bool
) -> list[AblationCell]:
    """The rows of every model (module docstring); ValueError for a refused recipe or an
    unknown or unusable ingredient."""
    from cxrjax.train import recipes

    expression = recipes.parse_recipe(base)
    if expression.is_none:
        raise ValueError("--base-recipe none has no ingredients to ablate; name a recipe, e.g. cxr")
    if ingredients is not None:
        unknown = [name for name in ingredients if name not in recipes.INGREDIENTS]
        if unknown:
            raise ValueError(recipes.unknown_ingredient_message(unknown[0], expression.text))
        if not add:
            absent = [name for name in ingredients if name not in expression.ingredients]
            if absent:
                raise ValueError(
                    f"--ingredients {','.join(absent)}: not in recipe {expression.text!r} (its ingredients: "
                    f"{', '.join(expression.ingredients)}); add --add-one to run none+NAME for them"
                )
    chosen = list(ingredients) if ingredients is not None else None
    removed = [n for n in expression.ingredients if chosen is None or n in chosen]
    added = [n for n in recipes.INGREDIENTS if chosen is None or n in chosen] if add else []
    full, none = expression.text, recipes.NO_RECIPE
    out = []
    for model in models:

        def cell(recipe: str) -> cv.CvCell:
            return cv.cells_for([model], [recipe])[0]

        full_cell, none_cell = cell(full), cell(none)
        out.append(AblationCell(none_cell, "none", None, full_cell.name))
        out.append(AblationCell(full_cell, "full", None, None))
        out += [AblationCell(cell(f"{full}-{n}"), "leave_one_out", n, full_cell.name) for n in removed]
        out += [AblationCell(cell(f"{none}+{n}"), "add_one", n, none_cell.name) for n in added]
    return out


def same_as_reference(
    args: argparse.Namespace, cells: Sequence[AblationCell], options: tuple[dict[str, Any], int]
) -> list[AblationCell]:
    """The leave-one-out and add-one rows whose settings (``cross_validate.settings_of``)
    equal their reference's: the ingredient is a no-op for that model."""
    settings = cv.settings_of(args, unique_cv_cells(cells), options)
    by_name = {c.cv_cell.name: c.cv_cell for c in cells}
    return [
        c
        for c in cells
        if c.role in ("leave_one_out", "add_one") and settings[c.cv_cell] == settings[by_name[c.reference]]
    ]


def unique_cv_cells(cells: Sequence[AblationCell]) -> list[cv.CvCell]:
    """The CV cells to run, each once (a leave-one-out cell can equal an add-one cell)."""
    return list(dict.fromkeys(c.cv_cell for c in cells))


# ------------------------------------------------------------------ statistics


def _mean_ci(values: Sequence[float]) -> dict[str, Any]:
    from cxrjax.reporting.stats import mean_ci

    ci = mean_ci(values)
    return {"mean": ci.mean, "low": ci.low, "high": ci.high, "sd": ci.sd, "n": ci.n}


def ablation_table(cells: Sequence[AblationCell], summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per ablation row: the mean and 95% t-interval over its folds x seeds runs of
    :data:`SUMMARY_METRICS`, and the paired differences to its reference of
    :data:`DIFF_METRICS`, Holm-adjusted within each (model, family)."""
    from cxrjax.reporting import stats

    by_name = {c["name"]: c for c in summary}
    rows = []
    for cell in cells:
        data = by_name[cell.cv_cell.name]
        metrics = {m: _mean_ci([r[m] for r in data["runs"] if r.get(m) is not None]) for m in SUMMARY_METRICS}
        differences = (
            {m: cv.paired_difference(data, by_name[cell.reference], m) for m in DIFF_METRICS} if cell.reference else {}
        )
        rows.append(
            {
                "name": cell.cv_cell.name,
                "model": cell.cv_cell.model,
                "recipe": cell.cv_cell.recipe,
                "role": cell.role,
                "ingredient": cell.ingredient,
                "family": cell.family,
                "runs": len(data["runs"]),
                "failed": len(data["failed"]),
                "metrics": metrics,
                "differences": differences,
            }
        )
    for model in dict.fromkeys(r["model"] for r in rows):
        for family in FAMILIES:
            members = [r for r in rows if r["model"] == model and r["family"] == family]
            for metric in DIFF_METRICS:
                pvalues = [r["differences"][metric].get("p") for r in members]
                adjusted = stats.holm([np.nan if p is None else p for p in pvalues])
                for row, p_holm in zip(members, adjusted):
                    d = row["differences"][metric]
                    d["p_holm"] = p_holm
                    d["holm_family"] = f"{family} ({len(members)} comparisons)"
                    d["significant"] = bool(np.isfinite(p_holm) and p_holm < SIGNIFICANCE)
    return rows


# ------------------------------------------------------------------ report files

_ROLE_TEXT = {"none": "studies' settings", "full": "full recipe", "leave_one_out": "without", "add_one": "none plus"}


def _pct(value: float | None) -> str:
    return cv._pct(value)


def _mean_text(m: dict[str, Any]) -> str:
    return cv._interval(m)


def _diff_text(d: dict[str, Any]) -> str:
    if not d or d.get("difference") is None:
        return ""
    lo, hi = d.get("ci95") or (None, None)
    interval = f" [{_pct(lo)}, {_pct(hi)}]" if lo is not None and np.isfinite(lo) else ""
    p = d.get("p_holm")
    ptext = f", p_holm {p:.2g}" if p is not None and np.isfinite(p) else ""
    return f"{100 * d['difference']:+.1f}{interval}{ptext}" + (" *" if d.get("significant") else "")


def write_ablation(workdir: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Path]:
    """ablation.json and ablation.md in ``workdir``."""
    from cxrjax.reporting import jsonio

    paths = {"json": workdir / ABLATION_JSON, "markdown": workdir / ABLATION_MD}
    jsonio.write_json(paths["json"], {**meta, "rows": rows})
    labels = [cv.PROBE_LABELS[m] for m in cv.PROBE_METRICS]
    lines = [
        f"# Recipe ablation of {meta['base_recipe']}: {meta['folds']['k']}-fold cross-validation on "
        f"{meta['dataset']['name']}",
        "",
        *meta["description"],
        "",
        f"Each number: the mean over a cell's folds x seeds runs ({meta['folds']['k']} x {len(meta['seeds'])}) "
        "with a 95% t-interval, in %. Probe columns: the mask-free probe on the test folds (thorax box blanked / "
        "only, border strip only; thorax only - full in points). Differences (points): cell minus its reference "
        "(none and leave-one-out: the full recipe; add-one: none), paired by fold and seed, 95% bootstrap interval, "
        f"Holm-adjusted paired t p within the family; * = p_holm < {SIGNIFICANCE}. A leave-one-out difference below "
        "zero means the ingredient helps; prefer ingredients that raise thorax-only accuracy.",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        lines += [
            "",
            f"## {model}",
            "",
            "| cell | role | accuracy % | macro-F1 % | ROC-AUC % | "
            + " | ".join(
                f"{label} {'points' if m == cv.THORAX_GAP else '%'}" for m, label in zip(cv.PROBE_METRICS, labels)
            )
            + " | accuracy vs reference | thorax only vs reference |",
            "|---|---|" + "---|" * (len(cv.METRICS) + len(labels) + 2),
        ]
        for row in (r for r in rows if r["model"] == model):
            role = _ROLE_TEXT[row["role"]] + (f" {row['ingredient']}" if row["ingredient"] else "")
            cells = [_mean_text(row["metrics"][m]) for m in SUMMARY_METRICS]
            diffs = [_diff_text(row["differences"].get(m, {})) for m in DIFF_METRICS]
            failed = f" ({row['failed']} failed)" if row["failed"] else ""
            lines.append(f"| {row['recipe'] or 'none'}{failed} | {role} | " + " | ".join(cells + diffs) + " |")
    unchanged = meta.get("same_as_reference") or []
    if unchanged:
        lines += ["", "Not trained (the settings of their reference for that model: the ingredient changes nothing):"]
        lines += [f"- {c['name']} ({_ROLE_TEXT[c['role']]} {c['ingredient']}) = {c['reference']}" for c in unchanged]
    lines += ["", f"Per-cell details (per fold, pooled): {meta['cv_results']}."]
    paths["markdown"].write_text("\n".join(lines) + "\n")
    return paths


# ------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None, *, train_fn: cv.TrainFn | None = None) -> int:
    """``train_fn``: as :func:`experiments.cross_validate.main` (tests inject a wrapper)."""
    from cxrjax.train.trainer import USER_ERRORS

    args = build_parser().parse_args(argv)
    workdir = experiment.default_workdir(args, EXPERIMENT)
    try:
        if getattr(args, "recipe", None) is not None:
            raise ValueError("--recipe is not used by recipe_ablation: give --base-recipe (and --ingredients)")
        if args.cells:
            raise ValueError("--cells is not used by recipe_ablation: choose with --ingredients and --add-one")
        ingredients = cv.split_list([args.ingredients]) if args.ingredients else None
        cells = ablation_cells(cv.split_list(args.model), args.base_recipe, ingredients, args.add_one)
        options = experiment.user_changes(args)
        unchanged = same_as_reference(args, cells, options)
        if args.list_cells:
            for cell in cells:
                role = _ROLE_TEXT[cell.role] + (f" {cell.ingredient}" if cell.ingredient else "")
                same = f" (same settings as {cell.reference}: not trained)" if cell in unchanged else ""
                print(f"{cell.cv_cell.name:40s} {role}{same}")
            return 0
        for cell in unchanged:
            print(
                f"note: {cell.cv_cell.name} has the same settings as {cell.reference} for {cell.cv_cell.model} "
                f"({cell.ingredient} changes nothing there): not trained",
                file=sys.stderr,
            )
        cells = [c for c in cells if c not in unchanged]
        if cv.probe_region(args) is None:
            print(
                "note: --no-mask-free-probe: the ablation table has no thorax-only accuracy to prefer ingredients by",
                file=sys.stderr,
            )
        setup = cv.prepare(args, unique_cv_cells(cells), workdir, options)
        for cell, twin in setup.repeats.items():
            print(f"note: {cv.repeat_phrase(cell, twin)}", file=sys.stderr)
    except (*USER_ERRORS, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        records, predictions = cv.run_folds(setup, train_fn=train_fn, progress=args.grid_progress)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary, cv_meta, cv_paths = cv.report(setup, records, predictions)
    rows = ablation_table(cells, summary)
    meta = {
        "experiment": EXPERIMENT,
        "base_recipe": cells[1].cv_cell.recipe,
        "models": list(dict.fromkeys(c.cv_cell.model for c in cells)),
        "ingredients": sorted({c.ingredient for c in cells if c.ingredient}),
        "add_one": bool(args.add_one),
        "description": cv_meta["description"],
        "dataset": cv_meta["dataset"],
        "folds": cv_meta["folds"],
        "seeds": cv_meta["seeds"],
        "mask_free_probe": cv_meta["mask_free_probe"],
        "summary_metrics": list(SUMMARY_METRICS),
        "difference_metrics": list(DIFF_METRICS),
        "statistics": "mean over folds x seeds with a 95% t-interval (stats.mean_ci); differences paired by "
        "(fold, seed): stats.compare_runs(paired=True) (paired t, exact sign-flip, percentile bootstrap 95% "
        f"interval, P(cell > reference)); Holm over each family {list(FAMILIES)} per model and metric",
        "cv_results": cv_paths["json"].name,
    }
    meta["same_as_reference"] = [
        {"name": c.cv_cell.name, "role": c.role, "ingredient": c.ingredient, "reference": c.reference}
        for c in unchanged
    ]
    paths = write_ablation(workdir, rows, meta)
    trained = grid.trained_count(records)
    print(paths["markdown"].read_text())
    print(
        f"{len(records)} runs ({trained} trained now, {len(records) - trained} already finished). "
        f"Ablation: {paths['markdown']}, {paths['json']}; cross-validation: {cv_paths['markdown']}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""k-fold cross-validation of one or more models (and recipes) on one prepared dataset.

    python -m experiments.cross_validate --model s4_exp4 --recipe cxr,none \\
        --dataset image_folder --manual-dir ~/S1 --folds 5 [--seeds N] [any train option]
    python -m experiments.cross_validate --model lenet5 --folds 3 --epochs 2   # phantoms

Why: the small real datasets (S1's 338 images, DP's 317, a development set) give test
splits of a few dozen images, so one split's accuracy is mostly the split. Here every
example is tested exactly once per seed (``cxrjax.data.folds``): the prepared splits are
pooled and re-assigned to k folds, stratified by class, duplicate groups (and the groups
file's patients) never split across folds, seeded by ``--fold-seed`` and deterministic;
for fold f the run tests on fold f, validates on a stratified, group-respecting
``--validation-fraction`` of the other folds (default: the dataset's own validation
share) and trains on the rest. ``--seeds`` vary initialisation and shuffling; the folds
stay fixed.

Cells: every ``--model`` x every ``--recipe`` (comma-separated or repeated; ``none``: no
recipe). A ``--model`` that names a preset (``cxrjax.train.PRESETS``) starts from the
preset's training options, any other model name (``cxrjax.models.MODELS``) from
TrainConfig's defaults; then the recipe, then the options given explicitly
(``cxrjax.train.recipes.resolve``). Every cell runs on ``--dataset`` with the same
preparation options (``--dataset-option``). A cell whose runs would repeat an earlier
cell's -- the same network (``s0_a`` is ``s0_c``'s, ``s4_exp5`` is ``s4_exp4``'s: its early
stopping is a training option) and the same resolved settings (``--recipe cxr`` sets the
early stopping of both) -- is trained once and reported under both names, with a note
(:func:`repeated_cells`; results.json's ``same_runs``).

Output in ``--workdir`` (default ``runs/cross_validate/<dataset>``):

* ``folds.json``: the fold assignment (file names of train/validation/test per fold, k,
  fold seed, validation fraction, the data's fingerprint). A rerun computes it again and
  refuses to continue when it differs (other data, folds, fold seed or fraction: use a
  new --workdir).
* ``runs/<model>__<recipe>__fold<f>/seed_<s>/``: each run's engine workdir (resumable,
  like every experiment here: ``experiments.grid``), plus ``cv_predictions.json``: the
  run's probabilities on its test fold (file names, labels, probabilities), predicted
  from the evaluated checkpoint through ``cxrjax.inference.load_run``, and the same
  run's probabilities under the mask-free probe (``cxrjax.explain.mask_free``: the thorax
  box blanked, the thorax box only, the border strip only; ``--thorax-box``, ``--border``,
  the same defaults as ``cxrjax.evaluate``; ``--no-mask-free-probe`` skips it) under
  ``mask_free_probe``: {thorax_box, border, probabilities: {mode: ...}, report}. A run
  predicted without it (or with another region) gets it added on the next invocation.
* ``results.csv`` (one row per run), ``results.md`` (per-fold tables, the summary and,
  with several cells, a comparison table), ``results.json`` (strict JSON): accuracy,
  macro-F1 and ROC-AUC (one-vs-rest, macro) per run; per cell the mean over folds (each
  fold first averaged over the seeds) with a 95% t-interval (``stats.mean_ci``), and the
  metrics of the pooled predictions of all folds (per seed; every example once) with a
  95% stratified bootstrap interval. With the probe, the same for its accuracies
  (``center_blanked``, ``center_only`` = thorax only, ``border_only``) and for
  ``thorax_minus_full`` (thorax-only minus full accuracy; pooled: its paired stratified
  bootstrap interval, ``stats.paired_bootstrap``), beside accuracy in the summary and the
  comparison tables: a model that reads the lungs keeps its accuracy on the thorax alone.
  Runs trained with ``--tta`` (other than ``none``) also get the test-time augmentation
  metrics of their test report (``tta_accuracy``, ``tta_macro_f1``, ``tta_roc_auc``) and
  ``tta_minus_plain`` (paired per run), over folds, in their own results.md section:
  beside the plain evaluation, never instead of it.
* With several recipes for a model, each cell after the model's first gets ``versus``:
  its accuracy (and thorax-only accuracy) minus the first cell's, paired by fold and seed
  (:func:`paired_difference`: paired t, sign-flip, bootstrap), and results.md a "Paired
  differences" table.

:func:`prepare`, :func:`run_folds` and :func:`report` are the steps of :func:`main`;
``experiments.recipe_ablation`` runs its cells through them (same workdir layout).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from cxrjax.explain import mask_free
from cxrjax.reporting.stats import BOOTSTRAP_RESAMPLES
from experiments import experiment, grid, train_options
from experiments.grid import RunSpec

EXPERIMENT = "cross_validate"
DESCRIPTION = (
    "k-fold cross-validation (stratified, duplicate/patient groups kept in one fold) of one or "
    "more models and recipes on one dataset. Resumable: re-run the same command."
)
FOLDS_FILE = "folds.json"
PREDICTIONS_FILE = "cv_predictions.json"
METRICS = ("accuracy", "macro_f1", "roc_auc")
# The mask-free probe's accuracies (cxrjax.explain.mask_free: thorax box blanked, thorax box
# only, border strip only) and thorax-only minus full accuracy, per run and pooled.
PROBE_MODES = mask_free.REGION_MODES
THORAX_GAP = "thorax_minus_full"
PROBE_METRICS = (*PROBE_MODES, THORAX_GAP)
PROBE_LABELS = {
    mask_free.CENTER_BLANKED: "thorax blanked",
    mask_free.CENTER_ONLY: "thorax only",
    mask_free.BORDER_ONLY: "border only",
    THORAX_GAP: "thorax only - full",
}
_RESULT_KEYS = {"accuracy": "accuracy", "macro_f1": "macro_f1", "roc_auc": "roc_auc_ovr"}
# Test-time augmentation (a run with --tta other than none; cxrjax/train/tta.py): the same
# metrics of each run's test report["tta"], and TTA minus plain accuracy per run, so that
# the mean over folds is a paired difference. Beside the plain metrics, never instead.
TTA_GAP = "tta_minus_plain"
TTA_METRICS = (*(f"tta_{m}" for m in METRICS), TTA_GAP)
_PER_FOLD_LABELS = {**PROBE_LABELS, "tta_accuracy": "TTA accuracy"}  # results.md's extra per-fold columns

# (config, workdir, dataset) -> results dict; default cxrjax.train.train_and_evaluate.
TrainFn = Callable[..., dict]


@dataclasses.dataclass(frozen=True)
class CvCell:
    """A model x recipe of the comparison."""

    model: str
    recipe: str | None

    @property
    def name(self) -> str:
        return f"{self.model}__{self.recipe or 'none'}"

    @property
    def label(self) -> str:
        return f"{self.model} with recipe {self.recipe}" if self.recipe else f"{self.model} without recipe"

    def run_cell(self, fold: int) -> str:
        return f"{self.name}__fold{fold}"


def split_list(values: Sequence[str] | None) -> list[str]:
    """Repeated and comma-separated values, in order, without repeats."""
    out: list[str] = []
    for value in values or []:
        for item in str(value).split(","):
            item = item.strip()
            if item and item not in out:
                out.append(item)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = experiment.parser(EXPERIMENT, DESCRIPTION, default_dataset="cxr_phantoms", global_batch=32)
    p.set_defaults(seeds=1)
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME[,NAME]",
        help="model or preset name (repeatable or comma-separated); a preset brings its training options",
    )
    p.add_argument("--folds", type=int, default=5, help="number of folds k (every example is tested once)")
    p.add_argument("--fold-seed", type=int, default=0, help="seed of the fold assignment (fixed across --seeds)")
    p.add_argument(
        "--validation-fraction",
        type=float,
        default=None,
        help="share of the non-test folds carved out as each fold's validation (default: the share of the "
        "dataset's validation split in the prepared data, 0.2 without one)",
    )
    mask_free.add_mask_free_arguments(p)
    train_options.add_train_options(p)
    # --recipe (from TrainConfig) takes several names here: comma-separated, 'none' for no recipe.
    for action in p._actions:
        if action.dest == "recipe":
            action.type = str
            action.help = (
                "recipe(s), comma-separated (cxrjax.train.recipes; 'none': no recipe; expressions such as "
                "cxr-label_smoothing or none+augment); one cell per model x recipe"
            )
            action.metavar = "NAME[,NAME]"
    return p


def cells_of(args: argparse.Namespace) -> list[CvCell]:
    names = split_list([args.recipe]) if getattr(args, "recipe", None) else ["none"]
    return cells_for(split_list(args.model), names)


def cells_for(models: Sequence[str], recipe_names: Sequence[str]) -> list[CvCell]:
    """Every model x recipe expression (canonical spelling; ``none`` -> no recipe).
    ValueError (listing the known recipes or ingredients) for a refused expression."""
    from cxrjax.train.recipes import parse_recipe

    recipes: list[str | None] = []
    for name in recipe_names:
        expression = parse_recipe(name)
        recipe = None if expression.is_none else expression.text
        if recipe not in recipes:
            recipes.append(recipe)
    return [CvCell(model, recipe) for model in models for recipe in recipes]


def base_config(args: argparse.Namespace, model: str, num_devices: int) -> Any:
    """The preset ``model`` (or TrainConfig(model=model)) with the experiment's data and batch."""
    from cxrjax import models
    from cxrjax.train import PRESETS, TrainConfig

    if model in PRESETS:
        config = experiment.preset_config(args, model, num_devices)
    elif model in models.MODELS:
        config = TrainConfig(model=model).replace(
            data_dir=args.data_dir,
            manual_dir=args.manual_dir,
            progress=False,
            compilation_cache_dir=args.compilation_cache or None,
            per_device_batch_size=experiment.per_device_batch(args, num_devices),
        )
    else:
        raise ValueError(
            f"--model {model!r} is neither a preset nor a model; presets: {sorted(PRESETS)}; "
            f"models: {sorted(models.MODELS)}"
        )
    if config.dataset != args.dataset:
        config = config.replace(dataset=args.dataset, dataset_options={})
    return config


def run_config(args: argparse.Namespace, cell: CvCell, seed: int, num_devices: int, changes: dict[str, Any]) -> Any:
    """The TrainConfig of one run: base < recipe < the user's changes; the seed."""
    changes = {k: v for k, v in changes.items() if k != "recipe"}
    config = base_config(args, cell.model, num_devices)
    return train_options.apply_changes(config, {"recipe": cell.recipe, **changes}).replace(seed=seed)


def settings_of(
    args: argparse.Namespace, cells: Sequence[CvCell], options: tuple[dict[str, Any], int]
) -> dict[CvCell, Any]:
    """Each cell's run config (seed 0, the user's ``options``: ``experiment.user_changes``)
    with the recipe's name left out and the model named by its network
    (``models.registry.same_network_as``): two cells with equal settings train the same
    runs (an ingredient can change nothing for a preset, e.g. no_hflip for one that never
    flips; ``s4_exp5`` is ``s4_exp4``'s network, and a recipe that sets the early stopping
    makes their training the same too)."""
    from cxrjax.models.registry import same_network_as

    changes, num_devices = options
    out = {}
    for cell in cells:
        config = run_config(args, cell, 0, num_devices, changes)
        out[cell] = config.replace(recipe=None, model=same_network_as(config.model))
    return out


def repeat_phrase(cell: CvCell, twin: CvCell) -> str:
    """Says that ``cell``'s runs are ``twin``'s (results.md, the command's note)."""
    return (
        f"{cell.name} has the same settings as {twin.name} (the same network, and its recipe or an ingredient "
        f"changes nothing between them): it reports {twin.name}'s runs, trained once"
    )


def repeated_cells(
    args: argparse.Namespace, cells: Sequence[CvCell], options: tuple[dict[str, Any], int]
) -> dict[CvCell, CvCell]:
    """{cell: the first earlier cell with the same settings} (:func:`settings_of`): its runs
    would repeat that cell's, so :func:`run_folds` trains them once and reports them under
    both names."""
    settings = settings_of(args, cells, options)
    out: dict[CvCell, CvCell] = {}
    for i, cell in enumerate(cells):
        earlier = next((c for c in cells[:i] if c not in out and settings[c] == settings[cell]), None)
        if earlier is not None:
            out[cell] = earlier
    return out


# ------------------------------------------------------------------ folds and runs


def check_or_write_folds(workdir: Path, plan_json: dict[str, Any]) -> None:
    """Write folds.json, or refuse (ValueError naming what differs) when the workdir
    records another fold assignment."""
    from cxrjax.reporting import jsonio

    path = workdir / FOLDS_FILE
    if path.exists():
        saved = jsonio.read_json(path)
        differs = [
            key
            for key in ("data_sha256", "class_names", "k", "fold_seed", "validation_fraction", "examples", "folds")
            if saved.get(key) != plan_json.get(key)
        ]
        if differs:
            detail = ", ".join(
                f"{key}: {saved.get(key)!r} recorded, {plan_json.get(key)!r} now"
                for key in differs
                if key not in ("folds", "data_sha256")
            )
            raise ValueError(
                f"{path} records another fold assignment (differs in {', '.join(differs)}"
                + (f"; {detail}" if detail else "")
                + "): other data, --folds, --fold-seed or --validation-fraction; use a new --workdir"
            )
        return
    workdir.mkdir(parents=True, exist_ok=True)
    jsonio.write_json(path, plan_json)


class FoldRun:
    """The grid's run function: trains one fold's run on its fold view of the dataset.

    Picklable for parallel workers: the opened dataset is dropped when pickled and
    reopened (the same prepared files) in the worker."""

    def __init__(
        self,
        load_args: dict[str, Any],
        plan: Any,
        fold_of_cell: dict[str, int],
        dataset: Any = None,
        train_fn: TrainFn | None = None,
    ):
        self.load_args = load_args
        self.plan = plan
        self.fold_of_cell = dict(fold_of_cell)
        self._dataset = dataset
        self.train_fn = train_fn

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_dataset": None}

    def dataset(self) -> Any:
        if self._dataset is None:
            from cxrjax import data

            self._dataset = data.load(**self.load_args)
        return self._dataset

    def view(self, fold: int) -> Any:
        from cxrjax.data import folds

        return folds.fold_view(self.dataset(), self.plan, fold)

    def __call__(self, config: Any, workdir: str) -> dict:
        fold = self.fold_of_cell[Path(workdir).parent.name]
        train_fn = self.train_fn
        if train_fn is None:
            from cxrjax.train import train_and_evaluate as train_fn  # noqa: N813 - lazy: heavy import
        return train_fn(config, workdir, dataset=self.view(fold))


def probe_region(args: argparse.Namespace) -> dict[str, Any] | None:
    """The mask-free probe's region from the command line ({"thorax_box", "border"}), or
    None with ``--no-mask-free-probe``."""
    if getattr(args, "no_mask_free_probe", False):
        return None
    box, border = mask_free.check_region(
        getattr(args, "thorax_box", mask_free.DEFAULT_THORAX_BOX), getattr(args, "border", mask_free.DEFAULT_BORDER)
    )
    return {"thorax_box": list(box), "border": border}


def _same_region(recorded: dict[str, Any] | None, probe: dict[str, Any]) -> bool:
    if not recorded:
        return False
    box = [float(v) for v in recorded.get("thorax_box") or []]
    border = float(recorded.get("border", -1))
    return len(box) == 4 and bool(np.allclose(box, probe["thorax_box"]) and np.isclose(border, probe["border"]))


def write_predictions(
    run_dir: Path, view: Any, config: Any, fold: int, seed: int, probe: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The run's probabilities on its test fold (evaluated checkpoint), into
    ``cv_predictions.json`` (once; read back afterwards), and with ``probe`` (a region,
    :func:`probe_region`) its probabilities under the mask-free probe
    (``cxrjax.explain.split.mask_free_probe``), added to a file that lacks them or
    holds another region's (a note says so)."""
    from cxrjax.reporting import jsonio

    path = run_dir / PREDICTIONS_FILE
    record = jsonio.read_json(path) if path.exists() else None
    if record is not None and (probe is None or _same_region(record.get("mask_free_probe"), probe)):
        return record
    from cxrjax.explain.split import mask_free_probe
    from cxrjax.inference import evaluation_view, load_run
    from cxrjax.train.evaluation import predict_split

    run = load_run(run_dir, checkpoint="evaluated")
    request = {"name": config.dataset, "options": config.dataset_options}
    eval_ds, mapping = evaluation_view(run, view, request, "test")
    batch = config.per_device_eval_batch_size or config.per_device_batch_size
    preds = predict_split(run, eval_ds, "test", batch, mapping=mapping)
    if record is None:
        record = {
            "fold": int(fold),
            "seed": int(seed),
            "checkpoint": {"step": int(run.step), "epoch": int(run.epoch)},
            "class_names": list(run.class_names),
            "file_names": list(view.file_names["test"]),
            "labels": preds.labels.tolist(),
            "probabilities": preds.probs.astype(float).tolist(),
        }
    elif record.get("mask_free_probe"):
        old = record["mask_free_probe"]
        print(
            f"note: {path}: mask-free probe of thorax box {old.get('thorax_box')}, border {old.get('border')} "
            f"replaced by thorax box {probe['thorax_box']}, border {probe['border']}",
            file=sys.stderr,
        )
    if probe is not None:
        report, masked = mask_free_probe(
            run,
            eval_ds,
            "test",
            preds,
            box=probe["thorax_box"],
            border=probe["border"],
            mapping=mapping,
            batch_size=batch,
        )
        record["mask_free_probe"] = {
            **probe,
            "probabilities": {mode: np.asarray(masked[mode]).astype(float).tolist() for mode in PROBE_MODES},
            "report": report,
        }
    jsonio.write_json(path, record)
    return record


# ------------------------------------------------------------------ statistics


def _metric_values(report: dict[str, Any] | None) -> dict[str, float | None]:
    report = report or {}
    return {m: report.get(key) for m, key in _RESULT_KEYS.items()}


def _pooled_ci(labels: np.ndarray, probabilities: np.ndarray, seed: int) -> dict[str, dict[str, float | None]]:
    """{metric: {"value", "low", "high"}} of pooled predictions (every example once): the
    point metrics, and 95% intervals from the stratified bootstrap over the examples
    (:func:`cxrjax.reporting.stats.bootstrap_ci`, seeded with the run seed)."""
    from cxrjax.reporting import stats
    from cxrjax.reporting.metrics import classification_report

    labels = np.asarray(labels, np.int64)
    probabilities = np.asarray(probabilities, np.float64)
    names = [str(i) for i in range(probabilities.shape[1])]
    values = _metric_values(classification_report(labels, probabilities, names))
    ci = stats.bootstrap_ci(labels, probabilities, seed=seed)
    keys = {"accuracy": "accuracy", "macro_f1": "macro_f1", "roc_auc": "roc_auc_ovr"}
    out = {}
    for metric, value in values.items():
        low, high = ci.get(keys.get(metric, metric)) or (None, None)
        out[metric] = {"value": value, "low": low, "high": high}
    return out


def tta_values(test: dict[str, Any]) -> dict[str, Any]:
    """One run's test-time augmentation metrics (:data:`TTA_METRICS`, None each without
    TTA) and its mode ("tta_mode": None without), from its test report."""
    tta = test.get("tta")
    if not tta:
        return {"tta_mode": None, **{m: None for m in TTA_METRICS}}
    values = {f"tta_{m}": v for m, v in _metric_values(tta).items()}
    plain, augmented = test.get("accuracy"), values["tta_accuracy"]
    values[TTA_GAP] = None if plain is None or augmented is None else augmented - plain
    return {"tta_mode": tta.get("mode"), **values}


def _ci_dict(values: Sequence[float | None]) -> dict[str, Any]:
    from cxrjax.reporting.stats import mean_ci

    ci = mean_ci([np.nan if v is None else float(v) for v in values])
    return {"mean": ci.mean, "low": ci.low, "high": ci.high, "sd": ci.sd, "n": ci.n}


def probe_accuracies(prediction: dict[str, Any] | None, probe: dict[str, Any] | None) -> dict[str, float | None]:
    """One run's mask-free probe accuracies ({mode: accuracy, "thorax_minus_full"}) from its
    cv_predictions.json record; None each where the record has no probe of region ``probe``."""
    out: dict[str, float | None] = {m: None for m in PROBE_METRICS}
    recorded = (prediction or {}).get("mask_free_probe")
    if probe is None or not _same_region(recorded, probe):
        return out
    labels = np.asarray(prediction["labels"], np.int64)
    full = float(np.mean(np.asarray(prediction["probabilities"]).argmax(1) == labels))
    for mode in PROBE_MODES:
        out[mode] = float(np.mean(np.asarray(recorded["probabilities"][mode]).argmax(1) == labels))
    out[THORAX_GAP] = out[mask_free.CENTER_ONLY] - full
    return out


def _pooled_probe(
    labels: np.ndarray, probs: np.ndarray, masked: dict[str, np.ndarray], seed: int
) -> dict[str, dict[str, float | None]]:
    """Pooled probe accuracies with their stratified bootstrap intervals, and thorax-only
    minus full accuracy with its paired bootstrap interval (the same resampled examples
    for both: :func:`cxrjax.reporting.stats.paired_bootstrap`)."""
    from cxrjax.reporting import stats

    out = {}
    for mode in PROBE_MODES:
        value = float(np.mean(masked[mode].argmax(1) == labels))
        low, high = stats.bootstrap_ci(labels, masked[mode], seed=seed).get("accuracy") or (None, None)
        out[mode] = {"value": value, "low": low, "high": high}
    gap = stats.paired_bootstrap(labels, masked[mask_free.CENTER_ONLY], probs, seed=seed)["accuracy"]
    low, high = gap["ci"] or (None, None)
    out[THORAX_GAP] = {"value": gap["difference"], "low": low, "high": high}
    return out


def summarize(
    cells: Sequence[CvCell],
    records: Sequence[grid.RunRecord],
    predictions: dict[tuple[str, int], dict],
    k: int,
    probe: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Per cell: its runs, the mean over folds with a 95% t-interval, and the pooled
    metrics; with ``probe`` (a region) also the mask-free probe's (:data:`PROBE_METRICS`)."""
    by_run = {(r.cell, r.seed): r for r in records}
    seeds = sorted({r.seed for r in records})
    metrics = (*METRICS, *PROBE_METRICS) if probe is not None else METRICS
    out = []
    for cell in cells:
        runs, failed = [], []
        for fold in range(k):
            for seed in seeds:
                record = by_run.get((cell.run_cell(fold), seed))
                if record is None:
                    continue
                if not record.ok:
                    failed.append({"fold": fold, "seed": seed, "error": record.error})
                    continue
                test = record.results.get("test") or {}
                run = {"fold": fold, "seed": seed, "n_test": test.get("num_examples"), **_metric_values(test)}
                run.update(tta_values(test))
                if probe is not None:
                    run.update(probe_accuracies(predictions.get((cell.run_cell(fold), seed)), probe))
                runs.append(run)
        tta_modes = sorted({r["tta_mode"] for r in runs if r["tta_mode"]})
        cell_metrics = (*metrics, *TTA_METRICS) if tta_modes else metrics
        over_folds = {}
        for metric in cell_metrics:
            per_fold = []
            for fold in range(k):
                values = [r[metric] for r in runs if r["fold"] == fold and r[metric] is not None]
                per_fold.append(float(np.mean(values)) if values else None)
            over_folds[metric] = {**_ci_dict(per_fold), "per_fold": per_fold}
        pooled_per_seed = []
        for seed in seeds:
            parts = [predictions.get((cell.run_cell(fold), seed)) for fold in range(k)]
            if any(p is None for p in parts):
                pooled_per_seed.append({"seed": seed, "complete": False, "n": None, "metrics": None})
                continue
            labels = np.concatenate([np.asarray(p["labels"], np.int64) for p in parts])
            probs = np.concatenate(
                [np.asarray(p["probabilities"], np.float64).reshape(len(p["labels"]), -1) for p in parts]
            )
            values = _pooled_ci(labels, probs, seed)
            if probe is not None and all(_same_region(p.get("mask_free_probe"), probe) for p in parts):
                masked = {
                    mode: np.concatenate(
                        [
                            np.asarray(p["mask_free_probe"]["probabilities"][mode], np.float64).reshape(
                                len(p["labels"]), -1
                            )
                            for p in parts
                        ]
                    )
                    for mode in PROBE_MODES
                }
                values.update(_pooled_probe(labels, probs, masked, seed))
            pooled_per_seed.append({"seed": seed, "complete": True, "n": int(len(labels)), "metrics": values})
        complete = [p for p in pooled_per_seed if p["complete"]]
        pooled_mean = (
            {
                metric: _ci_dict([p["metrics"][metric]["value"] if metric in p["metrics"] else None for p in complete])
                for metric in metrics
            }
            if complete
            else None
        )
        out.append(
            {
                "name": cell.name,
                "model": cell.model,
                "recipe": cell.recipe,
                "tta": ",".join(tta_modes) or None,
                "runs": runs,
                "failed": failed,
                "over_folds": over_folds,
                "pooled": {"per_seed": pooled_per_seed, "mean_over_seeds": pooled_mean},
            }
        )
    diff_metrics = ("accuracy", mask_free.CENTER_ONLY) if probe is not None else ("accuracy",)
    first_of_model: dict[str, dict[str, Any]] = {}
    for cell in out:
        reference = first_of_model.setdefault(cell["model"], cell)
        if reference is not cell:
            cell["versus"] = {m: paired_difference(cell, reference, m) for m in diff_metrics}
    return out


def _keyed(cell: dict[str, Any], metric: str) -> dict[tuple[int, int], float]:
    return {(r["fold"], r["seed"]): r[metric] for r in cell["runs"] if r.get(metric) is not None}


def paired_difference(cell: dict[str, Any], reference: dict[str, Any], metric: str) -> dict[str, Any]:
    """``cell - reference`` of ``metric`` over the runs both have, paired by fold and seed
    (``stats.compare_runs(paired=True)``: paired t, exact sign-flip, bootstrap interval)."""
    from cxrjax.reporting import stats

    a, b = _keyed(cell, metric), _keyed(reference, metric)
    keys = sorted(set(a) & set(b))
    n = len(keys)
    if n == 0:
        return {"reference": reference["name"], "n_pairs": 0, "difference": None, "ci95": None, "p": None}
    diff = stats.compare_runs([a[k] for k in keys], [b[k] for k in keys], paired=True)
    return {
        "reference": reference["name"],
        "n_pairs": n,
        "difference": diff.difference,
        "ci95": [diff.ci_low, diff.ci_high],
        "t_ci95": [diff.t_test.ci_low, diff.t_test.ci_high],
        "p": diff.p,
        "p_sign_flip": diff.permutation.p,
        "sign_flip_floor": diff.permutation.floor,
        "prob_improvement": diff.prob_improvement,
        "test": diff.test,
    }


def _points(d: dict[str, Any]) -> str:
    """A paired difference in points: ``+8.0 [+4.0, +12.0], p 0.005 (15 pairs)`` (t-interval)."""
    if d.get("difference") is None:
        return "n/a"
    text = f"{100 * d['difference']:+.1f}"
    low, high = d.get("t_ci95") or (None, None)
    if low is not None and high is not None and np.isfinite(low) and np.isfinite(high):
        text += f" [{100 * low:+.1f}, {100 * high:+.1f}]"
    if d.get("p") is not None and np.isfinite(d["p"]):
        text += f", p {d['p']:.2g}"
    return text + f" ({d['n_pairs']} pairs)"


def difference_lines(summary: Sequence[dict[str, Any]]) -> list[str]:
    """results.md's section of each model's recipes minus its first (``cell["versus"]``)."""
    cells = [c for c in summary if c.get("versus")]
    if not cells:
        return []
    with_probe = any(mask_free.CENTER_ONLY in c["versus"] for c in cells)
    lines = [
        "",
        "## Paired differences (each recipe minus the model's first)",
        "",
        "Points, paired by fold and seed: the mean difference with its 95% paired t-interval and p "
        "(stats.compare_runs; results.json has the sign-flip p and a bootstrap interval).",
        "",
        "| cell | minus | accuracy (points) |" + (" thorax only (points) |" if with_probe else ""),
        "|---|---|---|" + ("---|" if with_probe else ""),
    ]
    for c in cells:
        versus = c["versus"]
        row = f"| {c['name']} | {versus['accuracy']['reference']} | {_points(versus['accuracy'])} |"
        if with_probe:
            row += f" {_points(versus[mask_free.CENTER_ONLY]) if mask_free.CENTER_ONLY in versus else 'n/a'} |"
        lines.append(row)
    return lines


# ------------------------------------------------------------------ report files


def _pct(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.1f}"


def _interval(d: dict[str, Any]) -> str:
    mean, low, high = d.get("mean"), d.get("low"), d.get("high")
    if low is None or high is None or not np.isfinite(low):
        return _pct(mean)
    return f"{_pct(mean)} [{_pct(low)}, {_pct(high)}]"


def _pooled_text(pooled: dict[str, Any], metric: str) -> str:
    complete = [p for p in pooled["per_seed"] if p["complete"] and metric in p["metrics"]]
    if not complete:
        return "n/a"
    if len(complete) == 1:
        m = complete[0]["metrics"][metric]
        if m["low"] is None:
            return _pct(m["value"])
        return f"{_pct(m['value'])} [{_pct(m['low'])}, {_pct(m['high'])}]"
    return _interval(pooled["mean_over_seeds"][metric]) + f" ({len(complete)} seeds)"


def has_probe(cell: dict[str, Any]) -> bool:
    """Whether a summarized cell carries mask-free probe numbers."""
    return mask_free.CENTER_ONLY in cell["over_folds"]


def probe_lines(summary: Sequence[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    """results.md's mask-free probe section: pooled accuracies beside the probe's."""
    cells = [c for c in summary if has_probe(c)]
    if not cells:
        return []
    region = meta.get("mask_free_probe") or {}
    box = region.get("thorax_box") or mask_free.DEFAULT_THORAX_BOX
    lines = [
        "",
        "## Mask-free probe (pooled test predictions)",
        "",
        f"The same runs on the test folds with the thorax box (rows {box[0]:.0%}-{box[1]:.0%}, columns "
        f"{box[2]:.0%}-{box[3]:.0%}) blanked, the thorax box only, and the {region.get('border', 0):.0%} border "
        "strip only (cxrjax.explain.mask_free; blanked pixels = mean of the kept ones). Accuracy %, 95% "
        "stratified bootstrap interval; thorax only - full in points with its paired bootstrap interval. A "
        "model that reads the lungs keeps its accuracy on the thorax alone and falls towards chance without it.",
        "",
        "| cell | accuracy % | "
        + " | ".join(f"{PROBE_LABELS[m]} %" for m in PROBE_MODES)
        + " | thorax only - full (points) |",
        "|---|---|" + "---|" * (len(PROBE_MODES) + 1),
    ]
    for cell in cells:
        lines.append(
            f"| {cell['name']} | "
            + " | ".join(_pooled_text(cell["pooled"], m) for m in ("accuracy", *PROBE_METRICS))
            + " |"
        )
    return lines


def has_tta(cell: dict[str, Any]) -> bool:
    """Whether a summarized cell's runs were also evaluated with test-time augmentation."""
    return TTA_GAP in cell["over_folds"]


def tta_lines(summary: Sequence[dict[str, Any]]) -> list[str]:
    """results.md's test-time augmentation section: the TTA metrics beside the plain
    accuracy (mean over folds, 95% t-interval) and TTA - plain, paired per fold."""
    cells = [c for c in summary if has_tta(c)]
    if not cells:
        return []
    lines = [
        "",
        "## Test-time augmentation (beside the plain evaluation)",
        "",
        "The same runs' test folds evaluated again as the mean of the transformed views' probabilities "
        "(cxrjax/train/tta.py); mean over folds with a 95% t-interval; TTA - plain: accuracy points, paired "
        "per fold.",
        "",
        "| cell | TTA | accuracy % (plain) | TTA accuracy % | TTA macro-F1 % | TTA ROC-AUC % | TTA - plain (points) |",
        "|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        of = cell["over_folds"]
        lines.append(
            f"| {cell['name']} | {cell['tta']} | {_interval(of['accuracy'])} | "
            + " | ".join(_interval(of[m]) for m in TTA_METRICS)
            + " |"
        )
    return lines


def _comparison(summary: Sequence[dict[str, Any]], title: str, text: Callable[[dict[str, Any]], str]) -> list[str]:
    recipes = list(dict.fromkeys(c["recipe"] or "none" for c in summary))
    lines = ["", f"## {title}", "", "| model | " + " | ".join(recipes) + " |", "|---|" + "---|" * len(recipes)]
    for model in dict.fromkeys(c["model"] for c in summary):
        row = []
        for recipe in recipes:
            match = [c for c in summary if c["model"] == model and (c["recipe"] or "none") == recipe]
            row.append(text(match[0]) if match else "")
        lines.append(f"| {model} | " + " | ".join(row) + " |")
    return lines


def write_results(workdir: Path, summary: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Path]:
    """results.csv, results.md and results.json in ``workdir``: the report of this command's
    cells. Cells of the report there before that this command does not name get a note
    (their runs stay under runs/; a command naming them all reports them together)."""
    from cxrjax.reporting import jsonio

    paths = {"csv": workdir / "results.csv", "markdown": workdir / "results.md", "json": workdir / "results.json"}
    try:
        earlier = [c.get("name") for c in jsonio.read_json(paths["json"]).get("cells", [])]
    except (OSError, ValueError, AttributeError, TypeError):
        earlier = []
    dropped = [name for name in earlier if name not in {c["name"] for c in summary}]
    if dropped:
        print(
            f"note: {paths['markdown'].name} and {paths['json'].name} in {workdir} reported {', '.join(dropped)} too; "
            "this command does not name them, so the new report leaves them out (their runs stay under "
            f"{workdir / 'runs'}; name every model and recipe in one command to report them together)",
            file=sys.stderr,
        )
    with paths["csv"].open("w", newline="") as f:
        writer = csv.writer(f)
        columns = (*METRICS, *PROBE_METRICS, *TTA_METRICS)
        writer.writerow(["cell", "model", "recipe", "fold", "seed", "n_test", *columns, "tta_mode", "error"])
        for cell in summary:
            for run in cell["runs"]:
                writer.writerow(
                    [cell["name"], cell["model"], cell["recipe"] or "none", run["fold"], run["seed"], run["n_test"]]
                    + ["" if run.get(m) is None else f"{run[m]:.6f}" for m in columns]
                    + [run.get("tta_mode") or "", ""]
                )
            for run in cell["failed"]:
                writer.writerow(
                    [cell["name"], cell["model"], cell["recipe"] or "none", run["fold"], run["seed"], ""]
                    + [""] * (len(columns) + 1)
                    + [run["error"]]
                )
    lines = [f"# {meta['title']}", "", *meta["description"], ""]
    header = "| cell | accuracy % | macro-F1 % | ROC-AUC % | pooled accuracy % | pooled macro-F1 % | pooled ROC-AUC % |"
    rule = "|---|---|---|---|---|---|---|"
    lines += [
        "## Summary",
        "",
        f"Mean over the {meta['folds']['k']} folds with a 95% t-interval (each fold averaged over its seeds "
        "first); pooled: the metrics of all folds' test predictions together (every example once per seed), "
        "with a 95% stratified bootstrap interval where available.",
        "",
        header,
        rule,
    ]
    for cell in summary:
        of = cell["over_folds"]
        lines.append(
            f"| {cell['name']} | "
            + " | ".join(_interval(of[m]) for m in METRICS)
            + " | "
            + " | ".join(_pooled_text(cell["pooled"], m) for m in METRICS)
            + " |"
        )
    lines += probe_lines(summary, meta)
    lines += tta_lines(summary)
    lines += difference_lines(summary)
    if len(summary) > 1:
        lines += _comparison(
            summary, "Comparison (accuracy, mean over folds)", lambda c: _interval(c["over_folds"]["accuracy"])
        )
        if any(has_probe(c) for c in summary):
            lines += _comparison(
                summary,
                "Comparison (mask-free probe, pooled: thorax-only accuracy %; thorax only - full, points)",
                lambda c: (
                    f"{_pooled_text(c['pooled'], mask_free.CENTER_ONLY)}; {_pooled_text(c['pooled'], THORAX_GAP)}"
                ),
            )
    for cell in summary:
        columns = (*METRICS, *(PROBE_MODES if has_probe(cell) else ()), *(("tta_accuracy",) if has_tta(cell) else ()))
        lines += [
            "",
            f"## {cell['name']}: per fold",
            "",
            "| fold | seed | n test | accuracy % | macro-F1 % | ROC-AUC % |"
            + "".join(f" {_PER_FOLD_LABELS[m]} % |" for m in columns[len(METRICS) :]),
            "|---|---|---|---|---|---|" + "---|" * (len(columns) - len(METRICS)),
        ]
        for run in cell["runs"]:
            lines.append(
                f"| {run['fold']} | {run['seed']} | {run['n_test']} | "
                + " | ".join(_pct(run.get(m)) for m in columns)
                + " |"
            )
        for run in cell["failed"]:
            lines.append(f"| {run['fold']} | {run['seed']} | FAILED | {run['error']} | | |")
    paths["markdown"].write_text("\n".join(lines) + "\n")
    jsonio.write_json(paths["json"], {**meta, "cells": summary})
    return paths


# ------------------------------------------------------------------ main


@dataclasses.dataclass
class CvSetup:
    """What :func:`prepare` decided: the workdir, cells, seeds, each run's config, the
    opened dataset and its fold plan, the probe's region (None: no probe)."""

    workdir: Path
    cells: list[CvCell]
    seeds: range
    configs: dict[tuple[CvCell, int], Any]
    load_args: dict[str, Any]
    dataset: Any
    plan: Any
    probe: dict[str, Any] | None
    jobs: int
    # {cell: the earlier cell with the same settings}: its runs are that cell's (repeated_cells)
    repeats: dict[CvCell, CvCell]


def prepare(
    args: argparse.Namespace, cells: Sequence[CvCell], workdir: Path, options: tuple[dict[str, Any], int]
) -> CvSetup:
    """Every run's config (the user's ``options``: ``experiment.user_changes``, read once by
    the caller), the cells whose runs repeat an earlier cell's (:func:`repeated_cells`), the
    dataset opened once, the folds planned and checked against (or written to) folds.json.
    Raises ValueError or a ``USER_ERRORS`` error for the user."""
    from cxrjax import data
    from cxrjax.data import folds

    changes, num_devices = options
    seeds = experiment.seeds_of(args)
    configs = {(cell, seed): run_config(args, cell, seed, num_devices, changes) for cell in cells for seed in seeds}
    keys = {(c.dataset, repr(sorted(c.dataset_options.items()))) for c in configs.values()}
    if len(keys) > 1:
        raise ValueError(
            "the cells would run on different data (a preset with other dataset options or classes); "
            "cross-validate models of one dataset at a time, or give the options with --dataset-option"
        )
    first = next(iter(configs.values()))
    load_args = {
        "name": first.dataset,
        "data_dir": first.data_dir or "data",
        "manual_dir": first.manual_dir,
        "options": first.dataset_options,
    }
    probe = probe_region(args)
    ds = data.load(**load_args)
    fraction = args.validation_fraction
    if fraction is None:
        fraction = folds.dataset_validation_share(ds)
    plan = folds.plan_folds(ds, args.folds, args.fold_seed, fraction)
    check_or_write_folds(workdir, plan.to_json())
    repeats = repeated_cells(args, cells, options)
    return CvSetup(workdir, list(cells), seeds, configs, load_args, ds, plan, probe, experiment.jobs_of(args), repeats)


def run_folds(
    setup: CvSetup, *, train_fn: TrainFn | None = None, progress: bool = True
) -> tuple[list[grid.RunRecord], dict[tuple[str, int], dict]]:
    """Train (or find finished) every fold x seed run of every cell, then each run's test-fold
    predictions (and probe). A cell of ``setup.repeats`` trains nothing: its records and
    predictions are its twin's (``trained`` False). Returns (grid records, {(run cell,
    seed): cv_predictions record})."""
    specs, fold_of_cell = [], {}
    for cell in setup.cells:
        for fold in range(setup.plan.k):
            fold_of_cell[cell.run_cell(fold)] = fold
            if cell in setup.repeats:
                continue
            for seed in setup.seeds:
                specs.append(RunSpec(cell.run_cell(fold), seed, setup.configs[(cell, seed)], group=cell.run_cell(fold)))
    run_fn = FoldRun(setup.load_args, setup.plan, fold_of_cell, dataset=setup.dataset, train_fn=train_fn)
    records = grid.run_grid(
        specs,
        setup.workdir,
        run_fn,
        progress=progress,
        desc=setup.workdir.name,
        jobs=setup.jobs,
        worker_env=experiment.worker_env() if setup.jobs > 1 else None,
    )
    predictions = {}
    config_of = {(s.cell, s.seed): s.config for s in specs}
    for record in records:
        if not record.ok:
            continue
        fold = fold_of_cell[record.cell]
        try:
            predictions[(record.cell, record.seed)] = write_predictions(
                record.run_dir,
                run_fn.view(fold),
                config_of[(record.cell, record.seed)],
                fold,
                record.seed,
                probe=setup.probe,
            )
        except Exception as exc:  # noqa: BLE001 - one unreadable run must not end the report
            print(
                f"warning: {record.run_dir}: test-fold predictions not written ({type(exc).__name__}: {exc}); "
                "the pooled metrics of its seed are left out",
                file=sys.stderr,
            )
    by_run = {(r.cell, r.seed): r for r in records}
    for cell, twin in setup.repeats.items():
        for fold in range(setup.plan.k):
            for seed in setup.seeds:
                record = by_run.get((twin.run_cell(fold), seed))
                if record is None:
                    continue
                records.append(dataclasses.replace(record, cell=cell.run_cell(fold), trained=False))
                if (twin.run_cell(fold), seed) in predictions:
                    predictions[(cell.run_cell(fold), seed)] = predictions[(twin.run_cell(fold), seed)]
    return records, predictions


def report(
    setup: CvSetup, records: Sequence[grid.RunRecord], predictions: dict[tuple[str, int], dict]
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Path]]:
    """Summarize and write results.csv/.md/.json. Returns (summary, meta, paths)."""
    plan, seeds = setup.plan, setup.seeds
    summary = summarize(setup.cells, records, predictions, plan.k, probe=setup.probe)
    c = next(iter(setup.configs.values()))
    meta = {
        "experiment": EXPERIMENT,
        "title": f"{plan.k}-fold cross-validation on {c.dataset}",
        "description": [
            experiment.dataset_phrase(c)
            + f": {len(plan.pooled.file_names)} examples pooled from the prepared splits, {plan.k} folds "
            f"(fold seed {plan.seed}), each fold's validation {plan.validation_fraction:.3g} of the other folds; "
            f"seeds {list(seeds)}.",
            *(f"{repeat_phrase(cell, twin)}." for cell, twin in setup.repeats.items()),
        ],
        "same_runs": {cell.name: twin.name for cell, twin in setup.repeats.items()},
        "dataset": {
            "name": c.dataset,
            "options": c.dataset_options,
            "fingerprint_sha256": plan.to_json()["data_sha256"],
        },
        "folds": {
            "k": plan.k,
            "fold_seed": plan.seed,
            "validation_fraction": plan.validation_fraction,
            "file": FOLDS_FILE,
        },
        "seeds": list(seeds),
        "metrics": list(METRICS) + (list(PROBE_METRICS) if setup.probe is not None else []),
        "mask_free_probe": setup.probe,
        "pooled_interval": f"stratified bootstrap over the pooled examples, {BOOTSTRAP_RESAMPLES} resamples, 95%",
    }
    paths = write_results(setup.workdir, summary, meta)
    return summary, meta, paths


def main(argv: Sequence[str] | None = None, *, train_fn: TrainFn | None = None) -> int:
    """``train_fn(config, workdir, dataset=view)`` trains one run (default
    ``cxrjax.train.train_and_evaluate``; tests inject a wrapper)."""
    from cxrjax.train.trainer import USER_ERRORS

    args = build_parser().parse_args(argv)
    workdir = experiment.default_workdir(args, EXPERIMENT)
    try:
        known = cells_of(args)
        if args.list_cells:
            experiment.list_cells(known)
            return 0
        cells = experiment.pick_cells(args, known, known)
        options = experiment.user_changes(args)
        setup = prepare(args, cells, workdir, options)
        for cell, earlier in setup.repeats.items():
            print(f"note: {repeat_phrase(cell, earlier)}", file=sys.stderr)
    except (*USER_ERRORS, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        records, predictions = run_folds(setup, train_fn=train_fn, progress=args.grid_progress)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _, _, paths = report(setup, records, predictions)
    trained = grid.trained_count(records)
    distinct = len({r.run_dir for r in records})
    print(Path(paths["markdown"]).read_text())
    print(
        f"{distinct} runs ({trained} trained now, {distinct - trained} already finished). "
        f"Results: {paths['csv']}, {paths['markdown']}, {paths['json']}; folds: {workdir / FOLDS_FILE}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

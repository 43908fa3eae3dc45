"""Evaluate one or several trained runs on a prepared dataset, and write the reports.

For each run: metrics (``cxrjax.reporting.metrics.classification_report``) on every example
of the split with their calibration (raw and after the run's temperature scaling),
stratified-bootstrap 95% intervals and operating points
(``cxrjax.reporting.calibration.split_calibration_report``), confusion / ROC /
precision-recall / reliability plots, the per-example probabilities (raw and calibrated),
and, where the dataset carries the masks, the shortcut probes:
- lung-masked evaluation (lung masks: D4, phantoms): accuracy with only the lungs
  visible and with the lungs blanked, next to the normal one, with a verdict in words;
- the Grad-CAM pointing game (lesion masks: phantoms);
- per-source metrics and the source probe (datasets recording each image's source:
  D4 with its metadata; ``sources.py``);
and, on any dataset, the mask-free probe (``cxrjax.explain.mask_free``: the thorax box
blanked / only / the border strip only).
Several runs make an ensemble by averaging their probabilities (``ensemble.py``); its
metrics (and its lung-masked probe) are reported next to each member's.

The temperature and the operating thresholds come from the run's ``calibration.json``
(fitted on validation when it was trained). A run without one for the loaded checkpoint
(trained before it existed, or another checkpoint than the evaluated one) gets them
fitted here on the dataset's validation split, or, without one, raw probabilities only;
the report's ``calibration_source`` says which.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cxrjax import inference
from cxrjax.evaluate import sources
from cxrjax.evaluate.ensemble import average_probabilities, check_members_aligned
from cxrjax.explain import mask_free, probes
from cxrjax.explain.gradcam import METHODS
from cxrjax.explain.split import lung_mask_probe, mask_free_probe, pointing_game_split
from cxrjax.reporting import calibration as calib
from cxrjax.reporting.jsonio import write_json
from cxrjax.reporting.metrics import classification_report, format_report
from cxrjax.reporting.plots import plot_confusion_matrix, plot_precision_recall, plot_reliability, plot_roc_curves
from cxrjax.train.config import TTA_MODES
from cxrjax.train.evaluation import SplitPredictions, predict_split
from cxrjax.train.tta import TTAPredictor, describe
from cxrjax.train.workdir import CALIBRATION_FILE


@dataclass(frozen=True)
class EvalOptions:
    """What to evaluate and how (the CLI's options, typed)."""

    workdirs: tuple[str, ...]
    dataset: str | None = None  # None: the (first) run's training dataset
    data_dir: str | None = None  # None: the run's config.data_dir
    manual_dir: str | None = None
    dataset_options: Mapping[str, Any] | None = None  # on top of the run's, for its own dataset
    split: str = "test"
    checkpoint: str = inference.DEFAULT_CHECKPOINT
    batch_size: int = inference.DEFAULT_BATCH_SIZE
    probes: bool = True  # lung-masked probe when the dataset has lung masks; source probe
    pointing_game: bool = True  # Grad-CAM pointing game when it has lesion masks
    mask_free_probe: bool = True  # thorax box blanked / only, border only (any dataset)
    thorax_box: tuple[float, float, float, float] = mask_free.DEFAULT_THORAX_BOX  # top, bottom, left, right
    border: float = mask_free.DEFAULT_BORDER
    layer: str | None = None  # Grad-CAM layer (default: the model's last conv stage)
    cam_methods: tuple[str, ...] = METHODS  # saliency methods of the pointing game
    out: str | None = None  # ensemble report folder (default: the first workdir)
    bootstrap_resamples: int | None = None  # None: the run's config.bootstrap_resamples; 0: no intervals
    tta: str | None = None  # test-time augmentation beside the plain metrics (None: the run's config.tta)
    weights: str | None = None  # inference.WEIGHTS (None: those the run evaluated with, its EMA if it kept one)
    progress: bool = True

    def __post_init__(self):
        if not self.workdirs:
            raise ValueError("give at least one --workdir")
        if self.checkpoint not in inference.CHECKPOINTS:
            raise ValueError(f"checkpoint={self.checkpoint!r}: choose one of {inference.CHECKPOINTS}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.bootstrap_resamples is not None and self.bootstrap_resamples < 0:
            raise ValueError(f"bootstrap_resamples must be >= 0, got {self.bootstrap_resamples}")
        if self.tta is not None and self.tta not in TTA_MODES:
            raise ValueError(f"tta={self.tta!r}: choose one of {TTA_MODES}")
        if self.weights is not None and self.weights not in inference.WEIGHTS:
            raise ValueError(f"weights={self.weights!r}: choose one of {inference.WEIGHTS}")
        unknown = sorted(set(self.cam_methods) - set(METHODS))
        if unknown or not self.cam_methods:
            raise ValueError(f"cam_methods must be some of {METHODS}, got {self.cam_methods}")
        mask_free.check_region(self.thorax_box, self.border)


@dataclass
class MemberResult:
    """One run's evaluation: the JSON-ready report and the arrays behind it."""

    run: Any
    report: dict[str, Any]
    predictions: SplitPredictions
    masked_probs: dict[str, np.ndarray] = field(default_factory=dict)
    path: Path | None = None


def output_stem(run: Any, ds: Any, request: Mapping[str, Any], split: str) -> str:
    """``eval_<dataset>_<split>``; with preparation options other than the run's own (e.g.
    phantoms with the shortcut marker for a run trained without), the prepared
    configuration's name is added, ``eval_<dataset>-<config>_<split>``, so evaluating
    one run on two variants of a dataset never overwrites a report."""
    name = request["name"]
    own = name == run.config.dataset and dict(request["options"] or {}) == dict(run.config.dataset_options or {})
    config = getattr(getattr(getattr(ds, "builder", None), "builder_config", None), "name", None)
    if not own and request["options"] and config:
        name = f"{name}-{config}"
    return f"eval_{name}_{split}"


def _plots(
    folder: Path,
    stem: str,
    labels: np.ndarray,
    probs: np.ndarray,
    confusion: Sequence[Sequence[int]],
    class_names: Sequence[str],
    title: str,
    *,
    calibrated: np.ndarray | None = None,
    calibration: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Confusion, ROC and precision-recall (marking the operating points of ``calibration``,
    if any) and reliability (raw, and ``calibrated`` if given) PNGs; their file names."""
    markers = (calibration or {}).get("operating_thresholds")
    note = f" ({calibration['target_sensitivity']:.0%} sens. on validation)" if markers else ""
    paths = {
        "confusion_matrix": plot_confusion_matrix(
            confusion, class_names, folder / f"{stem}_confusion_matrix.png", title=f"confusion matrix: {title}"
        ),
        "roc_curves": plot_roc_curves(
            labels,
            probs,
            class_names,
            folder / f"{stem}_roc_curves.png",
            title=f"ROC (one vs rest): {title}",
            markers=markers,
            markers_note=note,
        ),
        "precision_recall": plot_precision_recall(
            labels,
            probs,
            class_names,
            folder / f"{stem}_precision_recall.png",
            title=f"precision-recall: {title}",
            markers=markers,
            markers_note=note,
        ),
    }
    if len(labels):
        paths["reliability"] = plot_reliability(
            labels,
            probs,
            folder / f"{stem}_reliability.png",
            calibrated_probs=calibrated,
            title=f"reliability (n={len(labels)}): {title}",
        )
    return {k: Path(v).name for k, v in paths.items()}


def member_calibration(
    run: Any, view: Any, mapping: np.ndarray | None, request: Mapping[str, Any], options: EvalOptions
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(calibration, source) for evaluating ``run``: its calibration.json for the loaded
    checkpoint; else fitted here on the dataset's validation split (its predictions, the
    run's ``target_sensitivity``); else None (raw probabilities only). ``source`` is
    ``{"source": "calibration.json" | "validation split, fitted by evaluate" | None,
    "note": what that means, None for calibration.json}``."""
    split = "validation"
    if run.calibration is not None:
        own = request["name"] == run.config.dataset and dict(request["options"] or {}) == dict(
            run.config.dataset_options or {}
        )
        note = None
        if own and options.split == split:
            note = (
                f"the temperature and operating thresholds of {CALIBRATION_FILE} were fitted on this {split} "
                "split: its calibrated numbers and operating points are in-sample"
            )
        return run.calibration, {"source": CALIBRATION_FILE, "note": note}
    if split not in view.splits or not len(view.splits[split]):
        return None, {
            "source": None,
            "note": f"{run.calibration_note}; the dataset has no {split} split to fit them on, so only raw "
            "probabilities are reported (no temperature, no operating points)",
        }
    preds = predict_split(
        run, view, split, options.batch_size, mapping=mapping, desc=f"calibrate on {split}", progress=options.progress
    )
    fitted = calib.fit_calibration(preds.labels, preds.probs, run.class_names, run.config.target_sensitivity)
    note = (
        f"{run.calibration_note}; evaluate fitted the temperature and the operating thresholds on the "
        f"{split} split of {request['name']} ({len(preds.labels)} examples)"
    )
    if options.split == split:
        note += ", the split evaluated: its calibrated numbers are in-sample"
    return fitted, {"source": f"{split} split, fitted by evaluate", "note": note}


def calibration_fields(
    run: Any, labels: np.ndarray, probs: np.ndarray, calibration: Mapping[str, Any] | None, options: EvalOptions
) -> dict[str, Any]:
    """:func:`cxrjax.reporting.calibration.split_calibration_report` for one run's split:
    the bootstrap seeded with the run's seed, ``options.bootstrap_resamples`` or the run's."""
    resamples = options.bootstrap_resamples
    return calib.split_calibration_report(
        labels,
        probs,
        run.class_names,
        temperature=None if calibration is None else calibration["temperature"],
        thresholds=None if calibration is None else calibration["operating_thresholds"],
        target_sensitivity=run.config.target_sensitivity if calibration is None else calibration["target_sensitivity"],
        resamples=run.config.bootstrap_resamples if resamples is None else resamples,
        seed=run.config.seed,
    )


def evaluate_member(
    run: Any, ds: Any, request: Mapping[str, Any], options: EvalOptions, stats_ds: Any | None = None, write: bool = True
) -> MemberResult:
    """Evaluate one loaded run on ``ds`` (already opened); write its JSON and plots."""
    split = options.split
    view, mapping = inference.evaluation_view(run, ds, request, split, stats_ds)
    preds = predict_split(
        run, view, split, options.batch_size, mapping=mapping, desc=f"eval {split}", progress=options.progress
    )
    metrics = classification_report(preds.labels, preds.probs, run.class_names)
    calibration, source = member_calibration(run, view, mapping, request, options)
    metrics.update(calibration_fields(run, preds.labels, preds.probs, calibration, options))
    tta, tta_preds = options.tta or run.config.tta, None
    if tta != "none":  # beside the plain metrics, never instead of them (cxrjax/train/tta.py)
        tta_preds = predict_split(
            TTAPredictor(run, tta),
            view,
            split,
            options.batch_size,
            mapping=mapping,
            desc=f"tta {split}",
            progress=options.progress,
        )
        metrics["tta"] = {
            **describe(tta, run.input_config.image_size),
            **classification_report(tta_preds.labels, tta_preds.probs, run.class_names),
        }
    temperature = None if calibration is None else calibration["temperature"]
    calibrated = None if temperature is None else calib.apply_temperature(preds.probs, temperature)
    report: dict[str, Any] = {
        "workdir": str(run.workdir),
        "checkpoint": {"which": run.checkpoint, "step": run.step, "epoch": run.epoch},
        "weights": run.weights,  # "ema" (the checkpoint's moving average of the weights) | "live"
        "run_status": run.run_status,  # finished | in_progress | unfinished (no results.json)
        "run_status_note": run.run_status_note,
        "model": run.config.model,
        "dataset": request["name"],
        "dataset_options": dict(request["options"] or {}),
        "split": split,
        "class_names": list(run.class_names),
        "dataset_class_names": list(ds.class_names),
        "input_config": run.input_config.to_dict(),
        "metrics": metrics,
        "calibration_source": {**source, "temperature": temperature},
        "lung_mask_probe": None,
        "pointing_game": None,
        "mask_free_probe": None,
    }
    masked = {}
    if options.probes and inference.has_field(ds, split, "lung_mask"):
        report["lung_mask_probe"], masked = lung_mask_probe(
            run, view, split, preds, mapping=mapping, batch_size=options.batch_size, progress=options.progress
        )
    if options.mask_free_probe:
        report["mask_free_probe"], _ = mask_free_probe(
            run,
            view,
            split,
            preds,
            box=options.thorax_box,
            border=options.border,
            mapping=mapping,
            batch_size=options.batch_size,
            progress=options.progress,
        )
    if options.pointing_game and inference.has_field(ds, split, "lesion_mask"):
        report["pointing_game"] = pointing_game_split(
            run,
            view,
            split,
            preds.labels,
            request=request,
            cam_methods=options.cam_methods,
            layer=options.layer,
            batch_size=options.batch_size,
            progress=options.progress,
        )
    report.update(
        sources.source_report(
            run, ds, view, split, preds, probe=options.probes, batch_size=options.batch_size, progress=options.progress
        )
    )
    names = inference.split_field(ds, split, "file_name") if inference.has_field(ds, split, "file_name") else None
    report["predictions"] = {
        "file_name": names,
        "label": preds.labels.tolist(),
        "predicted": preds.predictions.tolist(),
        "probs": preds.probs.tolist(),
        "calibrated_probs": None if calibrated is None else calibrated.tolist(),
        "tta_probs": None if tta_preds is None else tta_preds.probs.tolist(),  # raw, mean over the TTA views
    }
    member = MemberResult(run=run, report=report, predictions=preds, masked_probs=masked)
    if write:
        folder = Path(run.workdir)
        stem = output_stem(run, ds, request, split)
        report["plots"] = _plots(
            folder,
            stem,
            preds.labels,
            preds.probs,
            metrics["confusion_matrix"],
            run.class_names,
            f"{run.config.model} on {request['name']} {split}",
            calibrated=calibrated,
            calibration=calibration,
        )
        member.path = folder / f"{stem}.json"
        write_json(member.path, report)
    return member


def _summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: metrics.get(k) for k in ("num_examples", "accuracy", "macro_f1", "weighted_f1", "roc_auc_ovr", "loss")}


def evaluate(options: EvalOptions) -> dict[str, Any]:
    """Evaluate every run of ``options``; with several, also their probability-averaged ensemble.

    Returns {"members": [report, ...], "ensemble": report or None}.
    """
    loaded = [inference.load_run(w, checkpoint=options.checkpoint, weights=options.weights) for w in options.workdirs]
    request = inference.dataset_request(
        loaded[0],
        dataset=options.dataset,
        data_dir=options.data_dir,
        manual_dir=options.manual_dir,
        options=options.dataset_options,
    )
    ds = inference.open_dataset(request)
    cache: dict[tuple, Any] = {}
    members = []
    for run in loaded:
        stats_ds = ds
        if inference.needs_training_statistics(run, request):
            own = inference.dataset_request(run, data_dir=options.data_dir)
            key = (own["name"], repr(sorted((own["options"] or {}).items())))
            if key not in cache:
                cache[key] = inference.open_dataset(own)
            stats_ds = cache[key]
        members.append(evaluate_member(run, ds, request, options, stats_ds=stats_ds))
    ensemble = ensemble_report(members, request, options) if len(members) > 1 else None
    return {"members": [m.report for m in members], "ensemble": ensemble, "paths": [str(m.path) for m in members]}


def ensemble_report(
    members: Sequence[MemberResult], request: Mapping[str, Any], options: EvalOptions
) -> dict[str, Any]:
    """Average the members' probabilities; report the ensemble next to each member."""

    names = [str(m.run.workdir) for m in members]
    classes = list(members[0].run.class_names)
    for m in members[1:]:
        if list(m.run.class_names) != classes:
            raise inference.ClassListMismatchError(
                f"ensemble members disagree on the classes: {names[0]} has {classes} but "
                f"{m.run.workdir} has {list(m.run.class_names)}"
            )
    check_members_aligned([m.predictions.labels for m in members], names)
    labels = members[0].predictions.labels
    probs = average_probabilities([m.predictions.probs for m in members])
    metrics = classification_report(labels, probs, classes)
    # Raw probabilities only: each member has its own temperature, the average has none.
    metrics.update(calibration_fields(members[0].run, labels, probs, None, options))
    probe = None
    if all(m.masked_probs for m in members):
        masked = {mode: average_probabilities([m.masked_probs[mode] for m in members]) for mode in probes.MASK_MODES}
        probe = probes.shortcut_probe_report(
            labels,
            probs.argmax(1),
            masked[probes.LUNGS_ONLY].argmax(1),
            masked[probes.LUNGS_BLANKED].argmax(1),
            classes,
        )
    table = [
        {
            "workdir": n,
            "model": m.run.config.model,
            **_summary(m.report["metrics"]),
            "lungs_only_accuracy": (m.report["lung_mask_probe"] or {}).get("lungs_only_accuracy"),
            "lungs_blanked_accuracy": (m.report["lung_mask_probe"] or {}).get("lungs_blanked_accuracy"),
        }
        for n, m in zip(names, members)
    ]
    report = {
        "method": "mean of the members' softmax probabilities (uniform weights)",
        "dataset": request["name"],
        "dataset_options": dict(request["options"] or {}),
        "split": options.split,
        "class_names": classes,
        "members": table,
        "ensemble": {
            **_summary(metrics),
            "lungs_only_accuracy": probe and probe["lungs_only_accuracy"],
            "lungs_blanked_accuracy": probe and probe["lungs_blanked_accuracy"],
        },
        "metrics": metrics,
        "lung_mask_probe": probe,
        "predictions": {"label": labels.tolist(), "predicted": probs.argmax(1).tolist(), "probs": probs.tolist()},
    }
    folder = Path(options.out or members[0].run.workdir)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"ensemble_{request['name']}_{options.split}"
    report["plots"] = _plots(
        folder,
        stem,
        labels,
        probs,
        metrics["confusion_matrix"],
        classes,
        f"ensemble of {len(members)} on {request['name']} {options.split}",
    )
    report["path"] = str(folder / f"{stem}.json")
    write_json(folder / f"{stem}.json", report)
    return report


def format_member(report: Mapping[str, Any]) -> str:
    """The human-readable summary printed by the CLI for one run."""

    m = report["metrics"]
    lines = [
        f"== {report['workdir']} ({report['model']}, {report['checkpoint']['which']} checkpoint, "
        f"step {report['checkpoint']['step']}, {report.get('weights', 'live')} weights) on {report['dataset']} "
        f"{report['split']}: {m['num_examples']} examples",
        *calib.format_split_summary(m),
        f"loss {_fmt(m['loss'])}",
        format_report(m),
    ]
    if m.get("tta"):
        t = m["tta"]
        lines.append(
            f"test-time augmentation ({t['mode']}: mean of {len(t['views'])} views, beside the plain numbers "
            f"above): accuracy {_fmt(t['accuracy'])}, macro-F1 {_fmt(t['macro_f1'])}, "
            f"ROC-AUC {_fmt(t.get('roc_auc_ovr'))}, loss {_fmt(t['loss'])}"
        )
    source = report.get("calibration_source") or {}
    if source.get("note"):
        lines.insert(1, f"note: calibration: {source['note']}")
    if report.get("run_status_note"):
        lines.insert(1, f"note: {report['run_status_note']}")
    if report.get("lung_mask_probe"):
        lines.append("lung-masked probe: " + report["lung_mask_probe"]["verdict"])
    if report.get("mask_free_probe"):
        lines.append(mask_free.format_mask_free(report["mask_free_probe"]))
    lines += sources.format_sources(report)
    for method, game in (report.get("pointing_game") or {}).items():
        lines.append(f"pointing game, {method} (layer {game.get('layer')}, true class):")
        lines.append(probes.format_pointing_game(game))
    return "\n".join(lines)


def format_ensemble(report: Mapping[str, Any]) -> str:
    header = f"{'run':<40}{'accuracy':>10}{'macro F1':>10}{'ROC-AUC':>9}{'lungs only':>12}{'blanked':>9}"
    rows = [header]
    for r in [*report["members"], {"workdir": "ENSEMBLE (mean probability)", **report["ensemble"]}]:
        rows.append(
            f"{str(r['workdir'])[-40:]:<40}{_fmt(r['accuracy']):>10}{_fmt(r['macro_f1']):>10}"
            f"{_fmt(r['roc_auc_ovr']):>9}{_fmt(r.get('lungs_only_accuracy')):>12}"
            f"{_fmt(r.get('lungs_blanked_accuracy')):>9}"
        )
    if report.get("lung_mask_probe"):
        rows.append("ensemble lung-masked probe: " + report["lung_mask_probe"]["verdict"])
    return "\n".join(rows)


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.4f}"

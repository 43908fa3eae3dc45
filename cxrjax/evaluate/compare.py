"""Two runs' predictions of the same examples, compared paired:
``python -m cxrjax.evaluate --compare RUN_A RUN_B [--split test]``.

Each run predicts the split of its own dataset (or of ``--dataset`` / ``--dataset-options``
for both) through the same path as ``evaluate``. The comparison is refused, with an
``error:`` line, unless both saw the same examples in the same order (their file names)
with the same labels: a paired test of two different test sets means nothing.

Paired, because two runs tested on the same images share most of their right and wrong
answers: the paired bootstrap (``cxrjax.reporting.stats.paired_bootstrap``: every
resample draws the same examples for both) and McNemar's exact test on the examples
only one of them got right (``mcnemar_exact``) see a difference that two separate
intervals of +-10 points on a 66-image test set would hide.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from cxrjax import inference
from cxrjax.reporting import stats
from cxrjax.reporting.jsonio import write_json
from cxrjax.train.evaluation import SplitPredictions, predict_split


class SplitMismatchError(inference.EvaluationInputError):
    """The two runs' splits hold different examples (or labels, or classes)."""


@dataclass(frozen=True)
class CompareOptions:
    """What ``--compare`` compares and how (the CLI's options, typed)."""

    run_a: str
    run_b: str
    dataset: str | None = None  # None: each run's own training dataset
    data_dir: str | None = None
    manual_dir: str | None = None
    dataset_options: Mapping[str, Any] | None = None
    split: str = "test"
    checkpoint: str = inference.DEFAULT_CHECKPOINT
    batch_size: int = inference.DEFAULT_BATCH_SIZE
    bootstrap_resamples: int | None = None  # None: run A's config.bootstrap_resamples
    out: str | None = None  # folder of the JSON report (default: RUN_A)
    progress: bool = True

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.bootstrap_resamples is not None and self.bootstrap_resamples < 1:
            raise ValueError(f"a comparison needs bootstrap resamples >= 1, got {self.bootstrap_resamples}")


@dataclass
class RunSplit:
    """One run's predictions of the split and the ids (file names) of its examples."""

    run: inference.LoadedRun
    request: dict[str, Any]
    predictions: SplitPredictions
    ids: list[str] | None


def predict_run_split(run: inference.LoadedRun, options: CompareOptions, cache: dict[str, Any]) -> RunSplit:
    """``run``'s predictions of ``options.split`` (its own dataset unless overridden)."""
    request = inference.dataset_request(
        run,
        dataset=options.dataset,
        data_dir=options.data_dir,
        manual_dir=options.manual_dir,
        options=options.dataset_options,
    )
    key = repr(sorted((k, repr(v)) for k, v in request.items()))
    if key not in cache:
        cache[key] = inference.open_dataset(request)
    ds = cache[key]
    stats_ds = inference.statistics_source(run, request, data_dir=options.data_dir)
    view, mapping = inference.evaluation_view(run, ds, request, options.split, stats_ds)
    desc = f"predict {run.workdir}"
    preds = predict_split(
        run, view, options.split, options.batch_size, mapping=mapping, desc=desc, progress=options.progress
    )
    ids = None
    if inference.has_field(ds, options.split, "file_name"):
        ids = [str(name) for name in inference.split_field(ds, options.split, "file_name")]
    return RunSplit(run=run, request=request, predictions=preds, ids=ids)


def check_same_examples(a: RunSplit, b: RunSplit, split: str) -> np.ndarray | None:
    """Raise :class:`SplitMismatchError` unless both runs predicted the same examples with
    the same labels and classes; return the column order putting B's classes in A's
    (None when already the same)."""
    names_a, names_b = list(a.run.class_names), list(b.run.class_names)
    if sorted(names_a) != sorted(names_b):
        raise SplitMismatchError(
            f"the runs have different classes: {a.run.workdir} {names_a}, {b.run.workdir} {names_b}; "
            "only runs of the same classes can be compared"
        )
    where = (
        f"{split} split of {a.request['name']} {dict(a.request['options'] or {})} (run A, {a.run.workdir}) and of "
        f"{b.request['name']} {dict(b.request['options'] or {})} (run B, {b.run.workdir})"
    )
    fix = "compare runs on the same data: pass --dataset NAME and --dataset-options JSON so both predict the same split"
    if a.ids is None or b.ids is None:
        raise SplitMismatchError(f"the {where} have no file names to check they hold the same examples; {fix}")
    if a.ids != b.ids:
        if len(a.ids) != len(b.ids):
            what = f"{len(a.ids)} and {len(b.ids)} examples"
        else:
            i = next(i for i, (x, y) in enumerate(zip(a.ids, b.ids)) if x != y)
            what = f"example {i} is {a.ids[i]!r} for A but {b.ids[i]!r} for B"
        raise SplitMismatchError(f"the runs' splits differ (different example ids): the {where} hold {what}; {fix}")
    order = None if names_a == names_b else np.asarray([names_b.index(c) for c in names_a], np.int64)
    labels_b = b.predictions.labels if order is None else np.argsort(order)[b.predictions.labels]
    if not np.array_equal(a.predictions.labels, labels_b):
        i = int(np.flatnonzero(a.predictions.labels != labels_b)[0])
        raise SplitMismatchError(
            f"the {where} hold the same files but different labels (first: {a.ids[i]!r}, "
            f"{names_a[a.predictions.labels[i]]} for A, {names_a[labels_b[i]]} for B); {fix}"
        )
    return order


def compare_runs(options: CompareOptions) -> dict[str, Any]:
    """Predict the split with both runs, check they saw the same examples, compare them
    paired; write ``compare_<split>_<run B's folder name>.json`` into ``options.out``
    (default: run A's folder) and return the report."""
    runs = [inference.load_run(w, checkpoint=options.checkpoint) for w in (options.run_a, options.run_b)]
    cache: dict[str, Any] = {}
    a, b = (predict_run_split(run, options, cache) for run in runs)
    order = check_same_examples(a, b, options.split)
    labels = a.predictions.labels
    probs_a = a.predictions.probs
    probs_b = b.predictions.probs if order is None else b.predictions.probs[:, order]
    resamples = options.bootstrap_resamples or a.run.config.bootstrap_resamples or stats.BOOTSTRAP_RESAMPLES
    seed = a.run.config.seed
    paired = stats.paired_bootstrap(labels, probs_a, probs_b, resamples=resamples, seed=seed)
    mcnemar = stats.mcnemar_exact(probs_a.argmax(1) == labels, probs_b.argmax(1) == labels)
    report = {
        "split": options.split,
        "dataset": a.request["name"],
        "dataset_options": dict(a.request["options"] or {}),
        "examples": int(len(labels)),
        "class_names": list(a.run.class_names),
        "runs": {
            key: {
                "workdir": str(side.run.workdir),
                "model": side.run.config.model,
                "checkpoint": {"which": side.run.checkpoint, "step": side.run.step, "epoch": side.run.epoch},
                "run_status": side.run.run_status,
                "run_status_note": side.run.run_status_note,
            }
            for key, side in (("a", a), ("b", b))
        },
        **{name: paired[name] for name in stats.BOOTSTRAP_METRICS},
        "bootstrap": {
            "method": "paired stratified percentile bootstrap of the difference A - B (same resamples for both)",
            "resamples": paired["resamples"],
            "seed": seed,
            "confidence": paired["confidence"],
        },
        "mcnemar": {**mcnemar.to_dict(), "method": "exact: two-sided binomial(b + c, 1/2) on the discordant pairs"},
    }
    folder = Path(options.out or a.run.workdir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"compare_{options.split}_{Path(b.run.workdir).resolve().name}.json"
    report["path"] = str(path)
    write_json(path, report)
    return report


def format_comparison(report: Mapping[str, Any]) -> str:
    """The printed summary of :func:`compare_runs`."""
    n = report["examples"]
    lines = [f"== comparison on {report['dataset']} {report['split']}: {n} examples (the same example ids for both)"]
    for key in ("a", "b"):
        run = report["runs"][key]
        metrics = " | ".join(stats.format_interval(m, report[m][key], None) for m in stats.BOOTSTRAP_METRICS)
        lines.append(f"{key.upper()} {run['workdir']} ({run['model']}, {run['checkpoint']['which']}): {metrics}")
        if run["run_status_note"]:
            lines.append(f"note: {key.upper()}: {run['run_status_note']}")
    diffs = []
    for m in stats.BOOTSTRAP_METRICS:
        d, ci = report[m]["difference"], report[m]["ci"]
        diffs.append(
            f"{m} n/a"
            if d is None
            else f"{m} {d:+.3f}" + ("" if ci is None else f" [{ci[0]:+.3f}, {ci[1]:+.3f}] (n={n})")
        )
    boot = report["bootstrap"]
    lines.append(f"A - B: {' | '.join(diffs)}  (paired bootstrap, {boot['resamples']} resamples, 95% intervals)")
    mc = report["mcnemar"]
    lines.append(
        f"McNemar (exact): A right & B wrong {mc['a_right_b_wrong']}, A wrong & B right {mc['a_wrong_b_right']}, "
        f"p = {mc['p']:.4g}"
    )
    return "\n".join(lines)

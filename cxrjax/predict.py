"""Classify image files with a trained run: ``python -m cxrjax.predict --workdir RUN IMAGE...``.

For each file: the class probabilities in the dataset's class order and the predicted
class; ``--gradcam OUT_DIR`` also writes a Grad-CAM overlay PNG per image; ``--json``
prints one JSON object instead of a table.

The preprocessing is the run's own evaluation pipeline, step for step: the file is
decoded as dataset preparation decodes it (``cxrjax.data.decode``: any format the data
layer reads, EXIF orientation, 16-bit windowing, stretched to the run's preparation
size), then passed through ``cxrjax.data.eval_batches`` with the run's InputConfig
(resize to the model input, normalisation, channels). So predicting on the files of a
prepared split gives the probabilities ``cxrjax.evaluate`` reports for that split.

Runs trained with ``normalization="dataset"`` normalise with the train-split mean/std
stored in the run folder (``normalization.json``), so the training data is not needed;
only older runs without that file reopen the training dataset for them.

Probabilities: the calibrated ones (the run's temperature scaling, fitted on its
validation split, ``calibration.json``) when the run has it for the loaded checkpoint,
else the raw softmax; ``--raw`` prints the raw ones. ``--json`` carries both
(``raw_probabilities``, ``calibrated_probabilities``) and says which ``probabilities``
are (``"probabilities": "calibrated" | "raw"``, with the temperature). The predicted class
is the same either way (temperature scaling keeps the order of a row's probabilities).
With stored operating thresholds (``target_sensitivity`` on validation), ``--json`` also
says per class whether the raw probability reaches its threshold (``screen_positive``).

Weights: those the run evaluated with (its moving average when trained with
``ema_decay > 0``; ``--weights live`` for the optimiser's). ``--tta MODE`` (default: the
run's ``tta``) adds the test-time-augmented prediction (mean raw softmax over the views of
``cxrjax/train/tta.py``) BESIDE the plain one: a ``tta`` column in the table,
``tta_probabilities`` / ``tta_predicted_class`` per file in ``--json``.

A file that cannot be read gets a clear per-file error; the others are still classified,
and the exit status is 1 so scripts notice.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxrjax import inference
from cxrjax.data import DATASETS
from cxrjax.data.builders.options import make_options
from cxrjax.data.decode import DecodeError, read_grayscale
from cxrjax.data.subset import split_options
from cxrjax.explain.gradcam import add_saliency_arguments
from cxrjax.explain.overlay import save_overlay_png
from cxrjax.explain.split import saliency
from cxrjax.train.evaluation import predict_split
from cxrjax.train.tta import TTAPredictor, describe

PREDICT_SPLIT = "predict"


@dataclass
class FilePrediction:
    """One input file: probabilities (model class order) or the reason it was not read.

    ``probs`` are the raw softmax probabilities, ``calibrated`` the same after the run's
    temperature scaling (None without one); :meth:`shown` is what is printed."""

    file: str
    probs: np.ndarray | None = None
    error: str | None = None
    gradcam: str | None = None
    calibrated: np.ndarray | None = None
    tta: np.ndarray | None = None  # raw probabilities under test-time augmentation (None: no TTA)

    def shown(self, raw: bool = False) -> np.ndarray | None:
        """The calibrated probabilities when there are (and ``raw`` is False), else the raw ones."""
        return self.probs if raw or self.calibrated is None else self.calibrated

    def to_dict(
        self, class_names: Sequence[str], *, raw: bool = False, thresholds: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        probs = self.shown(raw)
        k = int(np.argmax(probs))
        as_dict = lambda p: None if p is None else {name: float(v) for name, v in zip(class_names, p)}
        out = {
            "file": self.file,
            "predicted_class": class_names[k],
            "predicted_index": k,
            "probability": float(probs[k]),
            "probabilities": as_dict(probs),
            "raw_probabilities": as_dict(self.probs),
            "calibrated_probabilities": as_dict(self.calibrated),
        }
        if self.tta is not None:
            out["tta_predicted_class"] = class_names[int(np.argmax(self.tta))]
            out["tta_probabilities"] = as_dict(self.tta)
        if thresholds:
            out["screen_positive"] = {
                name: None if thresholds.get(name) is None else bool(p >= thresholds[name])
                for name, p in zip(class_names, self.probs)
            }
        if self.gradcam is not None:
            out["gradcam"] = self.gradcam
        return out


def preparation_size(run: Any) -> int:
    """Side of the stored images of the run's training dataset (files are decoded to it).

    Evaluation resizes the *stored* image (prepared at this size) to the model input;
    decoding a file straight to the model size would resize once instead of twice and
    give slightly different pixels than ``evaluate`` sees.
    """
    name = run.config.dataset
    options = run.dataset_info.get("options", run.config.dataset_options)
    if name not in DATASETS:
        raise ValueError(f"run {run.workdir} was trained on unknown dataset {name!r}; known: {sorted(DATASETS)}")
    options, _ = split_options(options)  # a class subset is a view, not a preparation option
    return int(make_options(DATASETS[name].OPTIONS_CLASS, options or None, name).image_size)


def decode_files(paths: Sequence[str], size: int) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """Decoded records for the readable files, and {position: error} for the others."""
    records, errors = [], {}
    for i, path in enumerate(paths):
        try:
            if Path(path).is_dir():
                raise DecodeError(f"{path}: is a folder, not an image file")
            decoded = read_grayscale(path, size=size)
        except DecodeError as error:
            errors[i] = str(error)
            continue
        records.append(
            {
                "image": decoded.pixels[..., None],
                "label": 0,
                "file_name": str(path),
                "original_size": np.asarray(decoded.original_size, np.int32),
            }
        )
    return records, errors


def _gradcam_path(out_dir: Path, file: str, used: set[str]) -> Path:
    stem = Path(file).stem or "image"
    name, k = f"{stem}_gradcam.png", 1
    while name in used:
        k += 1
        name = f"{stem}_{k}_gradcam.png"
    used.add(name)
    return out_dir / name


def predict_files(
    run: inference.LoadedRun,
    paths: Sequence[str],
    *,
    gradcam_dir: str | Path | None = None,
    layer: str | None = None,
    method: str = "gradcam",
    batch_size: int = inference.DEFAULT_BATCH_SIZE,
    data_dir: str | None = None,
    tta: str = "none",
    progress: bool = False,
) -> list[FilePrediction]:
    """Classify ``paths`` with a loaded run (``cxrjax.inference.load_run``), in input order;
    ``tta`` (cxrjax/train/tta.py) adds each file's test-time-augmented probabilities."""
    paths = [str(p) for p in paths]
    records, errors = decode_files(paths, preparation_size(run))
    results = [FilePrediction(file=p, error=errors.get(i)) for i, p in enumerate(paths)]
    readable = [r for r in results if r.error is None]
    if not records:
        return results
    files = inference.DatasetView(name="files", class_names=list(run.class_names), splits={})
    view = inference.eval_view(
        run, files, inference.statistics_source(run, data_dir=data_dir), **{PREDICT_SPLIT: records}
    )
    preds = predict_split(run, view, PREDICT_SPLIT, batch_size, desc="predict", progress=progress)
    calibrated = run.calibrated(preds.probs)
    for i, (result, p) in enumerate(zip(readable, preds.probs)):
        result.probs = p
        result.calibrated = None if calibrated is None else calibrated[i]
    if tta != "none":
        tta_preds = predict_split(
            TTAPredictor(run, tta), view, PREDICT_SPLIT, batch_size, desc="tta", progress=progress
        )
        for result, p in zip(readable, tta_preds.probs):
            result.tta = p
    if gradcam_dir is not None:
        # Each image's predicted class is explained.
        maps = saliency(run, view, PREDICT_SPLIT, method=method, layer=layer, batch_size=batch_size, progress=progress)
        out_dir = Path(gradcam_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        used: set[str] = set()
        for result, image, heatmap in zip(readable, maps.images, maps.heatmaps):
            path = _gradcam_path(out_dir, result.file, used)
            save_overlay_png(path, image, heatmap)
            result.gradcam = str(path)
    return results


def format_table(
    results: Sequence[FilePrediction], class_names: Sequence[str], *, raw: bool = False, shown: str = ""
) -> str:
    """One row per file: file, predicted class and its probability, then every class
    (:meth:`FilePrediction.shown` probabilities; ``shown`` says which, at the header's end)."""
    width = max([len(r.file) for r in results] + [4])
    cols = [max(len(c), 6) for c in class_names]
    pred_w = max(len(c) for c in class_names) + 2
    lines = [
        f"{'file':<{width}}  {'predicted':<{pred_w}}{'p':>7}  "
        + "  ".join(f"{c:>{w}}" for c, w in zip(class_names, cols))
        + (f"  ({shown} probabilities)" if shown else "")
    ]
    for r in results:
        name = r.file
        if r.error is not None:
            lines.append(f"{name:<{width}}  ERROR: {r.error}")
            continue
        probs = r.shown(raw)
        k = int(np.argmax(probs))
        lines.append(
            f"{name:<{width}}  {class_names[k]:<{pred_w}}{probs[k]:>7.4f}  "
            + "  ".join(f"{p:>{w}.4f}" for p, w in zip(probs, cols))
            + (f"  tta: {class_names[int(np.argmax(r.tta))]} {float(np.max(r.tta)):.4f}" if r.tta is not None else "")
            + (f"  -> {r.gradcam}" if r.gradcam else "")
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = inference.run_parser(
        "python -m cxrjax.predict",
        "Class probabilities (in the dataset's class order) and the predicted class for "
        "each image file, with the run's own evaluation preprocessing.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, BMP, TIFF; 8/16-bit)")
    p.add_argument("--gradcam", metavar="OUT_DIR", help="also write a Grad-CAM overlay PNG per image here")
    add_saliency_arguments(p, method_help="saliency method for --gradcam (default: gradcam)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument(
        "--raw",
        action="store_true",
        help="print the raw softmax probabilities (default: calibrated by the run's temperature, if it has one)",
    )
    inference.add_checkpoint_arguments(p)
    inference.add_weights_and_tta_arguments(p)
    p.add_argument(
        "--data-dir",
        help="prepared training data: only for runs normalised with dataset "
        "statistics that were trained before normalization.json was stored",
    )
    a = p.parse_args(argv)
    try:
        run = inference.load_run(a.workdir, checkpoint=a.checkpoint, weights=a.weights)
        tta = a.tta or run.config.tta
        results = predict_files(
            run,
            a.images,
            gradcam_dir=a.gradcam,
            layer=a.layer,
            method=a.cam_method,
            batch_size=a.batch_size,
            data_dir=a.data_dir,
            tta=tta,
        )
    except inference.USER_ERRORS as error:  # unreadable image files are reported per file instead
        return inference.user_error(error)
    shown = "raw" if a.raw or run.temperature is None else "calibrated"
    thresholds = (run.calibration or {}).get("operating_thresholds")
    if a.json:
        print(
            json.dumps(
                {
                    "workdir": str(a.workdir),
                    "checkpoint": {"which": run.checkpoint, "step": run.step},
                    "weights": run.weights,
                    "tta": None if tta == "none" else describe(tta, run.input_config.image_size),
                    "run_status": run.run_status,
                    "run_status_note": run.run_status_note,
                    "class_names": list(run.class_names),
                    "probabilities": shown,  # which ones "probabilities" / "probability" of each file are
                    "temperature": run.temperature,
                    "calibration_note": run.calibration_note,
                    "operating_points": None
                    if thresholds is None
                    else {
                        "thresholds": thresholds,
                        "target_sensitivity": run.calibration.get("target_sensitivity"),
                        "apply_to": "raw probabilities",
                    },
                    "predictions": [r.to_dict(run.class_names, raw=a.raw, thresholds=thresholds) for r in results],
                },
                indent=2,
            )
        )
    else:
        what = f"calibrated, temperature {run.temperature:.3g}" if shown == "calibrated" else "raw"
        print(format_table(results, run.class_names, raw=a.raw, shown=what))
        if shown == "raw" and not a.raw and run.calibration_note:
            print(f"note: raw probabilities: {run.calibration_note}", file=sys.stderr)
    if run.run_status_note:
        print(f"note: {run.run_status_note}", file=sys.stderr)
    failed = [r for r in results if r.error is not None]
    if failed:
        print(
            f"error: {len(failed)} of {len(results)} file(s) could not be read: " + "; ".join(r.file for r in failed),
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

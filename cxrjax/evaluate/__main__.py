"""``python -m cxrjax.evaluate``: evaluate runs on a prepared dataset (see the package doc)."""

from __future__ import annotations

import argparse
import json
import sys

from cxrjax.data import LayoutError
from cxrjax.evaluate.report import EvalOptions, evaluate, format_ensemble, format_member
from cxrjax.explain.gradcam import METHODS
from cxrjax.inference import CHECKPOINTS, DEFAULT_CHECKPOINT, EvaluationInputError


def parse_args(argv=None) -> EvalOptions:
    p = argparse.ArgumentParser(
        prog="python -m cxrjax.evaluate",
        description="Evaluate a trained run (its best checkpoint) on a prepared dataset: metrics, "
        "confusion/ROC/precision-recall plots, lung-masked shortcut probe and Grad-CAM "
        "pointing game where the dataset has the masks. Several --workdir: also their "
        "ensemble (mean of the softmax probabilities). Writes eval_<dataset>_<split>.json "
        "and the plots into each run folder.",
    )
    p.add_argument(
        "--workdir",
        action="append",
        required=True,
        metavar="RUN",
        help="run folder written by python -m cxrjax.train (repeat for an ensemble)",
    )
    p.add_argument("--dataset", help="dataset name (default: the run's training dataset)")
    p.add_argument("--data-dir", help="where prepared datasets live (default: the run's)")
    p.add_argument("--manual-dir", help="your download of a real dataset, if not yet prepared")
    p.add_argument(
        "--dataset-options",
        type=json.loads,
        metavar="JSON",
        help="preparation options as JSON, e.g. '{\"shortcut_marker\": true}'; for the "
        "run's own dataset they change its training options (same split), for "
        "another dataset they are its options",
    )
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument(
        "--checkpoint",
        default=DEFAULT_CHECKPOINT,
        choices=CHECKPOINTS,
        help="which checkpoint (default: the one the run's own test evaluation used, i.e. the "
        "best by its monitored validation metric unless it was trained with restore_best=False)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--layer", help="Grad-CAM layer for the pointing game (default: last conv stage)")
    p.add_argument(
        "--cam-method",
        action="append",
        choices=METHODS,
        help="saliency method(s) of the pointing game (repeatable; default: both)",
    )
    p.add_argument("--no-probes", action="store_true", help="skip the lung-masked probe")
    p.add_argument("--no-pointing-game", action="store_true", help="skip the Grad-CAM pointing game")
    p.add_argument("--out", help="folder for the ensemble report (default: the first run folder)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    return EvalOptions(
        workdirs=tuple(a.workdir),
        dataset=a.dataset,
        data_dir=a.data_dir,
        manual_dir=a.manual_dir,
        dataset_options=a.dataset_options,
        split=a.split,
        checkpoint=a.checkpoint,
        batch_size=a.batch_size,
        probes=not a.no_probes,
        pointing_game=not a.no_pointing_game,
        layer=a.layer,
        out=a.out,
        cam_methods=tuple(a.cam_method or METHODS),
        progress=not a.no_progress,
    )


def main(argv=None) -> int:
    options = parse_args(argv)
    try:
        result = evaluate(options)
    except (EvaluationInputError, FileNotFoundError, LayoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for report, path in zip(result["members"], result["paths"]):
        print(format_member(report))
        print(f"wrote {path} and its plots\n")
    if result["ensemble"]:
        print(format_ensemble(result["ensemble"]))
        print(f"wrote {result['ensemble']['path']} and its plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())

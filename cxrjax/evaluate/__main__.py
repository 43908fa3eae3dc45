"""``python -m cxrjax.evaluate``: evaluate runs on a prepared dataset (see the package doc)."""

from __future__ import annotations

import sys

from cxrjax import inference
from cxrjax.evaluate.compare import CompareOptions, compare_runs, format_comparison
from cxrjax.evaluate.report import EvalOptions, evaluate, format_ensemble, format_member
from cxrjax.explain.gradcam import METHODS, add_saliency_arguments
from cxrjax.explain.mask_free import add_mask_free_arguments
from cxrjax.inference import add_weights_and_tta_arguments


def parse_args(argv=None) -> EvalOptions | CompareOptions:
    p = inference.run_parser(
        "python -m cxrjax.evaluate",
        "Evaluate a trained run (its best checkpoint) on a prepared dataset: metrics, "
        "confusion/ROC/precision-recall plots, the mask-free shortcut probe (thorax box "
        "blanked / only, border strip only), lung-masked probe and Grad-CAM "
        "pointing game where the dataset has the masks. Several --workdir: also their "
        "ensemble (mean of the softmax probabilities). Writes eval_<dataset>_<split>.json "
        "and the plots into each run folder.",
        ensemble=True,
        required=False,
    )
    p.add_argument(
        "--compare",
        nargs=2,
        metavar=("RUN_A", "RUN_B"),
        help="instead of --workdir: compare two runs on the same split, paired (difference with a paired-bootstrap "
        "interval, exact McNemar test); refused if their splits hold different examples",
    )
    inference.add_dataset_arguments(
        p,
        options_help="preparation options as JSON, e.g. '{\"shortcut_marker\": true}'; for the "
        "run's own dataset they change its training options (same split), for "
        "another dataset they are its options",
    )
    inference.add_checkpoint_arguments(p)
    add_saliency_arguments(
        p,
        layer_help="Grad-CAM layer for the pointing game (default: last conv stage)",
        method_help="saliency method(s) of the pointing game (repeatable; default: both)",
        several=True,
    )
    p.add_argument("--no-probes", action="store_true", help="skip the lung-masked and source probes")
    p.add_argument("--no-pointing-game", action="store_true", help="skip the Grad-CAM pointing game")
    add_mask_free_arguments(p)
    p.add_argument("--out", help="folder for the ensemble report (default: the first run folder)")
    p.add_argument(
        "--bootstrap-resamples",
        type=int,
        metavar="N",
        help="stratified bootstrap resamples of the 95%% intervals (default: the run's; 0: none)",
    )
    add_weights_and_tta_arguments(p)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if bool(a.workdir) == bool(a.compare):
        p.error("give --workdir RUN (one or more) or --compare RUN_A RUN_B")
    if a.bootstrap_resamples is not None and a.bootstrap_resamples < 0:
        p.error(f"--bootstrap-resamples must be >= 0, got {a.bootstrap_resamples}")
    if a.compare:
        if a.tta or a.weights:
            p.error(
                "--tta and --weights apply to --workdir evaluation; --compare uses the weights each run evaluated with"
            )
        if a.bootstrap_resamples == 0:
            p.error("--compare needs bootstrap resamples (--bootstrap-resamples >= 1)")
        return CompareOptions(
            run_a=a.compare[0],
            run_b=a.compare[1],
            **inference.common_kwargs(a),
            bootstrap_resamples=a.bootstrap_resamples,
            out=a.out,
            progress=not a.no_progress,
        )
    return EvalOptions(
        workdirs=tuple(a.workdir),
        **inference.common_kwargs(a),
        probes=not a.no_probes,
        pointing_game=not a.no_pointing_game,
        mask_free_probe=not a.no_mask_free_probe,
        thorax_box=a.thorax_box,
        border=a.border,
        layer=a.layer,
        out=a.out,
        cam_methods=tuple(a.cam_method or METHODS),
        bootstrap_resamples=a.bootstrap_resamples,
        tta=a.tta,
        weights=a.weights,
        progress=not a.no_progress,
    )


def main(argv=None) -> int:
    options = parse_args(argv)
    if isinstance(options, CompareOptions):
        try:
            report = compare_runs(options)
        except inference.USER_ERRORS as error:
            return inference.user_error(error)
        print(format_comparison(report))
        print(f"wrote {report['path']}")
        return 0
    try:
        result = evaluate(options)
    except inference.USER_ERRORS as error:
        return inference.user_error(error)
    for report, path in zip(result["members"], result["paths"]):
        print(format_member(report))
        print(f"wrote {path} and its plots\n")
    if result["ensemble"]:
        print(format_ensemble(result["ensemble"]))
        print(f"wrote {result['ensemble']['path']} and its plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())

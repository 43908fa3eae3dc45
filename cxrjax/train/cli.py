"""``python -m cxrjax.train``: train one model and evaluate it (resumes an existing workdir).

    python -m cxrjax.train --model lenet5 --dataset cxr_phantoms --data-dir data \\
        --workdir runs/lenet5 --epochs 5
    python -m cxrjax.train --preset s4_exp4_phantoms --workdir runs/exp4 --epochs 3
    python -m cxrjax.train --preset s4_exp4_phantoms --classes COVID,Normal --workdir runs/exp4_2cls
    python -m cxrjax.train --list-presets

Start from ``--preset`` (or the TrainConfig defaults), then ``--recipe NAME`` (a named
bundle of training options, ``cxrjax.train.recipes``); every option given explicitly
overrides both. ``--set FIELD=VALUE`` sets any TrainConfig field (VALUE parsed as JSON
when it parses, e.g. ``--set momentum=0.9 --set class_weights=[1,2]``), so everything
``cxrjax.train.TrainConfig`` can do is reachable from the command line. The named flags
are built from TrainConfig's field declarations (``cxrjax.train.config_args``).

A configuration TrainConfig refuses (``--lr nan``, ``--set epochs=1.5`` ...), like a
workdir holding a different configuration, ends in one ``error: ...`` line and exit
status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from cxrjax.train import config_args, recipes
from cxrjax.train.config import TrainConfig
from cxrjax.train.config_args import key_values, set_changes
from cxrjax.train.presets import PRESETS, describe


def build_parser() -> argparse.ArgumentParser:
    """The run's own flags, then one flag per TrainConfig field that declares one
    (``cxrjax.train.config_args``), then the KEY=VALUE options."""
    p = argparse.ArgumentParser(
        prog="python -m cxrjax.train",
        description="Train a cxrjax model data-parallel on every local device, evaluate it, and "
        "write config.json, metrics.jsonl, results.json, checkpoints/ and plots to --workdir. "
        "Re-running on the same --workdir resumes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--workdir", help="run folder (created; resumed if it exists)")
    p.add_argument(
        "--preset", choices=sorted(PRESETS), metavar="NAME", help="start from a named study preset (see --list-presets)"
    )
    p.add_argument("--list-presets", action="store_true", help="list presets with their commands and exit")
    config_args.add_config_flags(p)
    config_args.add_passthrough_options(p)
    p.add_argument("--print-config", action="store_true", help="print the resulting config as JSON and exit")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Preset (or defaults), then named flags, then --dataset-option/--model-option/--set.

    Raises ValueError (``invalid configuration: ...``) for a configuration TrainConfig refuses.
    """
    config = PRESETS[args.preset] if args.preset else TrainConfig()
    changes = config_args.flag_changes(args, [f.name for f in config_args.flag_fields()])
    if args.dataset_option:
        base = config.dataset_options
        if "classes" in changes:  # --classes decides the subset, not the preset's options
            base = {k: v for k, v in base.items() if k != "classes"}
        changes["dataset_options"] = {**base, **key_values(args.dataset_option, "--dataset-option")}
    if args.model_option:
        changes["model_options"] = {**config.model_options, **key_values(args.model_option, "--model-option")}
    changes.update(set_changes(args.set))
    try:
        return recipes.resolve(config, changes)  # preset < --recipe < the other options
    except ValueError as err:
        raise ValueError(f"invalid configuration: {err}") from err


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_presets:
        for name in PRESETS:
            print(f"{name}\n    " + describe(name).replace("\n", "\n    ") + "\n")
        return 0
    try:
        config = config_from_args(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(config.to_json())
        return 0
    if not args.workdir:
        raise SystemExit("--workdir is required (the run folder; an existing one is resumed)")
    # Imported here, not at the top: --help, --list-presets and --print-config answer
    # without loading JAX, orbax or the data layer.
    from cxrjax.reporting.metrics import format_report
    from cxrjax.train.trainer import USER_ERRORS, train_and_evaluate

    try:
        results = train_and_evaluate(config, args.workdir)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    shown = results.get("test") or results.get("validation")
    split = "test" if results.get("test") else "validation"
    print(f"\n{split} set ({results['evaluated']['checkpoint']} checkpoint, epoch {results['evaluated']['epoch']}):")
    print(format_report(shown))
    if not config.progress:  # with progress on, the trainer has printed these lines already
        from cxrjax.reporting.calibration import format_split_summary

        for line in format_split_summary(shown, split):
            print(line)
    print(
        f"\nbest epoch {results['best_epoch']} of {results['epochs_run']} run"
        f"{' (stopped early)' if results['stopped_early'] else ''}; "
        f"{results['train_images_per_second'] or float('nan'):.0f} train images/s on "
        f"{results['num_devices']} {results['jax_backend']} device(s)"
    )
    held_out = (results.get("dataset_info") or {}).get("split_sources")  # split_by="source"
    if held_out:
        print("sources by split: " + "; ".join(f"{split} {', '.join(names)}" for split, names in held_out.items()))
    from cxrjax.train import workdir as files

    written = [
        n
        for n in (
            files.CALIBRATION_FILE,
            files.LEARNING_CURVES,
            files.CONFUSION_MATRIX,
            files.ROC_CURVES,
            files.RELIABILITY_PLOT.format(split="validation"),
            files.RELIABILITY_PLOT.format(split="test"),
        )
        if (Path(args.workdir) / n).exists()
    ]
    print(f"results: {args.workdir}/results.json, metrics.jsonl" + "".join(f", {n}" for n in written))
    return 0

"""``python -m cxrjax.train``: train one model and evaluate it (resumes an existing workdir).

    python -m cxrjax.train --model lenet5 --dataset cxr_phantoms --data-dir data \\
        --workdir runs/lenet5 --epochs 5
    python -m cxrjax.train --preset s4_exp4_phantoms --workdir runs/exp4 --epochs 3
    python -m cxrjax.train --preset s4_exp4_phantoms --classes COVID,Normal --workdir runs/exp4_2cls
    python -m cxrjax.train --list-presets

Start from ``--preset`` (or the TrainConfig defaults); every option given explicitly
overrides it. ``--set FIELD=VALUE`` sets any TrainConfig field (VALUE parsed as JSON
when it parses, e.g. ``--set label_smoothing=0.1 --set zoom=[1,1.2]``), so everything
``cxrjax.train.TrainConfig`` can do is reachable from the command line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any, Sequence

from cxrjax.train.config import (MONITORS, NONFINITE_MODES, OPTIMIZERS, PARALLEL_MODES, SCHEDULES,
                                 TrainConfig)
from cxrjax.train.presets import PRESETS, describe

# flag dest -> TrainConfig field, for the named flags
_FLAG_FIELDS = {
    "model": "model",
    "dataset": "dataset",
    "data_dir": "data_dir",
    "manual_dir": "manual_dir",
    "image_size": "image_size",
    "channels": "channels",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "optimizer": "optimizer",
    "schedule": "schedule",
    "seed": "seed",
    "early_stopping_patience": "early_stopping_patience",
    "early_stopping_min_delta": "early_stopping_min_delta",
    "monitor": "monitor",
    "parallel": "parallel",
    "num_devices": "num_devices",
    "label_smoothing": "label_smoothing",
    "weight_decay": "weight_decay",
    "grad_clip_norm": "grad_clip_norm",
    "on_nonfinite": "on_nonfinite",
    "max_skipped_fraction": "max_skipped_fraction",
    "checkpoint_every_steps": "checkpoint_every_steps",
    "compilation_cache": "compilation_cache_dir",
    "dtype": "dtype",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cxrjax.train",
        description="Train a cxrjax model data-parallel on every local device, evaluate it, and "
        "write config.json, metrics.jsonl, results.json, checkpoints/ and plots to --workdir. "
        "Re-running on the same --workdir resumes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--workdir", help="run folder (created; resumed if it exists)")
    p.add_argument("--preset", choices=sorted(PRESETS), metavar="NAME",
                   help="start from a named study preset (see --list-presets)")
    p.add_argument("--list-presets", action="store_true", help="list presets with their commands and exit")
    p.add_argument("--model", help="model name (cxrjax.models.MODELS)")
    p.add_argument("--dataset", help="dataset name, e.g. cxr_phantoms, covid19_radiography")
    p.add_argument("--data-dir", help="where prepared datasets live (default: data)")
    p.add_argument("--manual-dir", help="folder of the downloaded dataset (real datasets)")
    p.add_argument("--classes", metavar="A,B,...",
                   help="keep only these classes, labelled 0..k-1 in this order, e.g. COVID,Normal "
                   "(other classes are dropped from every split); 'all' keeps every class")
    p.add_argument("--image-size", type=int, help="input size (default: the model's)")
    p.add_argument("--channels", type=int, help="input channels (default: the model's)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="PER DEVICE; global batch = this x devices")
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--schedule", choices=SCHEDULES)
    p.add_argument("--seed", type=int)
    p.add_argument("--early-stopping-patience", type=int, help="epochs without improvement before stopping")
    p.add_argument("--early-stopping-min-delta", type=float)
    p.add_argument("--monitor", choices=MONITORS, help="early stopping and best-checkpoint metric")
    p.add_argument("--parallel", choices=PARALLEL_MODES)
    p.add_argument("--num-devices", type=int, help="default: every local device")
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--grad-clip-norm", type=float)
    p.add_argument("--on-nonfinite", choices=NONFINITE_MODES)
    p.add_argument("--max-skipped-fraction", type=float,
                   help="with --on-nonfinite skip: fail a run that skipped more than this fraction of its steps")
    p.add_argument("--checkpoint-every-steps", type=int, help="also checkpoint mid-epoch")
    p.add_argument("--compilation-cache", metavar="DIR", help="JAX persistent compilation cache folder")
    p.add_argument("--dtype", choices=("float32", "bfloat16"))
    p.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset preparation option (repeatable), e.g. num_train=500")
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="model constructor override (repeatable), e.g. dropout=0.25")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="set any TrainConfig field (repeatable)")
    p.add_argument("--tensorboard", action="store_true", default=None, help="write TensorBoard event files")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bars")
    p.add_argument("--print-config", action="store_true", help="print the resulting config as JSON and exit")
    return p


def parse_value(text: str) -> Any:
    """A command-line VALUE: JSON when it parses (numbers, lists, true/false), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def key_values(items: Sequence[str], flag: str) -> dict[str, Any]:
    """Repeated ``KEY=VALUE`` options as a dict (dashes in KEY become underscores)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"{flag} expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = parse_value(value.strip())
    return out


def set_changes(items: Sequence[str]) -> dict[str, Any]:
    """``--set FIELD=VALUE`` options, each FIELD checked against TrainConfig's fields."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    changes = key_values(items, "--set")
    for name in changes:
        if name not in fields:
            raise SystemExit(f"--set {name}=...: TrainConfig has no field {name!r}; fields: {sorted(fields)}")
    return changes


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Preset (or defaults), then named flags, then --dataset-option/--model-option/--set."""
    config = PRESETS[args.preset] if args.preset else TrainConfig()
    changes: dict[str, Any] = {}
    for dest, name in _FLAG_FIELDS.items():
        value = getattr(args, dest)
        if value is not None:
            changes[name] = value
    if args.classes is not None:
        names = [c.strip() for c in args.classes.split(",") if c.strip()]
        changes["classes"] = None if names in ([], ["all"]) else tuple(names)
    for dest in ("tensorboard", "progress"):
        if getattr(args, dest) is not None:
            changes[dest] = getattr(args, dest)
    if args.dataset_option:
        base = config.dataset_options
        if "classes" in changes:  # --classes decides the subset, not the preset's options
            base = {k: v for k, v in base.items() if k != "classes"}
        changes["dataset_options"] = {**base, **key_values(args.dataset_option, "--dataset-option")}
    if args.model_option:
        changes["model_options"] = {**config.model_options, **key_values(args.model_option, "--model-option")}
    changes.update(set_changes(args.set))
    try:
        return config.replace(**changes)
    except (ValueError, TypeError) as err:
        raise SystemExit(f"invalid configuration: {err}") from err


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_presets:
        for name in PRESETS:
            print(f"{name}\n    " + describe(name).replace("\n", "\n    ") + "\n")
        return 0
    config = config_from_args(args)
    if args.print_config:
        print(config.to_json())
        return 0
    if not args.workdir:
        raise SystemExit("--workdir is required (the run folder; an existing one is resumed)")
    from cxrjax.reporting.metrics import format_report
    from cxrjax.train.trainer import NonFiniteError, train_and_evaluate
    from cxrjax.train.workdir import ConfigMismatchError, WorkdirError

    try:
        results = train_and_evaluate(config, args.workdir)
    except (ConfigMismatchError, NonFiniteError, WorkdirError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    shown = results.get("test") or results.get("validation")
    split = "test" if results.get("test") else "validation"
    print(f"\n{split} set ({results['evaluated']['checkpoint']} checkpoint, epoch {results['evaluated']['epoch']}):")
    print(format_report(shown))
    print(f"\nbest epoch {results['best_epoch']} of {results['epochs_run']} run"
          f"{' (stopped early)' if results['stopped_early'] else ''}; "
          f"{results['train_images_per_second'] or float('nan'):.0f} train images/s on "
          f"{results['num_devices']} {results['jax_backend']} device(s)")
    print(f"results: {args.workdir}/results.json, metrics.jsonl, learning_curves.png, "
          "confusion_matrix.png, roc_curves.png")
    return 0

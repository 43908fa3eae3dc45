"""Pass-through of every ``cxrjax.train.TrainConfig`` option on an experiment's command line.

An experiment fixes what it studies (the model, BatchNorm, dropout, early stopping, the
seed) per cell; everything else about training is the user's to change, with the same
spelling as ``python -m cxrjax.train``:

* named flags for the common fields (``--epochs``, ``--lr``, ``--optimizer`` ...),
* ``--dataset-option KEY=VALUE`` and ``--model-option KEY=VALUE`` (merged into the dicts),
* ``--set FIELD=VALUE`` for any other TrainConfig field (VALUE parsed as JSON when it
  parses, e.g. ``--set zoom=[1,1.2]``, ``--set label_smoothing=0.1``).

Only options given explicitly are applied, on top of the experiment's own defaults.
"""
from __future__ import annotations

import argparse
from typing import Any, Sequence

from cxrjax.train.cli import key_values, set_changes
from cxrjax.train.config import (DTYPES, MONITORS, NONFINITE_MODES, OPTIMIZERS, PARALLEL_MODES,
                                 SCHEDULES, TrainConfig)

# flag -> (TrainConfig field, type, choices, help)
_NAMED: dict[str, tuple[str, Any, Sequence[str] | None, str]] = {
    "--image-size": ("image_size", int, None, "model input size in pixels"),
    "--channels": ("channels", int, None, "input channels (1 or 3)"),
    "--epochs": ("epochs", int, None, "maximum epochs per run"),
    "--batch-size": ("batch_size", int, None, "PER DEVICE batch (global = this x devices)"),
    "--lr": ("lr", float, None, "learning rate"),
    "--optimizer": ("optimizer", str, OPTIMIZERS, "optimizer"),
    "--schedule": ("schedule", str, SCHEDULES, "learning-rate schedule"),
    "--monitor": ("monitor", str, MONITORS, "early-stopping / best-checkpoint metric"),
    "--early-stopping-patience": ("early_stopping_patience", int, None,
                                  "patience of the cells WITH early stopping"),
    "--early-stopping-min-delta": ("early_stopping_min_delta", float, None, "early-stopping min_delta"),
    "--label-smoothing": ("label_smoothing", float, None, "label smoothing"),
    "--weight-decay": ("weight_decay", float, None, "weight decay"),
    "--grad-clip-norm": ("grad_clip_norm", float, None, "gradient clipping by global norm"),
    "--on-nonfinite": ("on_nonfinite", str, NONFINITE_MODES, "non-finite loss: stop or skip"),
    "--parallel": ("parallel", str, PARALLEL_MODES, "data-parallel compilation"),
    "--num-devices": ("num_devices", int, None, "devices per run (default: every local device)"),
    "--dtype": ("dtype", str, DTYPES, "computation dtype"),
    "--normalization": ("normalization", str, None, "unit | half | dataset"),
    "--num-workers": ("num_workers", int, None, "grain worker processes"),
}


def add_train_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "training options (passed to cxrjax.train.TrainConfig; override the experiment's defaults)"
    )
    for flag, (_, typ, choices, help_) in _NAMED.items():
        group.add_argument(flag, type=typ, choices=choices, default=None, help=help_)
    group.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                       help="dataset preparation option (repeatable), e.g. num_train=800")
    group.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                       help="model constructor option for every cell (repeatable), e.g. head_width=64; "
                            "the factors a cell studies (batchnorm, dropout, layout) stay the cell's")
    group.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="set any TrainConfig field (repeatable), VALUE parsed as JSON if it parses")
    group.add_argument("--progress", action="store_true", default=None,
                       help="also show each run's own per-epoch progress bars")


def train_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig changes the user asked for explicitly (dict options kept apart)."""
    changes: dict[str, Any] = {}
    for flag, (field, *_rest) in _NAMED.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            changes[field] = value
    if args.progress is not None:
        changes["progress"] = args.progress
    changes.update(set_changes(args.set))
    if args.dataset_option:
        changes["dataset_options"] = {**changes.get("dataset_options", {}),
                                      **key_values(args.dataset_option, "--dataset-option")}
    if args.model_option:
        changes["model_options"] = {**changes.get("model_options", {}),
                                    **key_values(args.model_option, "--model-option")}
    return changes


def apply_changes(config: TrainConfig, changes: dict[str, Any]) -> TrainConfig:
    """``config`` with ``changes``; dataset_options and model_options are merged, not replaced."""
    changes = dict(changes)
    for name in ("dataset_options", "model_options"):
        if name in changes:
            changes[name] = {**getattr(config, name), **changes[name]}
    try:
        return config.replace(**changes)
    except (ValueError, TypeError) as err:
        raise SystemExit(f"invalid training option: {err}") from err

"""Pass-through of every ``cxrjax.train.TrainConfig`` option on an experiment's command line.

An experiment fixes what it studies (the model, BatchNorm, dropout, early stopping, the
seed) per cell; everything else about training is the user's to change, with the same
spelling as ``python -m cxrjax.train``, because both build their flags from
TrainConfig's field declarations (``cxrjax.train.config_args``):

* a named flag for every TrainConfig field that declares one (``--epochs``, ``--lr``,
  ``--optimizer``, ``--per-device-batch-size`` ...), except :data:`EXPERIMENT_FIELDS`,
  which the experiment sets itself or takes from its own options,
* ``--dataset-option KEY=VALUE`` and ``--model-option KEY=VALUE`` (merged into the dicts),
* ``--set FIELD=VALUE`` for any other TrainConfig field (VALUE parsed as JSON when it
  parses, e.g. ``--set momentum=0.9``, ``--set class_weights=[1,2]``).

Only options given explicitly are applied, on top of the experiment's own defaults.
"""

from __future__ import annotations

import argparse
from typing import Any

from cxrjax.train import config_args, recipes
from cxrjax.train.config import TrainConfig

# TrainConfig fields with a named flag that an experiment does not take from it: the
# cell decides the model, the seed list the seed; --dataset, --data-dir, --manual-dir and
# --compilation-cache are the experiment's common options (one value for every run),
# --no-progress is the grid's bar (--progress below turns on each run's bars); classes
# can still be set with --set.
EXPERIMENT_FIELDS = (
    "model",
    "dataset",
    "data_dir",
    "manual_dir",
    "classes",
    "seed",
    "compilation_cache_dir",
    "progress",
)

_HELP = {"early_stopping_patience": "patience of the cells WITH early stopping"}


def _fields() -> list[str]:
    return [f.name for f in config_args.flag_fields(exclude=EXPERIMENT_FIELDS)]


def add_train_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "training options (passed to cxrjax.train.TrainConfig; override the experiment's defaults)"
    )
    config_args.add_config_flags(group, exclude=EXPERIMENT_FIELDS, help_overrides=_HELP)
    config_args.add_passthrough_options(
        group,
        dataset_help="dataset preparation option (repeatable), e.g. num_train=800",
        model_help="model constructor option for every cell (repeatable), e.g. head_width=64; "
        "the factors a cell studies (batchnorm, dropout, layout) stay the cell's",
    )
    group.add_argument(
        "--progress", action="store_true", default=None, help="also show each run's own per-epoch progress bars"
    )


def train_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig changes the user asked for explicitly (dict options kept apart).

    Raises ValueError for a ``--set`` of an unknown field or a KEY without ``=VALUE``.
    """
    changes = config_args.flag_changes(args, _fields())
    if args.progress is not None:
        changes["progress"] = args.progress
    changes.update(config_args.set_changes(args.set))
    if args.dataset_option:
        changes["dataset_options"] = {
            **changes.get("dataset_options", {}),
            **config_args.key_values(args.dataset_option, "--dataset-option"),
        }
    if args.model_option:
        changes["model_options"] = {
            **changes.get("model_options", {}),
            **config_args.key_values(args.model_option, "--model-option"),
        }
    return changes


def apply_changes(config: TrainConfig, changes: dict[str, Any]) -> TrainConfig:
    """``config`` with ``changes``; dataset_options and model_options are merged, not replaced;
    a ``recipe`` in ``changes`` is applied first (``cxrjax.train.recipes.resolve``: the
    experiment's config < the recipe < the other changes).

    Raises ValueError (``invalid training option: ...``) for a configuration TrainConfig refuses.
    """
    changes = dict(changes)
    for name in ("dataset_options", "model_options"):
        if name in changes:
            changes[name] = {**getattr(config, name), **changes[name]}
    try:
        return recipes.resolve(config, changes)
    except ValueError as err:
        raise ValueError(f"invalid training option: {err}") from err

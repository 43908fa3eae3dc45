"""The files of a run folder, and the rule for re-using one.

    <workdir>/config.json          TrainConfig.to_dict()
    <workdir>/metrics.jsonl        one JSON line per finished epoch
    <workdir>/results.json         written last: the run is finished when it exists
    <workdir>/checkpoints/<step>/  orbax (checkpointing.py)
    <workdir>/learning_curves.png, confusion_matrix.png, roc_curves.png
    <workdir>/tensorboard/         optional event files (config.tensorboard)
    <workdir>/tensorboard/hparams/ hyper-parameters + test metrics (written by experiments/grid.py)

Re-using a folder: the same configuration resumes (or, when results.json exists, returns
the finished results); a configuration that differs in any field that can change the
results is refused with the list of differences. ``experiments.grid`` keeps its runs to
the same contract: these names, :func:`check_or_write_config` and
:class:`ConfigMismatchError`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from cxrjax.reporting.jsonio import append_jsonl, json_ready, read_json, read_jsonl, write_json, write_jsonl
from cxrjax.train.config import TrainConfig, result_relevant_differences

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
NORMALIZATION_FILE = "normalization.json"  # normalization="dataset": the train split's mean/std
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
LEARNING_CURVES = "learning_curves.png"
CONFUSION_MATRIX = "confusion_matrix.png"
ROC_CURVES = "roc_curves.png"


class ConfigMismatchError(ValueError):
    """An existing run folder holds a different configuration."""


def has_progress(workdir: Path) -> bool:
    """Whether the folder holds anything trained: a complete checkpoint or results.json."""
    checkpoints = workdir / CHECKPOINT_DIR
    steps = checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())
    return steps or (workdir / RESULTS_FILE).exists()


def check_or_write_config(workdir: Path, config: TrainConfig | Mapping[str, Any]) -> bool:
    """Write config.json, or compare with the one there; return whether it existed.

    Raises ConfigMismatchError naming every result-relevant difference and the fixes,
    when the folder holds trained state (a run that failed before its first checkpoint
    has nothing to protect, and its folder is simply reused).

    ``config`` is a TrainConfig or its dict form (``experiments.grid`` passes the dict of
    whatever config its run function takes); it is compared as it would be written.
    """
    workdir = Path(workdir)
    values = json_ready(config.to_dict() if isinstance(config, TrainConfig) else dict(config))
    path = workdir / CONFIG_FILE
    existed = path.exists()
    if existed and has_progress(workdir):
        try:
            saved = read_json(path)
        except json.JSONDecodeError as err:
            raise ConfigMismatchError(f"{path} is not valid JSON ({err}); delete the folder or use another --workdir") from err
        diffs = result_relevant_differences(saved, values)
        if diffs:
            lines = "\n".join(f"  {name}: saved {old!r}, now {new!r}" for name, (old, new) in diffs.items())
            raise ConfigMismatchError(
                f"{workdir} already holds a run with a different configuration ({path}):\n{lines}\n"
                "Use another --workdir for this configuration, or delete the folder to start over."
            )
    write_json(path, values)  # refresh result-irrelevant fields (e.g. a moved data_dir)
    return existed


def write_history(workdir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl from a checkpoint's history (drops lines of epochs lost to a kill)."""
    write_jsonl(workdir / METRICS_FILE, history)


def append_history(workdir: Path, record: dict[str, Any]) -> None:
    append_jsonl(workdir / METRICS_FILE, record)


def read_history(workdir: str | Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records, one per finished epoch ([] when there is none yet).

    A last line that is not valid JSON is what a kill during :func:`append_history`
    leaves; it is dropped (the engine rewrites the file from the checkpoint on resume).
    """
    return read_jsonl(Path(workdir) / METRICS_FILE, allow_torn_tail=True)

"""The files of a run folder, and the rule for re-using one.

    <workdir>/config.json          TrainConfig.to_dict()
    <workdir>/metrics.jsonl        one JSON line per finished epoch
    <workdir>/results.json         written last: the run is finished when it exists
    <workdir>/checkpoints/<step>/  orbax (checkpointing.py)
    <workdir>/learning_curves.png, confusion_matrix.png, roc_curves.png
    <workdir>/tensorboard/         optional event files

Re-using a folder: the same configuration resumes (or, when results.json exists, returns
the finished results); a configuration that differs in any field that can change the
results is refused with the list of differences. ``experiments.grid`` keeps its runs to
the same contract: these names, :func:`check_or_write_config` and
:class:`ConfigMismatchError`.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

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


def json_ready(value: Any) -> Any:
    """Replace NaN/inf by None and numpy scalars by Python ones, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, value: Any) -> None:
    """Write atomically (tmp file + rename), so a kill never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(json_ready(value), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


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
    path = workdir / METRICS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(json_ready(h)) + "\n" for h in history))
    os.replace(tmp, path)


def append_history(workdir: Path, record: dict[str, Any]) -> None:
    with open(workdir / METRICS_FILE, "a") as f:
        f.write(json.dumps(json_ready(record)) + "\n")


def read_history(workdir: str | Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records, one per finished epoch ([] when there is none yet).

    A last line that is not valid JSON is what a kill during :func:`append_history`
    leaves; it is dropped (the engine rewrites the file from the checkpoint on resume).
    An invalid line before the last means the file was damaged otherwise: ValueError.
    """
    path = Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}, line {i + 1}: not valid JSON ({err})") from err
    return records

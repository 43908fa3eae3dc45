"""Train a run once when another run's trajectory is a prefix of it.

Two runs whose configs differ only in *when they stop* and *which checkpoint they test*
(``early_stopping_patience``, ``restore_best``) train the same trajectory: the same
initial weights, batches, dropout masks and updates, epoch for epoch, until the one with
the smaller patience stops. So the run with early stopping (patience 3, say) is a
bit-identical prefix of its twin without (patience None): an ablation that has both
trains the first epochs twice. :func:`start_from_prefix` lets the twin start where the
finished prefix run stopped instead: its last end-of-epoch checkpoint (and its best one)
are written into the twin's empty workdir with the twin's own early-stopping state, and
the twin's ordinary resume (exact, including the data iterator) trains the remaining
epochs. The result equals training the twin from scratch (tests/train/test_continuation.py).

:func:`prefix_of` pairs the runs of a grid: within the runs that agree in every other
result-relevant field (the seed included), ordered by patience (None last), each run
continues the one before it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

from cxrjax.train import workdir as files
from cxrjax.train.checkpointing import CheckpointStore
from cxrjax.train.config import RESULT_IRRELEVANT_FIELDS, TrainConfig, result_relevant_differences

# What may differ between a prefix run and its continuation: when training stops and
# which checkpoint is tested, neither of which changes the trajectory before the stop.
STOPPING_FIELDS = frozenset({"early_stopping_patience", "restore_best"})


@dataclasses.dataclass(frozen=True)
class Continued:
    """What :func:`start_from_prefix` did: the prefix's folder and the epochs taken from it."""

    prefix: str
    epochs: int
    step: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _patience_key(values: dict[str, Any]) -> float:
    patience = values.get("early_stopping_patience")
    return float("inf") if patience is None else float(patience)


def _trajectory_key(values: dict[str, Any]) -> str:
    """The config without the fields that cannot change the trajectory before a stop."""
    kept = {k: v for k, v in values.items() if k not in STOPPING_FIELDS and k not in RESULT_IRRELEVANT_FIELDS}
    return json.dumps(kept, sort_keys=True, default=str)


def prefix_of(configs: Sequence[Any]) -> list[int | None]:
    """For each config, the index of the config whose run it can continue (None: none).

    Only TrainConfigs take part. Runs with equal trajectories are ordered by patience
    (None, never stopping, last; ties keep their order) and each continues the previous
    one, so a grid with patience 3 and None trains the None run's first epochs once.
    """
    groups: dict[str, list[int]] = {}
    for i, config in enumerate(configs):
        if isinstance(config, TrainConfig):
            groups.setdefault(_trajectory_key(config.to_dict()), []).append(i)
    out: list[int | None] = [None] * len(configs)
    for members in groups.values():
        ordered = sorted(members, key=lambda i: _patience_key(configs[i].to_dict()))
        for before, after in zip(ordered, ordered[1:]):
            if _patience_key(configs[before].to_dict()) < _patience_key(configs[after].to_dict()):
                out[after] = before
    return out


def start_from_prefix(config: TrainConfig, workdir: str | Path, prefix_workdir: str | Path) -> Continued | None:
    """Seed the empty run folder ``workdir`` (for ``config``) from the finished run in
    ``prefix_workdir``, whose trajectory ``config`` continues; return what was taken, or
    None when nothing was done (the run then simply trains from the start):

    - ``workdir`` already holds progress (it resumes from its own checkpoints), or its
      folder is locked by another run;
    - the prefix is not finished, has no checkpoint, or its config differs from
      ``config`` in a field other than :data:`STOPPING_FIELDS`;
    - ``config`` would itself have stopped by the prefix's last epoch (its patience is
      not larger than the prefix's wait).

    The prefix is only read. The two checkpoints written (the prefix's best epoch, if it
    is not its last, then its last epoch) carry ``config``'s early-stopping state: not
    stopped, ``config``'s patience.
    """
    workdir, prefix_workdir = Path(workdir), Path(prefix_workdir)
    if files.has_progress(workdir) or not (prefix_workdir / files.RESULTS_FILE).exists():
        return None
    try:
        prefix_config = files.read_json(prefix_workdir / files.CONFIG_FILE)
    except (OSError, ValueError):
        return None
    own = json.loads(json.dumps(files.json_ready(config.to_dict())))
    if set(result_relevant_differences(prefix_config, own)) - STOPPING_FIELDS:
        return None
    if _patience_key(prefix_config) >= _patience_key(own):
        return None
    try:
        source = CheckpointStore(prefix_workdir / files.CHECKPOINT_DIR, read_only=True, async_save=False)
    except FileNotFoundError:
        return None
    try:
        latest, best = source.latest_step(), source.best_step()
        if latest is None:
            return None
        steps = [best, latest] if best is not None and best < latest else [latest]
        restored = [source.restore(step) for step in steps]
    finally:
        source.close()
    last_meta = restored[-1][1]
    stopper = last_meta.get("early_stopping") or {}
    wait = int((stopper.get("tracker") or {}).get("wait") or 0)
    if config.early_stopping_patience is not None and wait >= config.early_stopping_patience:
        return None
    if last_meta.get("batch_in_epoch") or last_meta.get("iterator_state") is not None:
        return None  # not at an epoch's end (a finished run's last checkpoint always is)
    spe = int(last_meta["steps_per_epoch"])
    files.prepare_workdir(workdir)
    try:
        with files.WorkdirLock(workdir):
            if files.has_progress(workdir):
                return None
            files.check_or_write_config(workdir, config)
            with CheckpointStore(workdir / files.CHECKPOINT_DIR, async_save=False) as store:
                for step, (tree, meta) in zip(steps, restored):
                    meta = dict(meta)
                    meta["stopped_early"] = False
                    if meta.get("early_stopping") is not None:
                        meta["early_stopping"] = {**meta["early_stopping"], "patience": config.early_stopping_patience}
                    epoch = step // spe
                    improved = best is not None and step == best
                    store.save(step, tree, meta, epoch if improved else -1)
            files.write_history(workdir, list(last_meta.get("history") or []))
    except files.WorkdirLockedError:
        return None
    return Continued(prefix=str(prefix_workdir), epochs=int(last_meta.get("epoch") or latest // spe), step=int(latest))

"""orbax checkpoints of a run: ``<workdir>/checkpoints/<step>/{state,meta}``.

One ``ocp.CheckpointManager`` with two items per step: ``state`` (the TrainState as a
nested dict of arrays) and ``meta`` (JSON: epoch, position in the epoch, the grain
iterator state, early-stopping / plateau trackers, history, class names...), so a
resumed run continues at the exact next example.

Retention (orbax 0.12 preservation policies): ``LatestN(1)`` OR ``BestN(n=1)`` on the
metric ``best_rank``. The training loop gives every end-of-epoch checkpoint
``best_rank = epoch`` when the epoch improved on the best so far (as decided by
early_stopping.ImprovementTracker, min_delta and ties included) and ``-1`` otherwise, so
BestN keeps exactly the tracker's best epoch and LatestN keeps the newest checkpoint,
which the best-N policy alone would delete. Mid-epoch checkpoints carry no metrics and
are dropped as soon as a newer one exists (``keep_checkpoints_without_metrics=False``).

Saves are asynchronous (the step loop continues while orbax writes) and :meth:`close`
waits for them; the loop closes the store in a ``finally``. A save killed half-way
leaves a ``<step>.orbax-checkpoint-tmp-*`` directory, which orbax never lists as a
step; ``cleanup_tmp_directories`` deletes such leftovers when the store is opened.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

BEST_RANK = "best_rank"

# orbax warnings that are expected here: mid-epoch checkpoints deliberately carry no
# metrics, and a read-only manager (load_run) reports that it will not save.
_EXPECTED_WARNINGS = (
    "Requested `tracked_metric`; did not provide metrics",
    "CheckpointManagerOptions.read_only=True",
    "Given directory is read only",
)


class _DropExpectedWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in _EXPECTED_WARNINGS)


_FILTER = _DropExpectedWarnings()


def _best_rank(metrics: dict[str, Any]) -> float:
    return float(metrics[BEST_RANK])


class CheckpointStore:
    def __init__(self, directory: str | Path, *, read_only: bool = False, async_save: bool = True):
        absl_logger = logging.getLogger("absl")
        if _FILTER not in absl_logger.filters:
            absl_logger.addFilter(_FILTER)
        self.directory = Path(directory).absolute()
        policies = ocp.checkpoint_managers
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(
                [
                    policies.LatestN(n=1),
                    policies.BestN(get_metric_fn=_best_rank, n=1, keep_checkpoints_without_metrics=False),
                ]
            ),
            best_fn=_best_rank,
            best_mode="max",
            cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=async_save,
            read_only=read_only,
            create=not read_only,
        )
        if read_only and not self.directory.is_dir():
            raise FileNotFoundError(
                f"no checkpoints directory {self.directory}: is this a cxrjax run folder "
                "(written by python -m cxrjax.train --workdir ...)?"
            )
        self._manager = ocp.CheckpointManager(self.directory, item_names=("state", "meta"), options=options)

    # --- queries -----------------------------------------------------------------------
    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The step of the best end-of-epoch checkpoint (None if no epoch finished)."""
        return self._manager.best_step()

    # --- save / restore ----------------------------------------------------------------
    def save(self, step: int, state_tree: Any, meta: dict[str, Any], best_rank: int | None = None) -> None:
        """Start an asynchronous save; ``best_rank`` None marks a mid-epoch checkpoint."""
        metrics = None if best_rank is None else {BEST_RANK: best_rank}
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state_tree), meta=ocp.args.JsonSave(meta)),
            metrics=metrics,
            force=True,
        )

    def restore(self, step: int, state_target: Any | None = None) -> tuple[Any, dict[str, Any]]:
        """(state tree, meta) of ``step``; ``state_target`` (a tree like the saved one) fixes
        structure and dtypes, None restores the tree as saved (numpy arrays)."""
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(state_target), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], dict(restored["meta"])

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "CheckpointStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

r"""orbax checkpoints of a run: ``<workdir>/checkpoints/<step>/{state,meta}``.

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
waits for them; the loop closes the store in a ``finally``. The training loop also
:meth:`wait`\ s before each epoch's validation, so a save that failed (disk full,
read-only or vanished storage) is reported within the next epoch as a
:class:`CheckpointSaveError` naming the step, not as orbax's raw error at some later
save. Only storage failures become that error (a ``WorkdirStorageError``: the CLI prints
one ``error:`` line); anything else is re-raised as it came. A save killed half-way
leaves a ``<step>.orbax-checkpoint-tmp-*`` directory, which orbax never lists as a
step; ``cleanup_tmp_directories`` deletes such leftovers when the store is opened.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from cxrjax.train.timings import PhaseTimings
from cxrjax.train.workdir import STORAGE_ERRNOS, WorkdirStorageError

BEST_RANK = "best_rank"


class CheckpointSaveError(WorkdirStorageError):
    """Writing checkpoint ``step`` failed because of the storage (see :func:`storage_errno`)."""

    def __init__(self, message: str, errno_: int | None, step: int | None):
        super().__init__(message, errno_)
        self.step = step


# How tensorstore / orbax spell the storage failures of STORAGE_ERRNOS in their errors
# (they arrive as ValueError / RuntimeError with the OS error inside the text).
_STORAGE_TEXT = (
    (errno.ENOSPC, ("No space left on device", "RESOURCE_EXHAUSTED", "os_error_code='28'")),
    (errno.EDQUOT, ("Disk quota exceeded", "os_error_code='122'")),
    (errno.EROFS, ("Read-only file system", "os_error_code='30'")),
    (errno.EACCES, ("Permission denied", "PERMISSION_DENIED", "os_error_code='13'")),
    (errno.EPERM, ("Operation not permitted", "os_error_code='1'")),
)


def storage_errno(err: BaseException) -> int | None:
    """The OS error number when ``err`` (or an error it was raised from) is a storage
    failure of :data:`cxrjax.train.workdir.STORAGE_ERRNOS`, else None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
            return err.errno
        text = str(err)
        for number, needles in _STORAGE_TEXT:
            if any(needle in text for needle in needles):
                return number
        err = err.__cause__ or err.__context__
    return None


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
    def __init__(
        self,
        directory: str | Path,
        *,
        read_only: bool = False,
        async_save: bool = True,
        timings: PhaseTimings | None = None,
    ):
        """``timings``: the seconds callers spend blocked in save / restore / wait / close
        are added to its ``"checkpoints"`` phase (the trainer's results.json timings)."""
        self._timings = timings
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
        self._pending: int | None = None  # the step of the save in flight
        self._failed = False  # a save error was reported: close() must not raise it again

    # --- queries -----------------------------------------------------------------------
    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The step of the best end-of-epoch checkpoint (None if no epoch finished)."""
        return self._manager.best_step()

    # --- save / restore ----------------------------------------------------------------
    def _timed(self) -> contextlib.AbstractContextManager:
        return self._timings.phase("checkpoints") if self._timings is not None else contextlib.nullcontext()

    def save(self, step: int, state_tree: Any, meta: dict[str, Any], best_rank: int | None = None) -> None:
        """Start an asynchronous save; ``best_rank`` None marks a mid-epoch checkpoint.

        The previous save is waited for first (orbax would, too), so its failure is
        reported as that step's :class:`CheckpointSaveError`.
        """
        with self._timed():
            self._save(step, state_tree, meta, best_rank)

    def _save(self, step: int, state_tree: Any, meta: dict[str, Any], best_rank: int | None) -> None:
        self._wait()
        metrics = None if best_rank is None else {BEST_RANK: best_rank}
        self._pending = step
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state_tree), meta=ocp.args.JsonSave(meta)),
                metrics=metrics,
                force=True,
            )
        except Exception as err:
            raise self._save_error(err) from err

    def restore(self, step: int, state_target: Any | None = None) -> tuple[Any, dict[str, Any]]:
        """(state tree, meta) of ``step``; ``state_target`` (a tree like the saved one) fixes
        structure and dtypes, None restores the tree as saved (numpy arrays)."""
        with self._timed():
            return self._restore(step, state_target)

    def _restore(self, step: int, state_target: Any | None) -> tuple[Any, dict[str, Any]]:
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(state_target), meta=ocp.args.JsonRestore()),
        )
        return restored["state"], dict(restored["meta"])

    def wait(self) -> None:
        """Wait for the save in flight; raise :class:`CheckpointSaveError` if it failed."""
        with self._timed():
            self._wait()

    def _wait(self) -> None:
        try:
            self._manager.wait_until_finished()
        except Exception as err:
            raise self._save_error(err) from err
        self._pending = None

    def _save_error(self, err: Exception) -> Exception:
        """``err`` of the save of ``self._pending`` as a CheckpointSaveError, when the
        storage caused it; otherwise ``err`` itself."""
        step, self._pending = self._pending, None
        number = storage_errno(err)
        if number is None:
            return err
        self._failed = True
        try:  # on disk: orbax already dropped the steps this save was to replace from its own list
            complete = [int(p.name) for p in self.directory.iterdir() if p.name.isdigit() and int(p.name) != step]
        except OSError:
            complete = []
        newest = (
            f"the newest complete checkpoint is step {max(complete)}" if complete else "no complete checkpoint exists"
        )
        cause = re.sub(r"\s+", " ", str(err)).strip()
        return CheckpointSaveError(
            f"saving checkpoint step {step} to {self.directory} failed: {STORAGE_ERRNOS[number]} "
            f"[{errno.errorcode.get(number, number)}]; {newest}. Free some space (or fix the permissions) and "
            f"re-run the same command to resume from it, or use another --workdir. (orbax: {cause[:400]})",
            number,
            step,
        )

    def close(self) -> None:
        """Wait for pending saves and release the manager (a save failure already
        reported by :meth:`save` / :meth:`wait` is not raised again)."""
        with self._timed():
            self._close()

    def _close(self) -> None:
        try:
            if self._failed:
                try:
                    self._manager.wait_until_finished()
                except Exception:  # noqa: BLE001 - already reported
                    pass
            else:
                self._wait()
        finally:
            self._manager.close()

    def __enter__(self) -> "CheckpointStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

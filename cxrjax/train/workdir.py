"""The files of a run folder, and the rule for re-using one.

    <workdir>/train.lock           held (fcntl.flock) by the one training process using the folder
    <workdir>/config.json          TrainConfig.to_dict()
    <workdir>/metrics.jsonl        one JSON line per finished epoch
    <workdir>/results.json         written last: the run is finished when it exists
    <workdir>/checkpoints/<step>/  orbax (checkpointing.py)
    <workdir>/calibration.json     temperature + operating thresholds, fitted on validation after training
    <workdir>/learning_curves.png, confusion_matrix.png, roc_curves.png, reliability_<split>.png
    <workdir>/tensorboard/         optional event files (config.tensorboard)
    <workdir>/tensorboard/hparams/ hyper-parameters + test metrics (written by experiments/grid.py)

Re-using a folder: the same configuration resumes (or, when results.json exists, returns
the finished results); a configuration that differs in any field that can change the
results is refused with the list of differences. ``experiments.grid`` keeps its runs to
the same contract: these names, :func:`check_or_write_config` and
:class:`ConfigMismatchError`.

One writer at a time: training holds an exclusive ``fcntl.flock`` on ``train.lock`` for the
whole run (:class:`WorkdirLock`), taken before config.json is compared or written, so a
second training started on the same folder is refused (:class:`WorkdirLockedError`,
naming the holder's pid, host and start time, which the holder writes into the file)
instead of mixing two runs' files. The operating system releases the lock when the
holder's process ends, however it ends (kill -9 included), so a lock is never stale; the
file itself stays (deleting it while a run holds it would let a second run in). Readers
(evaluate, predict, explain) take no lock; :func:`lock_holder` tells them whether a
training is live. A finished run is only read, so re-running it needs no lock and
works on read-only storage.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from cxrjax.reporting.jsonio import append_jsonl, json_ready, read_json, read_jsonl, write_json, write_jsonl
from cxrjax.train.config import TrainConfig, result_relevant_differences

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
NORMALIZATION_FILE = "normalization.json"  # normalization="dataset": the train split's mean/std
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = "train.lock"
TENSORBOARD_DIR = "tensorboard"
LEARNING_CURVES = "learning_curves.png"
CONFUSION_MATRIX = "confusion_matrix.png"
ROC_CURVES = "roc_curves.png"
CALIBRATION_FILE = "calibration.json"  # temperature and operating thresholds, fitted on validation
RELIABILITY_PLOT = "reliability_{split}.png"  # .format(split=...)


class ConfigMismatchError(ValueError):
    """An existing run folder holds a different configuration."""


class WorkdirError(RuntimeError):
    """A run folder that cannot be used as asked: in use by another training, not a
    folder, not writable, disk full. The message says what happened and what to do; the
    command line prints it as one ``error:`` line (exit status 2)."""


class WorkdirLockedError(WorkdirError):
    """Another live process is training in this run folder (``holder``: its pid, host,
    start time and command, as it wrote them into the lock file; {} if unreadable)."""

    def __init__(self, message: str, holder: dict[str, Any]):
        super().__init__(message)
        self.holder = holder


class WorkdirStorageError(WorkdirError):
    """Writing a run's files failed for a reason of the storage (no space, read-only,
    permission denied); ``errno`` is the OS error number when known."""

    def __init__(self, message: str, errno_: int | None = None):
        super().__init__(message)
        self.errno = errno_


# OS errors that say "this storage cannot take the run's files", not "cxrjax has a bug".
STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted (read-only or immutable folder?)",
}


def storage_error(err: BaseException, workdir: Path, doing: str) -> WorkdirStorageError | None:
    """A :class:`WorkdirStorageError` for ``err`` when it is a storage failure (an
    ``OSError`` with an errno of :data:`STORAGE_ERRNOS`), else None (a real bug: re-raise it).

    ``doing`` says what failed in the run folder ("create its lock file"); an error
    about a file outside the folder (the data or the compilation cache) names that file.
    """
    if not isinstance(err, OSError) or err.errno not in STORAGE_ERRNOS:
        return None
    reason = f"{STORAGE_ERRNOS[err.errno]} [{errno.errorcode.get(err.errno, err.errno)}]"
    filename = None if err.filename is None else Path(os.fsdecode(err.filename))
    if filename is not None and not _inside(filename, workdir):
        return WorkdirStorageError(
            f"cannot use {filename}: {reason} (training in {workdir}); fix that "
            "location's space or permissions and re-run the same command",
            err.errno,
        )
    where = f" ({filename})" if filename is not None else ""
    return WorkdirStorageError(
        f"{workdir}: cannot {doing}: {reason}{where}. Training needs a writable run folder with free space: "
        "free some space or fix the permissions and re-run the same command (it resumes from the last "
        "complete checkpoint), or use another --workdir.",
        err.errno,
    )


def _inside(path: Path, folder: Path) -> bool:
    path, folder = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    return path == folder or folder in path.parents


def prepare_workdir(workdir: Path) -> None:
    """Create the run folder (and its parents); clear errors when it cannot be one."""
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"--workdir {workdir} is a file, not a folder: give a folder (it is created if missing)")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except FileExistsError as err:  # a parent is a file
        raise WorkdirError(f"cannot create the run folder {workdir}: {err.filename} is a file, not a folder") from err
    except NotADirectoryError as err:
        raise WorkdirError(f"cannot create the run folder {workdir}: a parent of it is a file, not a folder") from err
    except OSError as err:
        storage = storage_error(err, workdir, "create the run folder")
        if storage is None:
            raise
        raise storage from err


# ---------------------------------------------------------------------------- the lock
def _holder_text(holder: dict[str, Any]) -> str:
    if not holder:
        return "a process that has not written its details yet"
    return f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}" + (
        f": {holder['command']}" if holder.get("command") else ""
    )


def _parse_holder(raw: bytes) -> dict[str, Any]:
    try:
        holder = json.loads(raw.decode("utf-8", "replace"))
    except json.JSONDecodeError:
        return {}
    return holder if isinstance(holder, dict) else {}


class WorkdirLock:
    """The exclusive lock of one run folder: ``fcntl.flock`` on ``<workdir>/train.lock``.

    :meth:`acquire` never waits: when another open file holds the lock (another process,
    or another ``train_and_evaluate`` in this one) it raises :class:`WorkdirLockedError`
    naming the holder. The holder writes ``{"pid", "host", "started", "command"}`` into
    the file after locking it and empties it on :meth:`release`; the OS drops the lock
    itself when the process ends, so a killed holder never blocks the next run (its note
    is simply overwritten). The descriptor is close-on-exec, so programs the run starts
    do not inherit the lock. Advisory: only cxrjax training takes it.
    """

    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "WorkdirLock":
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this WorkdirLock")
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as err:
                storage = storage_error(err, self.workdir, "create its lock file")
                if storage is None:
                    raise
                raise storage from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._read_holder(fd)
                os.close(fd)
                raise WorkdirLockedError(
                    f"{self.workdir} is in use: another training holds its lock ({_holder_text(holder)}; "
                    f"lock file {self.path}). Two trainings in one folder would mix their checkpoints, "
                    "metrics and results. Wait for it to finish (or stop it), or use another --workdir; "
                    "the lock is released automatically when that process ends.",
                    holder,
                ) from None
            except OSError as err:
                os.close(fd)
                raise WorkdirError(
                    f"cannot lock {self.path} ({err.strerror}): this file system may not "
                    "support file locks (fcntl.flock); use a local folder as --workdir"
                ) from err
            # Locked. If the file was deleted (or replaced) between open and flock, the lock
            # is on an orphan inode that a newcomer would not see: start again on the new file.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": _command_line(),
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        except OSError as err:
            self.release()
            storage = storage_error(err, self.workdir, "write its lock file")
            if storage is None:
                raise
            raise storage from err
        return self

    @staticmethod
    def _read_holder(fd: int) -> dict[str, Any]:
        """The holder's note; it writes it right after locking, so wait a moment for it."""
        deadline = time.monotonic() + 2.0
        while True:
            holder = _parse_holder(os.pread(fd, 65536, 0))
            if holder or time.monotonic() > deadline:
                return holder
            time.sleep(0.05)

    def release(self) -> None:
        """Empty the note and unlock (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass  # a read-only or full disk cannot stop the unlock
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _command_line() -> str:
    return " ".join(sys.argv)[:500]


def lock_holder(workdir: str | Path) -> dict[str, Any] | None:
    """The training that holds ``workdir``'s lock now, as its note says, or None.

    For readers (evaluate / predict / explain), without touching the lock itself (a probe
    with ``flock`` could make a training starting at that instant refuse the folder): the
    note is emptied on release, and a note left by a killed process on this host is
    recognised by its pid no longer running. A note from another host is believed.
    """
    try:
        holder = _parse_holder(Path(workdir, LOCK_FILE).read_bytes())
    except OSError:
        return None
    if not holder:
        return None
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder.get("pid")), 0)
        except (ProcessLookupError, TypeError, ValueError):
            return None
        except PermissionError:
            pass  # alive, another user's
    return holder


def has_progress(workdir: Path) -> bool:
    """Whether the folder holds anything trained: a complete checkpoint or results.json."""
    checkpoints = workdir / CHECKPOINT_DIR
    steps = checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())
    return steps or (workdir / RESULTS_FILE).exists()


def _pretrained_note(saved: str | None, current: str | None) -> str:
    """Why two ``pretrained`` paths count as different weights (config.same_pretrained)."""
    missing = [p for p in (saved, current) if p is not None and not Path(p).expanduser().exists()]
    why = f"{', '.join(map(repr, missing))} not found" if missing else "they hold different weights"
    return f"  (pretrained compares by the weights it names, the same file or equal sha256: {why})"


def check_or_write_config(workdir: Path, config: TrainConfig | Mapping[str, Any]) -> bool:
    """Write config.json, or compare with the one there; return whether it existed.

    Raises ConfigMismatchError naming every result-relevant difference and the fixes,
    when the folder holds trained state (a run that failed before its first checkpoint
    has nothing to protect, and its folder is simply reused).

    ``config`` is a TrainConfig or its dict form (``experiments.grid`` passes the dict of
    whatever config its run function takes); it is compared as it would be written.
    The file is rewritten only when it differs (a result-irrelevant field such as a
    moved data_dir), and never for a finished run (results.json exists): re-running a
    finished run only reads its folder, so it works on read-only storage. Training calls
    this with the folder's :class:`WorkdirLock` held.
    """
    workdir = Path(workdir)
    values = json_ready(config.to_dict() if isinstance(config, TrainConfig) else dict(config))
    path = workdir / CONFIG_FILE
    existed = path.exists()
    current = json.loads(json.dumps(values))  # as it reads back from the file
    saved = None
    if existed:
        try:
            saved = read_json(path)
        except json.JSONDecodeError as err:
            if has_progress(workdir):
                raise ConfigMismatchError(
                    f"{path} is not valid JSON ({err}); delete the folder or use another --workdir"
                ) from err
    if saved is not None and has_progress(workdir):
        diffs = result_relevant_differences(saved, current)
        if diffs:
            lines = "\n".join(f"  {name}: saved {old!r}, now {new!r}" for name, (old, new) in diffs.items())
            if "pretrained" in diffs:
                lines += "\n" + _pretrained_note(*diffs["pretrained"])
            raise ConfigMismatchError(
                f"{workdir} already holds a run with a different configuration ({path}):\n{lines}\n"
                "Use another --workdir for this configuration, or delete the folder to start over."
            )
    if saved != current and not (workdir / RESULTS_FILE).exists():
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

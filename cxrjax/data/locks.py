"""One preparation at a time per prepared folder, and no leftovers of interrupted ones.

Why: TFDS writes a dataset into `<config>/incomplete.XXXXXX_<version>/` and renames it
to `<config>/<version>/` at the end. Two processes preparing the same dataset at once
(two terminals, every host of a multi-host run calling `data.load`) both write, and the
second rename fails with FileExistsError although the data is then ready. A
preparation killed before TFDS's own cleanup runs (SIGKILL, OOM, power loss) leaves its
`incomplete.*` folder, with whole splits in it, for ever.

So preparation holds an exclusive `fcntl.flock` on `<config>/.prepare.lock`: a second
preparer waits (saying so on stderr), then finds the data prepared and opens it. The
OS releases a lock when its process dies, however it dies, so a lock never outlives
its holder. Only the holder removes `incomplete.*` folders, so never a live
preparer's. (flock works between processes of one machine; on network file systems
that ignore it, prepare on one machine first.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from tensorflow_datasets.core.constants import INCOMPLETE_PREFIX  # "incomplete."

LOCK_FILE = ".prepare.lock"


@contextlib.contextmanager
def preparation_lock(folder: str | os.PathLike, what: str, *, wait: bool = True) -> Iterator[bool]:
    """Holds the preparation lock of `folder` (created if missing) while in the block.

    Yields True once held. wait=False never blocks: it yields False if another process
    holds the lock or the lock file cannot be made (a read-only data dir); wait=True
    blocks until the holder is done, with a line on stderr naming it.
    """
    folder = Path(folder)
    path = folder / LOCK_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = path.open("a+")  # closed (so unlocked) by the `with handle` below
    except OSError:
        if wait:
            raise
        yield False
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            handle.seek(0)
            holder = handle.read().strip()
            print(
                f"cxrjax: {what} is being prepared by another process"
                f"{f' (pid {holder})' if holder else ''}; waiting for it to finish "
                f"(lock {path}) ...",
                file=sys.stderr,
                flush=True,
            )
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.truncate(0)
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield True
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_incomplete(folder: str | os.PathLike) -> list[str]:
    """Removes the `incomplete.*` folders in `folder` (names returned). Call it only
    while holding `preparation_lock(folder)`: then none belongs to a live preparer."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith(INCOMPLETE_PREFIX) and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
    if removed:
        print(
            f"cxrjax: removed {len(removed)} folder(s) left in {folder} by an interrupted "
            f"preparation: {', '.join(removed)}",
            file=sys.stderr,
            flush=True,
        )
    return removed

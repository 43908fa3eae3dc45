"""Only regular files are read: a FIFO or a link to /dev/zero named like an image is
skipped and reported, never opened; Ctrl-C stops preparation promptly."""

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from cxrjax.data.builders.folder import ordered_map
from tests.data import fixtures as fx

REPO = Path(__file__).resolve().parents[2]


def _run(script: str, *args, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


_SPECIAL_FILES_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    # At most 4 GiB of heap: reading /dev/zero fails here, not in a shared machine's
    # OOM killer.
    resource.setrlimit(resource.RLIMIT_DATA, (4 << 30, 4 << 30))
    from cxrjax import data
    report = data.prepare("image_folder", data_dir=sys.argv[1], manual_dir=sys.argv[2],
                          options={"image_size": 16})
    print(json.dumps(report))
""")


def test_special_files_are_skipped_never_read(tmp_path):
    root = fx.make_class_folders(tmp_path / "tree", per_class=10)
    os.mkfifo(root / "cat_a" / "x.png")  # open() would wait for a writer for ever
    (root / "cat_b" / "zero.png").symlink_to("/dev/zero")  # read() would never end
    (root / "cat_c" / "gone.png").symlink_to(root / "nowhere.png")
    result = _run(_SPECIAL_FILES_SCRIPT, tmp_path / "p", root, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    skipped = {e["file"]: e["reason"] for e in report["skipped"]}
    assert "not a regular file (FIFO)" in skipped["cat_a/x.png"]
    assert "not a regular file (character device" in skipped["cat_b/zero.png"]
    assert "broken symlink" in skipped["cat_c/gone.png"]
    assert sum(sum(c.values()) for c in report["splits"].values()) == 30


def test_read_regular_file_refuses_special_files_without_blocking(tmp_path):
    from cxrjax.data.decode import DecodeError, read_grayscale, read_regular_file

    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    outcome = {}

    def attempt():
        try:
            read_regular_file(fifo)
        except OSError as error:
            outcome["error"] = str(error)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():  # unblock the reader so the test process can end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO blocked")
    assert "not a regular file (FIFO)" in outcome["error"]
    with pytest.raises(DecodeError, match="character device"):
        read_grayscale("/dev/zero")


def test_an_interrupt_cancels_the_queued_reads():
    """KeyboardInterrupt (Ctrl-C) stops ordered_map after the calls already running, not
    after the whole window of queued ones."""
    started = []
    lock = threading.Lock()

    def work(i):
        with lock:
            started.append(i)
        if i == 2:
            raise KeyboardInterrupt
        time.sleep(0.02)
        return i

    with pytest.raises(KeyboardInterrupt):
        for _ in ordered_map(work, range(500), workers=2, window=64):
            pass
    time.sleep(0.1)  # let the running calls finish
    assert len(started) <= 8, len(started)

    # The consumer stopping early (a generator closed) cancels the queue too.
    started.clear()
    iterator = ordered_map(lambda i: (started.append(i), time.sleep(0.02))[1], range(500), workers=2, window=64)
    next(iterator)
    iterator.close()
    time.sleep(0.1)
    assert len(started) <= 8, len(started)

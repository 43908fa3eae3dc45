"""Concurrent preparations of one dataset wait for each other and open the same files;
a killed one leaves neither its lock nor its incomplete.* folder behind."""

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from cxrjax import data
from tests.data import fixtures as fx

REPO = Path(__file__).resolve().parents[2]
OPTIONS = {"image_size": 16}


def _incomplete(data_dir: Path) -> list[Path]:
    return sorted(data_dir.glob("*/*/incomplete.*"))


_SLOW_PREPARE_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from cxrjax import data
    from cxrjax.data.builders import folder

    data_dir, manual_dir, marker, role = sys.argv[1:5]
    marker = Path(marker)
    original = folder.FolderBuilder._generate_examples

    def slow(self, items):
        # Preparing (the first split): say so, then wait (bounded) until the other
        # process has started its own preparation, so both would write at once without
        # a lock.
        if (marker / f"{role}.preparing").exists():
            yield from original(self, items)
            return
        (marker / f"{role}.preparing").touch()
        other = "b" if role == "a" else "a"
        deadline = time.monotonic() + 20
        while not (marker / f"{other}.started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(3)
        if role == "hang":
            time.sleep(600)
        yield from original(self, items)

    folder.FolderBuilder._generate_examples = slow
    (marker / f"{role}.started").touch()
    ds = data.load("image_folder", data_dir=data_dir, manual_dir=manual_dir,
                   options={"image_size": 16})
    print(json.dumps({s: len(v) for s, v in ds.splits.items()}))
""")


def test_concurrent_preparations_wait_for_each_other(tmp_path):
    root = fx.make_class_folders(tmp_path / "tree", per_class=10)
    marker = tmp_path / "markers"
    marker.mkdir()
    command = [sys.executable, "-c", _SLOW_PREPARE_SCRIPT, str(tmp_path / "p"), str(root), str(marker)]
    first = subprocess.Popen([*command, "a"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (marker / "a.preparing").exists():
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the first preparation never started"
            time.sleep(0.1)
        second = subprocess.Popen([*command, "b"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out_b, err_b = second.communicate(timeout=240)
        out_a, err_a = first.communicate(timeout=240)
    finally:
        for process in (first, locals().get("second")):
            if process is not None and process.poll() is None:
                process.kill()
    assert first.returncode == 0, err_a[-3000:]
    assert second.returncode == 0, err_b[-3000:]
    sizes = json.loads(out_a.strip().splitlines()[-1])
    assert json.loads(out_b.strip().splitlines()[-1]) == sizes
    assert sum(sizes.values()) == 30
    assert "waiting" in err_b
    assert not (marker / "b.preparing").exists()  # the second opened the first's data
    assert not _incomplete(tmp_path / "p")


def test_killed_preparation_leaves_nothing_behind_the_next_one(tmp_path):
    root = fx.make_class_folders(tmp_path / "tree", per_class=10)
    marker = tmp_path / "markers"
    marker.mkdir()
    (marker / "a.started").touch()  # nobody to wait for
    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_PREPARE_SCRIPT, str(tmp_path / "p"), str(root), str(marker), "hang"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not (marker / "hang.preparing").exists():
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the preparation never started"
            time.sleep(0.1)
        assert _incomplete(tmp_path / "p")  # TFDS writes into incomplete.* first
    finally:
        process.send_signal(signal.SIGKILL)  # no cleanup runs; its lock dies with it
        process.communicate(timeout=60)
    assert _incomplete(tmp_path / "p")
    ds = data.load("image_folder", data_dir=tmp_path / "p", manual_dir=root, options=OPTIONS)
    assert sum(len(s) for s in ds.splits.values()) == 30
    assert not _incomplete(tmp_path / "p")

"""One writer per run folder, with real processes: a second training is refused naming the
holder, a kill -9'd holder leaves no stale lock, racing processes get exactly one winner,
and a reader of a live run survives the run's retention deleting the checkpoint it reads.

Every subprocess and every wait is bounded (timeouts), so a regression fails instead of
hanging. The trainer subprocess pauses in ``on_checkpoint`` (waiting for a file the test
writes), which puts it at a known point of a live run while it holds the lock.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cxrjax.train import workdir as files

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 240  # seconds, for any one subprocess

# A paused trainer: the train CLI's own argument parsing, then train_and_evaluate with a
# hook that announces each checkpoint (saved_<step>) and waits for go_<step> or go_all.
TRAINER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from cxrjax.train.cli import build_parser, config_from_args
    from cxrjax.train.trainer import train_and_evaluate

    signals, argv = Path(sys.argv[1]), sys.argv[2:]
    args = build_parser().parse_args(argv)
    config = config_from_args(args)

    def hook(step):
        (signals / f"saved_{step}").touch()
        deadline = time.monotonic() + 200
        while not ((signals / f"go_{step}").exists() or (signals / "go_all").exists()):
            if time.monotonic() > deadline:
                os._exit(3)
            time.sleep(0.05)

    train_and_evaluate(config, args.workdir, on_checkpoint=hook)
""")


def _wait_for(predicate, what, timeout=TIMEOUT, proc=None):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"trainer exited ({proc.returncode}) before {what}:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cli_args(tmp_path_factory):
    root = tmp_path_factory.mktemp("lock")

    def args(workdir, *extra):
        return [
            "--data-dir",
            str(root / "data"),
            "--dataset-option",
            "num_train=64",
            "--dataset-option",
            "num_validation=16",
            "--dataset-option",
            "num_test=16",
            "--dataset-option",
            "image_size=32",
            "--image-size",
            "32",
            "--batch-size",
            "4",
            "--model",
            "s4_exp8",
            "--model-option",
            "features=[4,4,8,8]",
            "--model-option",
            "head_width=16",
            "--epochs",
            "2",
            "--no-progress",
            "--compilation-cache",
            str(root / "jax_cache"),
            "--workdir",
            str(workdir),
            *extra,
        ]

    return args


def _start_trainer(signals: Path, argv: list[str]) -> subprocess.Popen:
    signals.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-c", TRAINER, str(signals), *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _cli(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cxrjax.train", *argv], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_second_training_is_refused_and_a_killed_holder_leaves_no_stale_lock(cli_args, tmp_path):
    workdir = tmp_path / "run"
    a = _start_trainer(tmp_path / "signals", cli_args(workdir))
    try:
        _wait_for(lambda: any((tmp_path / "signals").glob("saved_*")), "the first checkpoint", proc=a)
        before = {name: (workdir / name).read_bytes() for name in ("config.json", "metrics.jsonl")}
        # The same command again, and a different seed: both refused at once (before the
        # config check, so not a config mismatch), naming the live holder.
        for extra in ((), ("--seed", "1", "--epochs", "1")):
            b = _cli(cli_args(workdir, *extra))
            assert b.returncode == 2, (extra, b.stderr[-3000:])
            (line,) = _error_lines(b.stderr)
            assert f"pid {a.pid}" in line and "in use" in line and "Traceback" not in b.stderr, line
        assert {name: (workdir / name).read_bytes() for name in before} == before  # nothing of B's written
        assert not (workdir / "results.json").exists()
        holder = json.loads((workdir / files.LOCK_FILE).read_text())
        assert holder["pid"] == a.pid and holder["host"] and holder["started"]
        from cxrjax.inference import run_status

        status, note = run_status(workdir)
        assert status == "in_progress" and f"pid {a.pid}" in note
        # kill -9 while it holds the lock (paused in its checkpoint hook).
        os.kill(a.pid, signal.SIGKILL)
        a.wait(timeout=60)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait(timeout=60)
    assert json.loads((workdir / files.LOCK_FILE).read_text())["pid"] == a.pid  # its note is still there...
    assert run_status(workdir)[0] == "unfinished"  # ...but recognised as dead
    c = _cli(cli_args(workdir))  # ...and the lock was released by the OS: the run resumes and ends
    assert c.returncode == 0, c.stderr[-3000:]
    results = json.loads((workdir / files.RESULTS_FILE).read_text())
    assert results["epochs_run"] == 2
    assert json.loads((workdir / files.CONFIG_FILE).read_text())["seed"] == 0
    assert [r["epoch"] for r in files.read_history(workdir)] == [1, 2]  # one run's lines, in order
    assert (workdir / files.LOCK_FILE).read_text() == ""  # released cleanly this time
    assert run_status(workdir) == ("finished", None)


RACER = textwrap.dedent("""
    import json, os, sys, time
    from cxrjax.train.workdir import WorkdirLock, WorkdirLockedError
    start = float(sys.argv[2])
    while time.time() < start:
        time.sleep(0.001)
    try:
        lock = WorkdirLock(sys.argv[1]).acquire()
    except WorkdirLockedError as err:
        print(json.dumps({"pid": os.getpid(), "won": False, "holder": err.holder.get("pid"), "message": str(err)}))
    else:
        time.sleep(2.0)
        print(json.dumps({"pid": os.getpid(), "won": True}))
        lock.release()
""")


def test_racing_processes_get_exactly_one_lock(tmp_path):
    from cxrjax.train.workdir import WorkdirLock

    start = time.time() + 1.5  # all start their attempt at the same instant
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(tmp_path), str(start)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outcomes = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outcomes.append(json.loads(out))
    winners = [o for o in outcomes if o["won"]]
    assert len(winners) == 1, outcomes
    for loser in (o for o in outcomes if not o["won"]):
        assert loser["holder"] == winners[0]["pid"], loser  # the holder's note was read, not empty
    # The lock is free again (released, and every process has exited).
    WorkdirLock(tmp_path).acquire().release()


def test_lock_is_exclusive_within_a_process_and_killed_acquirers_leave_nothing(tmp_path):
    from cxrjax.train.workdir import WorkdirLock, WorkdirLockedError

    first = WorkdirLock(tmp_path).acquire()
    with pytest.raises(WorkdirLockedError, match=f"pid {os.getpid()}"):
        WorkdirLock(tmp_path).acquire()  # another open of the file: refused too
    first.release()
    # A process killed right after taking the lock, before writing its note (the window
    # of an acquisition): the lock is free and the next holder writes its own note.
    script = (
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        'fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b\'{"pid": 1, "hos\'); os.kill(os.getpid(), 9)'
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / files.LOCK_FILE)], timeout=60)
    assert done.returncode == -signal.SIGKILL
    with WorkdirLock(tmp_path):
        assert json.loads((tmp_path / files.LOCK_FILE).read_text())["pid"] == os.getpid()
    assert files.lock_holder(tmp_path) is None


def test_reader_survives_retention_deleting_the_checkpoint_it_reads(cli_args, tmp_path, monkeypatch):
    """load_run on a live run: the trainer's retention deletes the chosen step mid-read."""
    from cxrjax.inference import load_run
    from cxrjax.train.checkpointing import CheckpointStore

    workdir, signals = tmp_path / "run", tmp_path / "signals"
    # Mid-epoch checkpoints every step: each is deleted as soon as the next one is written.
    trainer = _start_trainer(signals, cli_args(workdir, "--checkpoint-every-steps", "1"))
    real_restore = CheckpointStore.restore
    deleted = []

    def restore_racing_retention(self, step, state_target=None):
        if not deleted:  # the first read: let the trainer write the next checkpoint, deleting this one
            deleted.append(step)
            (signals / f"go_{step}").touch()
            _wait_for(
                lambda: not (workdir / "checkpoints" / str(step)).exists(), f"retention to delete {step}", proc=trainer
            )
        return real_restore(self, step, state_target)

    try:
        _wait_for(lambda: (signals / "saved_1").exists(), "checkpoint 1", proc=trainer)
        monkeypatch.setattr(CheckpointStore, "restore", restore_racing_retention)
        run = load_run(workdir, "latest")
        assert deleted == [1] and run.step == 2  # read the newest checkpoint instead
        assert run.run_status == "in_progress" and f"pid {trainer.pid}" in run.run_status_note
    finally:
        trainer.kill()
        trainer.wait(timeout=60)

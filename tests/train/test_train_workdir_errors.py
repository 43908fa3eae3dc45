"""User errors of the run folder end in one ``error:`` line (exit status 2), not a
traceback: a workdir that is a file, read-only storage, a full disk (at the checkpoint
save that failed, not epochs later); a finished run on read-only storage is returned.

A full disk is an ``OSError(ENOSPC)`` raised inside orbax's asynchronous array writer
(or by the metrics writer); read-only storage is ``chattr -R +i`` (the tests run as root,
which ignores ``chmod``; the immutable flag stops root too; without root, chmod).
"""

import errno
import json
import os
import shutil
import subprocess

import pytest

from cxrjax.train.trainer import train_and_evaluate
from tests.train.support import history


def _cli(args, capsys):
    from cxrjax.train.cli import main

    rc = main(args)
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.startswith("error:")], err


def _cli_args(config, workdir, *extra):
    opts = [f"--dataset-option={k}={v}" for k, v in config.dataset_options.items()]
    return [
        "--model",
        config.model,
        "--model-option",
        "features=[4,4,8,8]",
        "--model-option",
        "head_width=16",
        "--data-dir",
        config.data_dir,
        *opts,
        "--image-size",
        "32",
        "--channels",
        "1",
        "--per-device-batch-size",
        "4",
        "--set",
        "per_device_eval_batch_size=2",
        "--lr",
        "0.003",
        "--epochs",
        str(config.epochs),
        "--no-progress",
        "--compilation-cache",
        config.compilation_cache_dir,
        "--workdir",
        str(workdir),
        *extra,
    ]


def test_workdir_that_is_a_file_is_one_error_line(base_config, tmp_path, capsys):
    path = tmp_path / "not_a_folder"
    path.write_text("x")
    rc, errors, err = _cli(_cli_args(base_config, path), capsys)
    assert rc == 2 and len(errors) == 1 and "is a file, not a folder" in errors[0], err
    rc, errors, err = _cli(_cli_args(base_config, path / "run"), capsys)  # a parent that is a file
    assert rc == 2 and len(errors) == 1 and "not a folder" in errors[0], err


@pytest.fixture
def make_read_only():
    """Make a tree read-only, for root too: ``chattr -R +i`` (immutable), undone afterwards."""
    made = []

    def read_only(path):
        if os.geteuid() != 0:
            for p in [path, *path.rglob("*")]:
                p.chmod(p.stat().st_mode & ~0o222)
        elif shutil.which("chattr") is None or subprocess.run(["chattr", "-R", "+i", str(path)]).returncode:
            pytest.skip("needs chattr +i (root ignores chmod) on this file system")
        made.append(path)

    yield read_only
    for path in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-R", "-i", str(path)], check=True)
        else:
            for p in [path, *path.rglob("*")]:
                p.chmod(p.stat().st_mode | 0o200)


def test_read_only_workdir_is_one_error_line(base_config, tmp_path, capsys, make_read_only):
    workdir = tmp_path / "run"
    workdir.mkdir()
    make_read_only(workdir)
    rc, errors, err = _cli(_cli_args(base_config, workdir), capsys)
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "cannot create its lock file" in errors[0] and "writable run folder" in errors[0]


def test_a_finished_run_on_read_only_storage_is_returned(base_config, tmp_path, capsys, make_read_only):
    workdir = tmp_path / "run"
    results = train_and_evaluate(base_config, workdir)
    before = (workdir / "config.json").read_bytes()
    make_read_only(workdir)
    # The same config, and one that differs only in result-irrelevant fields: nothing
    # is written (config.json is never rewritten for a finished run), the results come back.
    assert train_and_evaluate(base_config, workdir) == results
    assert train_and_evaluate(base_config.replace(log_every_steps=3, tensorboard=True), workdir) == results
    rc, errors, err = _cli(_cli_args(base_config, workdir), capsys)
    assert rc == 0 and not errors, err
    assert (workdir / "config.json").read_bytes() == before


def test_disk_full_during_an_async_checkpoint_save_is_reported_at_that_save(base_config, tmp_path, capsys, monkeypatch):
    """The save of step 4 (end of epoch 1) fails in orbax's background writer; before, the
    raw RESOURCE_EXHAUSTED came at a later save, after more epochs had been logged."""
    from orbax.checkpoint._src.serialization import type_handlers

    handler = type_handlers.NumpyHandler
    real = handler._open_and_write

    async def full_disk(self, value, tspec, ts_context):
        if "/4.orbax-checkpoint-tmp" in json.dumps(tspec):
            raise OSError(errno.ENOSPC, "No space left on device")
        return await real(self, value, tspec, ts_context)

    monkeypatch.setattr(handler, "_open_and_write", full_disk)
    workdir = tmp_path / "run"
    rc, errors, err = _cli(_cli_args(base_config.replace(epochs=3), workdir), capsys)
    assert rc == 2 and len(errors) == 1, err
    assert "saving checkpoint step 4" in errors[0] and "no space left" in errors[0], errors[0]
    assert "no complete checkpoint exists" in errors[0]
    assert [h["epoch"] for h in history(workdir)] == [1]  # reported before epoch 2's validation
    assert not (workdir / "results.json").exists()


def test_disk_full_writing_the_metrics_is_one_error_line(base_config, tmp_path, capsys, monkeypatch):
    from cxrjax.train import workdir as files

    def full(workdir, record):
        raise OSError(errno.ENOSPC, "No space left on device", str(workdir / files.METRICS_FILE))

    monkeypatch.setattr(files, "append_history", full)
    rc, errors, err = _cli(_cli_args(base_config, tmp_path / "run"), capsys)
    assert rc == 2 and len(errors) == 1 and "no space left on the device" in errors[0], err
    assert "metrics.jsonl" in errors[0] and "[ENOSPC]" in errors[0]

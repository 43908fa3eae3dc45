"""train_and_evaluate end to end on tiny phantoms: run files, refusal of a different config,
non-finite handling, and kill-and-resume in a new process ending bit-identical.

All runs share one tiny BatchNorm + Dropout network (S4 Exp8's layout, narrowed) and one
prepared dataset, so the train/eval steps are compiled once for the whole module (the
engine is memoised per process, and the persistent compilation cache lets the resuming
subprocess skip compilation).
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from cxrjax.inference import load_run
from cxrjax.train.evaluation import predict_split
from cxrjax.train.trainer import NonFiniteError, train_and_evaluate
from cxrjax.train.workdir import ConfigMismatchError
from tests.train.support import history, inject_nan


@pytest.fixture(scope="module")
def base_config(base_config):
    """The shared tiny run (tests/train/conftest.py) with augmentation and TensorBoard on."""
    return base_config.replace(hflip=True, rotate_degrees=10.0, tensorboard=True)


def test_one_epoch_run_writes_every_file(base_config, tmp_path):
    results = train_and_evaluate(base_config, tmp_path)
    for name in (
        "config.json",
        "metrics.jsonl",
        "results.json",
        "learning_curves.png",
        "confusion_matrix.png",
        "roc_curves.png",
    ):
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0, name
    assert len(history(tmp_path, timing=False)) == 1
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(tmp_path / "tensorboard"))
    board.Reload()  # TensorBoard's reader: the epoch's scalars at its last global step
    (record,) = history(tmp_path, timing=False)
    for tag in ("train_loss", "val_accuracy", "val_macro_f1", "lr"):
        assert [(e.step, e.value) for e in board.Scalars(tag)] == [(4, pytest.approx(record[tag]))], tag
    assert results["class_names"] == ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    test = results["test"]
    assert test["num_examples"] == 12  # the padded last batch was masked out, nothing dropped
    assert np.sum(test["confusion_matrix"]) == 12 and set(test["per_class"]) == set(results["class_names"])
    assert 0.0 <= test["accuracy"] <= 1.0 and "roc_auc_ovr" in test and "macro_f1" in test
    assert (results["best_epoch"], results["epochs_run"], results["num_devices"]) == (1, 1, 4)
    assert results["train_images_per_second"] > 0
    # load_run gives the evaluated checkpoint; its single-device predictions reproduce the
    # test metrics of the data-parallel evaluation.
    run = load_run(tmp_path)
    assert run.step == results["evaluated"]["step"] == 4 and run.class_names == results["class_names"]
    from cxrjax.train.data_api import data_api

    data = data_api()
    ds = data.load(base_config.dataset, data_dir=base_config.data_dir, options=base_config.dataset_options)
    preds = predict_split(run, ds, "test", 12)
    probs = preds.probs
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    accuracy = float(np.mean(probs.argmax(1) == preds.labels))
    assert accuracy == pytest.approx(test["accuracy"])
    # Re-running a finished run returns its results without training; a different
    # configuration in the same folder is refused.
    assert train_and_evaluate(base_config, tmp_path) == results
    with pytest.raises(ConfigMismatchError, match="lr: saved 0.003, now 0.1"):
        train_and_evaluate(base_config.replace(lr=0.1), tmp_path)


def test_nan_stops_with_step_epoch_and_batch(base_config, tmp_path, monkeypatch):
    inject_nan(monkeypatch, {0: {2}})
    with pytest.raises(NonFiniteError) as err:
        train_and_evaluate(base_config, tmp_path)
    assert (err.value.step, err.value.epoch, err.value.batch) == (2, 1, 2)
    assert "global step 2, epoch 1" in str(err.value) and "batch 2 of that epoch" in str(err.value)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_nan_skip_mode_counts_and_continues(base_config, tmp_path, monkeypatch):
    inject_nan(monkeypatch, {0: {2}})
    results = train_and_evaluate(base_config.replace(on_nonfinite="skip"), tmp_path)
    assert results["skipped_nonfinite_steps"] == 1
    (record,) = history(tmp_path, timing=False)
    assert record["skipped_nonfinite"] == 1 and np.isfinite(record["train_loss"])


class _Killed(Exception):
    pass


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])  # with EMA the average resumes exactly too
def test_killed_run_resumed_in_a_new_process_ends_identical(base_config, tmp_path, ema_decay):
    config = base_config.replace(epochs=3, checkpoint_every_steps=2, ema_decay=ema_decay)  # 12 steps, 4 per epoch
    straight = train_and_evaluate(config, tmp_path / "straight")

    def kill_at(step):
        if step == 6:  # N/2: the middle of epoch 2, at batch 2 of 4
            raise _Killed

    with pytest.raises(_Killed):
        train_and_evaluate(config, tmp_path / "resumed", on_checkpoint=kill_at)
    checkpoints = tmp_path / "resumed" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["4", "6"]  # best epoch 1 + latest
    # A save killed half-way leaves a temporary directory of a later step: ignored.
    partial = checkpoints / "8.orbax-checkpoint-tmp-1700000000000000"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "_METADATA").write_text("{truncated")
    script = textwrap.dedent("""
        import json, sys
        from cxrjax.train import TrainConfig, train_and_evaluate
        config = TrainConfig.from_dict(json.loads(sys.argv[1]))
        train_and_evaluate(config, sys.argv[2])
    """)
    env = dict(os.environ)
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(config.to_dict()), str(tmp_path / "resumed")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = json.loads((tmp_path / "resumed" / "results.json").read_text())

    weights = ("ema", "live") if ema_decay else ("live",)
    for which in weights:
        a, b = (load_run(tmp_path / name, "latest", weights=which) for name in ("straight", "resumed"))
        assert a.step == b.step == 12
        for x, y in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables), strict=True):
            np.testing.assert_array_equal(x, y)  # bit-identical params and batch_stats (and their average)
    assert straight["evaluated_weights"] == ("ema" if ema_decay else "live")
    assert history(tmp_path / "straight", timing=False) == history(tmp_path / "resumed", timing=False)
    for key in ("test", "validation", "best_epoch", "evaluated", "epochs_run"):
        assert straight[key] == resumed[key], key
    # The test evaluation used the best epoch's checkpoint (restore_best): its validation
    # loss is that epoch's, and load_run's default is that checkpoint.
    best = history(tmp_path / "resumed", timing=False)[resumed["best_epoch"] - 1]
    assert resumed["validation"]["loss"] == pytest.approx(best["val_loss"], rel=1e-6)
    assert resumed["evaluated"] == {
        "checkpoint": "best",
        "step": 4 * resumed["best_epoch"],
        "epoch": resumed["best_epoch"],
    }
    assert load_run(tmp_path / "resumed").step == resumed["evaluated"]["step"]
    assert not partial.exists()  # the leftover was cleaned up

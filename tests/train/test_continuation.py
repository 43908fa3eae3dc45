"""A run that continues its early-stopping twin (cxrjax/train/continuation.py) ends exactly
as if trained alone, and the grid trains the shared epochs once."""

import json

import jax
import numpy as np
import pytest

from cxrjax.inference import load_run
from cxrjax.train import train_and_evaluate
from cxrjax.train import workdir as files
from cxrjax.train.continuation import prefix_of, start_from_prefix
from experiments.grid import RunSpec, run_grid
from tests.train.support import history


def _pair(base_config):
    """(early stopping, without): patience 1 on validation accuracy, which the 12-image
    validation split of the tiny run stops on within 5 epochs (asserted below)."""
    common = base_config.replace(epochs=5, monitor="val_accuracy", seed=3)
    return common.replace(early_stopping_patience=1, restore_best=True), common.replace(
        early_stopping_patience=None, restore_best=False
    )


def test_prefix_of_pairs_runs_that_differ_only_in_when_they_stop(base_config):
    es, plain = _pair(base_config)
    other_seed = plain.replace(seed=4)
    later = es.replace(early_stopping_patience=2)
    # patience 1 -> 2 -> None form one chain; another seed or lr is another trajectory
    assert prefix_of([plain, es, other_seed, later, es.replace(lr=1e-2)]) == [3, None, None, 1, None]
    assert prefix_of([es, es.replace(restore_best=False)]) == [None, None]  # equal patience: no order
    assert prefix_of([{"lr": 1}, {"lr": 1}]) == [None, None]  # only TrainConfigs take part


def test_grid_continues_the_twin_and_it_equals_training_it_alone(base_config, tmp_path):
    es, plain = _pair(base_config)
    straight = train_and_evaluate(plain, tmp_path / "straight")
    # The twin is listed first: the grid still trains the early-stopping run first.
    records = run_grid([RunSpec("plain", 3, plain), RunSpec("es", 3, es)], tmp_path / "grid", progress=False)
    assert [r.cell for r in records] == ["plain", "es"] and all(r.ok for r in records)
    prefix = records[1].results
    assert prefix["stopped_early"] and prefix["epochs_run"] < 5  # the case worth testing
    run = json.loads((tmp_path / "grid" / "runs" / "plain" / "seed_3" / "grid_run.json").read_text())
    assert run["continued"]["epochs"] == prefix["epochs_run"]
    assert run["continued"]["prefix"].endswith("runs/es/seed_3")
    continued = records[0].results
    for key in ("test", "validation", "best_epoch", "evaluated", "epochs_run", "stopped_early"):
        assert continued[key] == straight[key], key
    twin_dir = tmp_path / "grid" / "runs" / "plain" / "seed_3"
    assert history(twin_dir, timing=False) == history(tmp_path / "straight", timing=False)
    a, b = load_run(tmp_path / "straight", "latest"), load_run(twin_dir, "latest")
    assert a.step == b.step
    for x, y in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables), strict=True):
        np.testing.assert_array_equal(x, y)
    # Its first trained epoch in this session came after the prefix's last one.
    assert continued["timings"]["compile_first_epoch"] > 0


def test_start_from_prefix_declines_what_it_cannot_continue(base_config, tmp_path):
    es, plain = _pair(base_config)
    prefix = tmp_path / "es"
    assert start_from_prefix(plain, tmp_path / "a", prefix) is None  # the prefix has not run
    train_and_evaluate(es, prefix)
    assert start_from_prefix(plain.replace(lr=1e-2), tmp_path / "b", prefix) is None  # another trajectory
    assert start_from_prefix(es.replace(restore_best=False), tmp_path / "c", prefix) is None  # same patience
    assert not any((tmp_path / name).exists() and any((tmp_path / name).iterdir()) for name in "abc")
    taken = start_from_prefix(plain, tmp_path / "d", prefix)
    assert taken is not None and taken.epochs == json.loads((prefix / "results.json").read_text())["epochs_run"]
    assert start_from_prefix(plain, tmp_path / "d", prefix) is None  # it holds progress now: it resumes
    with pytest.raises(files.ConfigMismatchError):  # the prefix folder was only read: it still is its own run
        files.check_or_write_config(prefix, plain)

"""Multi-process training (issue 18) with real processes: two processes x two forced CPU
devices (gloo collectives) against one process x four devices, same global batch.

Equality: the batches are the same rows on the same devices, but gloo's cross-process
all-reduce sums in another order than XLA's in-process one, so results agree within
1e-6, not bit for bit (docs/distributed.md). Plain SGD: Adam amplifies rounding-level
differences of near-zero gradient components.
"""

import json

import jax
import numpy as np
import pytest
from support import history, run_processes

from cxrjax.inference import load_run
from cxrjax.train import train_and_evaluate


@pytest.fixture(scope="module")
def config(base_config):
    # 64 phantoms, global batch 16: 4 steps per epoch; a mid-epoch checkpoint every 2 steps.
    return base_config.replace(epochs=2, optimizer="sgd", checkpoint_every_steps=2, plots=False, bootstrap_resamples=0)


@pytest.fixture(scope="module")
def reference(config, tmp_path_factory):
    """The one-process four-device run (in this process: tests/conftest.py forces 4 devices)."""
    workdir = tmp_path_factory.mktemp("one_process") / "run"
    return workdir, train_and_evaluate(config, workdir)


@pytest.fixture(scope="module")
def two_processes(config, reference, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two_processes") / "run"
    outcome = run_processes(config.replace(distributed_timeout_seconds=20), workdir)
    for rc, output, _ in outcome:
        assert rc == 0, output[-3000:]
    return workdir, outcome


def _close(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], float):
            assert b[key] == pytest.approx(a[key], abs=atol), key
        else:
            assert a[key] == b[key], key


def test_two_processes_equal_one_process_on_four_devices(reference, two_processes):
    (one_dir, one), (two_dir, outcome) = reference, two_processes
    for x, y in zip(history(one_dir, timing=False), history(two_dir, timing=False), strict=True):
        _close(x, y)
    two = json.loads((two_dir / "results.json").read_text())
    assert two["num_devices"] == one["num_devices"] == 4 and two["global_batch_size"] == 16
    for split in ("validation", "test"):
        assert two[split]["num_examples"] == one[split]["num_examples"] == 12  # every example once, padding masked
        assert two[split]["per_class"] == one[split]["per_class"]
        assert two[split]["confusion_matrix"] == one[split]["confusion_matrix"]
        assert two[split]["loss"] == pytest.approx(one[split]["loss"], abs=1e-6)
    # The checkpoint restores in this one-process run; params and BatchNorm statistics agree.
    a, b = load_run(one_dir, "latest"), load_run(two_dir, "latest")
    assert a.step == b.step == 8
    for x, y in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables), strict=True):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=0, atol=1e-6)
    # Process 0 writes the files; process 1 logs one line per epoch and no progress.
    logs = [output for _, output, _ in outcome]
    assert "process 1: epoch 1/2" in logs[1] and "process 1: epoch 2/2" in logs[1]
    assert "process 0: epoch" not in logs[0]


def test_a_killed_process_stops_the_other_and_both_resume_equal(config, two_processes, tmp_path):
    straight_dir, _ = two_processes
    workdir = tmp_path / "run"
    # Process 1 kills itself (SIGKILL) after the checkpoint of step 6: batch 2 of epoch 2's 4.
    killed = run_processes(config.replace(distributed_timeout_seconds=20), workdir, kill=(1, 6), timeout=300)
    (rc0, out0, after0), (rc1, _, _) = killed
    assert rc1 == -9
    assert rc0 != 0 and after0 < 60, out0[-3000:]
    assert "task 1 heartbeat timeout" in out0.lower(), out0[-3000:]  # JAX names the lost process
    assert not (workdir / "results.json").exists()
    # The mid-epoch checkpoint is complete, with both processes' grain iterator states.
    meta = json.loads((workdir / "checkpoints" / "6" / "meta" / "metadata").read_text())
    assert meta["batch_in_epoch"] == 2 and len(meta["process_iterator_states"]) == 2
    assert all(meta["process_iterator_states"])
    resumed = run_processes(config.replace(distributed_timeout_seconds=20), workdir)
    for rc, output, _ in resumed:
        assert rc == 0, output[-3000:]
    assert history(straight_dir, timing=False) == history(workdir, timing=False)
    a, b = load_run(straight_dir, "latest"), load_run(workdir, "latest")
    for x, y in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # same processes: bit-identical

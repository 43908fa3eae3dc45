"""Multi-process training (issue 18) with real processes: two processes x two forced CPU
devices (gloo collectives) against one process x four devices, same global batch.

Equality: the batches are the same rows on the same devices, but gloo's cross-process
all-reduce sums in another order than XLA's in-process one, so results agree within
1e-6, not bit for bit (docs/distributed.md). Plain SGD: Adam amplifies rounding-level
differences of near-zero gradient components.

A killed process: the survivor ends with one ``error:`` line naming it
(``cxrjax.train.distributed.reporting_lost_processes``); ``pytest -s`` shows the measured
seconds from the kill to the survivor's exit.
"""

import json
import re

import jax
import numpy as np
import pytest
from support import history, run_processes, run_script_processes

from cxrjax.inference import load_run
from cxrjax.train import distributed, train_and_evaluate

# The heartbeat timeout the runs configure: only JAX's fallback waits for it (a peer lost
# outside a collective); the kill test's survivor stops after the roll call, min(5 s, half).
TIMEOUT = 10


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
    outcome = run_processes(config.replace(distributed_timeout_seconds=TIMEOUT), workdir)
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
    killed = run_processes(config.replace(distributed_timeout_seconds=TIMEOUT), workdir, kill=(1, 6), timeout=300)
    (rc0, out0, after0), (rc1, _, _) = killed
    print(f"\nkill to survivor exit: {after0:.1f} s (process 0, exit status {rc0})")
    assert rc1 == -9
    assert rc0 == distributed.LOST_PROCESS_EXIT and after0 < 60, out0[-3000:]
    # One error: line naming the lost process, where the run was and what is kept; no traceback.
    errors = [line for line in out0.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out0, out0[-3000:]
    expected = (
        r"error: process 1 of 2 \(task:1\) stopped responding \(its connection closed during a collective and it "
        rf"did not answer within 5 s\) at step [78]; the workdir {re.escape(str(workdir))} keeps the checkpoint of "
        r"step 6; start all 2 processes again with the same command to resume"
    )
    assert re.fullmatch(expected, errors[0]), errors[0]
    assert not (workdir / "results.json").exists()
    # The mid-epoch checkpoint is complete, with both processes' grain iterator states.
    meta = json.loads((workdir / "checkpoints" / "6" / "meta" / "metadata").read_text())
    assert meta["batch_in_epoch"] == 2 and len(meta["process_iterator_states"]) == 2
    assert all(meta["process_iterator_states"])
    resumed = run_processes(config.replace(distributed_timeout_seconds=TIMEOUT), workdir)
    for rc, output, _ in resumed:
        assert rc == 0, output[-3000:]
    assert history(straight_dir, timing=False) == history(workdir, timing=False)
    a, b = load_run(straight_dir, "latest"), load_run(workdir, "latest")
    for x, y in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # same processes: bit-identical


def test_only_a_peer_connection_failure_counts_as_a_lost_process():
    gloo = jax.errors.JaxRuntimeError(
        "UNKNOWN: Gloo all-reduce failed: [external/gloo/gloo/transport/tcp/pair.cc:538] Read error "
        "[127.0.0.1]:10945: Connection reset by peer"
    )
    try:
        raise RuntimeError("while fetching the step's metrics") from gloo
    except RuntimeError as wrapped:
        assert distributed._peer_failure(wrapped) is gloo  # found through the cause chain
    assert distributed._peer_failure(jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: out of memory")) is None
    assert distributed._peer_failure(ValueError("Connection reset by peer")) is None  # not a runtime error


def test_one_process_runs_the_body_unguarded(config, tmp_path):
    # No distributed runtime in this process: even a peer-like failure propagates as it is.
    error = jax.errors.JaxRuntimeError("UNKNOWN: Gloo AllGather failed: Connection closed by peer")
    with pytest.raises(jax.errors.JaxRuntimeError) as raised:
        with distributed.reporting_lost_processes(config, tmp_path):
            raise error
    assert raised.value is error


def test_the_lost_process_message_names_every_lost_process():
    line = distributed.lost_process_message([1, 3], 4, "missed heartbeats", None, None, None)
    assert line == (
        "processes 1, 3 of 4 (task:1, task:3) stopped responding (missed heartbeats); the workdir has no complete "
        "checkpoint yet; start all 4 processes again with the same command to resume"
    )


# Process 1 waits in a collective for process 0 while process 0 calls the roll: its
# answering thread answers anyway, so nobody is named lost.
_BLOCKED_ANSWERS = """
import sys, time
import numpy as np
from jax.experimental import multihost_utils
from cxrjax.train import TrainConfig, distributed
address, index = sys.argv[1], int(sys.argv[2])
config = TrainConfig(coordinator_address=address, num_processes=2, process_id=index, distributed_timeout_seconds=20)
distributed.initialize(config)
with distributed.reporting_lost_processes(config, "."):
    multihost_utils.process_allgather(np.array([index]))
    if index == 0:
        t0 = time.monotonic()
        print("lost", distributed._roll_call(5.0), f"in {time.monotonic() - t0:.1f} s", flush=True)
    multihost_utils.process_allgather(np.array([index]))
print("done", flush=True)
"""


def test_a_process_blocked_in_a_collective_still_answers_the_roll_call():
    (rc0, out0), (rc1, out1) = run_script_processes(_BLOCKED_ANSWERS)
    assert rc0 == rc1 == 0, out0[-2000:] + out1[-2000:]
    found = re.search(r"^lost \[\] in ([\d.]+) s$", out0, re.M)
    assert found and float(found.group(1)) < 5.0, out0[-2000:]  # answered, before the roll call's deadline
    assert "done" in out1

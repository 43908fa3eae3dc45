"""Several processes, one data-parallel run: JAX's distributed runtime (docs/distributed.md).

:func:`initialize` is called by ``train_and_evaluate`` before anything touches a JAX
backend. It does nothing unless the config asks for several processes
(``distributed=True``, or any of ``coordinator_address`` / ``num_processes`` /
``process_id``); then it calls ``jax.distributed.initialize`` with those values, or with
none of them where JAX detects the cluster itself (SLURM, Open MPI, cloud TPU), and
with ``distributed_timeout_seconds`` as the heartbeat timeout, so a process that dies
stops the others with an error naming it instead of leaving them waiting. On CPU the
cross-process collectives are gloo's (``jax_cpu_collectives_implementation``), so the
same code runs on one machine with several processes (the tests do).

The helpers the trainer uses with several processes (each is a no-op, or the
single-process answer, with one process):

- :func:`is_primary`: process 0, the only one that writes the run's files (config.json,
  metrics.jsonl, results.json, calibration.json, plots, TensorBoard) and holds the lock;
- :func:`barrier`: every process waits here until all arrived;
- :func:`allgather_json`: every process's JSON value, in process order (the grain
  iterator states saved in a checkpoint);
- :func:`allgather_rows`: a host array from every process, stacked in process order.

A lost process: ``train_and_evaluate`` runs inside :func:`reporting_lost_processes`.
When a cross-process collective fails because a peer closed its connection (gloo's
"Connection reset / closed by peer"; NCCL's errors by name), every process still running
calls the roll in JAX's key-value store and waits a few seconds for the others' answers
(given by a background thread, so a process blocked in a collective answers too); the
ones that did not answer are named in one ``error:`` line, with the step this process
had reached (:func:`note_step`) and the workdir's newest complete checkpoint, and the
process ends at once (``os._exit``): without the lost peer its runtime cannot shut down.
This ends well before JAX's own heartbeat check would abort the process. JAX 0.10.2 has
no usable hook for it, and losing process 0 (the coordination service) or a loss no
collective runs into still ends in JAX's abort: docs/distributed.md, "Failure".

Every field involved is result-irrelevant (config.py): they say where the processes run,
not what they compute.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from cxrjax.train.config import TrainConfig
from cxrjax.train.workdir import CHECKPOINT_DIR

# Environment variables some launchers set instead of flags (docs/distributed.md); read
# only when the config leaves the value unset.
ENV_COORDINATOR = "CXRJAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "CXRJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "CXRJAX_PROCESS_ID"


# Exit status of a process that stopped because another one was lost (not a user error: 2).
LOST_PROCESS_EXIT = 3
# How long the roll call after a failed collective waits for the other processes (at most
# half the heartbeat timeout, so it ends before JAX's own heartbeat check aborts).
ROLL_CALL_SECONDS = 5.0
# A collective failed because a peer went away: gloo's and NCCL's connection errors.
_PEER_FAILURE = re.compile(r"gloo|nccl|connection (reset|closed|refused)|by peer|broken pipe|socket closed", re.I)
# A roll call: process c sets ROLL_CALL_DIR/c = its call number n; every process's
# answering thread sets ANSWER_KEY(c, n, itself). The thread answers while the main thread
# is blocked (in a collective waiting on the caller, say), so only a process that is gone
# (or frozen) fails to answer.
_ROLL_CALL_DIR = "cxrjax/roll_call/"
_ANSWER_KEY = "cxrjax/answer/{}/{}/{}"
ANSWER_POLL_SECONDS = 0.5
_calls_made = [0]

# Where this process is (the lost-process message names it): its run folder, the
# training steps dispatched so far (note_step).
_position: dict[str, Any] = {"workdir": None, "step": None}


class DistributedSetupError(ValueError):
    """The multi-process flags are incomplete or contradict the runtime already started;
    the message names the fix (the CLI prints one ``error:`` line)."""


def requested(config: TrainConfig) -> bool:
    """Whether ``config`` asks for a multi-process run."""
    return bool(
        config.distributed
        or config.coordinator_address is not None
        or config.num_processes is not None
        or config.process_id is not None
    )


def _arguments(config: TrainConfig) -> dict[str, Any]:
    """jax.distributed.initialize's cluster arguments: all three, or none (auto-detection)."""
    address = config.coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    count = config.num_processes
    if count is None and os.environ.get(ENV_NUM_PROCESSES):
        count = int(os.environ[ENV_NUM_PROCESSES])
    index = config.process_id
    if index is None and os.environ.get(ENV_PROCESS_ID):
        index = int(os.environ[ENV_PROCESS_ID])
    given = {"--coordinator-address": address, "--num-processes": count, "--process-id": index}
    if all(v is None for v in given.values()):
        return {}
    missing = [flag for flag, v in given.items() if v is None]
    if missing and not (address is not None and count is None and index is None):
        raise DistributedSetupError(
            f"multi-process run: {', '.join(missing)} missing; give --coordinator-address HOST:PORT, "
            "--num-processes N and --process-id I together (or only --distributed on a cluster JAX detects "
            "itself: SLURM, Open MPI, cloud TPU)"
        )
    if count is not None and index is not None and not 0 <= index < count:
        raise DistributedSetupError(f"--process-id {index} is not in 0..{count - 1} (--num-processes {count})")
    return {"coordinator_address": address, "num_processes": count, "process_id": index}


def initialize(config: TrainConfig) -> bool:
    """Start JAX's distributed runtime when ``config`` asks for it; return whether it runs.

    Idempotent: a runtime already started (by an earlier run in this process, or by the
    caller) is kept; its process count must then agree with ``num_processes``.
    """
    if not requested(config):
        return _running()
    import jax

    args = _arguments(config)
    if _running():
        if args.get("num_processes") not in (None, jax.process_count()):
            raise DistributedSetupError(
                f"--num-processes {args['num_processes']} but this process already runs in a job of "
                f"{jax.process_count()} processes; start a new process"
            )
        return True
    # gloo: the CPU backend's cross-process collectives (without them a CPU computation
    # over several processes' devices fails); accelerator backends bring their own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    timeout = int(config.distributed_timeout_seconds)
    jax.distributed.initialize(
        **args,
        initialization_timeout=max(timeout, 30),
        heartbeat_timeout_seconds=timeout,
        shutdown_timeout_seconds=timeout,
    )
    return True


def _running() -> bool:
    """Whether jax.distributed.initialize has run in this process (without starting a backend)."""
    try:
        from jax._src import distributed as _dist

        return _dist.global_state.client is not None
    except (ImportError, AttributeError):  # pragma: no cover - a JAX without that module
        return False


def process_count() -> int:
    import jax

    return jax.process_count()


def is_primary() -> bool:
    """Process 0 (always, with one process): the one that writes the run's files."""
    import jax

    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Every process waits here until all reached the barrier ``name`` (no-op with one)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def allgather_rows(x: np.ndarray) -> np.ndarray:
    """[P, *x.shape]: ``x`` of every process, in process order ([1, ...] with one)."""
    import jax

    x = np.asarray(x)
    if jax.process_count() == 1:
        return x[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=False))


def allgather_json(value: Any) -> list[Any]:
    """Every process's JSON-serialisable ``value``, in process order."""
    data = np.frombuffer(json.dumps(value, sort_keys=True).encode(), np.uint8)
    lengths = allgather_rows(np.array([len(data)], np.int64))[:, 0]
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: len(data)] = data
    rows = allgather_rows(padded)
    return [json.loads(bytes(row[: int(n)]).decode()) for row, n in zip(rows, lengths)]


def note_step(step: int) -> None:
    """Record that training steps up to ``step`` (a count, 1-based) were dispatched; the
    lost-process message says where the run was with it."""
    _position["step"] = int(step)


@contextlib.contextmanager
def reporting_lost_processes(config: TrainConfig, workdir: str | Path) -> Iterator[None]:
    """Run the body; if a collective fails because a peer process is gone, end this
    process with one ``error:`` line naming the lost process(es) (module docstring).

    Any other error, and a failure every process answers the roll call after, propagates
    unchanged. A no-op with one process.
    """
    if not _running():
        yield
        return
    import threading

    _position.update(workdir=Path(workdir), step=None)
    stop = threading.Event()
    threading.Thread(target=_answer_roll_calls, args=(stop,), name="cxrjax-roll-call", daemon=True).start()
    try:
        yield
    except Exception as err:
        if _peer_failure(err) is not None:
            seconds = min(ROLL_CALL_SECONDS, config.distributed_timeout_seconds / 2)
            lost = _roll_call(seconds)
            if lost:
                _stop(lost, f"its connection closed during a collective and it did not answer within {seconds:g} s")
        raise
    finally:
        stop.set()


def _peer_failure(err: BaseException) -> BaseException | None:
    """The runtime error in ``err``'s chain that says a peer went away, if any."""
    import jax

    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, jax.errors.JaxRuntimeError) and _PEER_FAILURE.search(str(current)):
            return current
        current = current.__cause__ or current.__context__
    return None


def _answer_roll_calls(stop: Any) -> None:
    """Background thread: answer every roll call any process makes, until ``stop`` is set."""
    import jax

    client, me, answered = _client(), jax.process_index(), set()
    while not stop.wait(ANSWER_POLL_SECONDS):
        try:
            calls = client.key_value_dir_get(_ROLL_CALL_DIR)
            for key, number in calls:
                call = (key.rstrip("/").rsplit("/", 1)[-1], number)
                if call not in answered:
                    client.key_value_set(_ANSWER_KEY.format(*call, me), str(os.getpid()), allow_overwrite=True)
                    answered.add(call)
        except Exception:  # noqa: BLE001 - the service is gone; the main thread finds out
            continue


def _roll_call(seconds: float) -> list[int]:
    """The processes whose answering thread does not answer within ``seconds`` (JAX's
    key-value store); [] when all do, [0] when the service (in process 0) is gone."""
    import jax

    client = _client()
    me, count = jax.process_index(), jax.process_count()
    _calls_made[0] += 1
    number = str(_calls_made[0])
    try:
        client.key_value_set(f"{_ROLL_CALL_DIR}{me}", number, allow_overwrite=True)
    except Exception:  # noqa: BLE001 - the service (in process 0) is unreachable
        return [0]
    deadline, lost = time.monotonic() + seconds, []
    for index in range(count):
        if index == me:
            continue
        left_ms = max(1, int((deadline - time.monotonic()) * 1000))
        try:
            client.blocking_key_value_get(_ANSWER_KEY.format(me, number, index), left_ms)
        except Exception as err:  # noqa: BLE001 - DEADLINE_EXCEEDED: no answer
            if "deadline" not in str(err).lower():  # the service itself is gone: process 0 holds it
                return [0]
            lost.append(index)
    return lost


def lost_process_message(
    lost: list[int], count: int, how: str, step: int | None, workdir: Path | None, checkpoint: int | None
) -> str:
    """The one line a surviving process prints (without ``error: ``)."""
    who = "process" if len(lost) == 1 else "processes"
    tasks = ", ".join(f"task:{i}" for i in lost)
    at = f" at step {step}" if step is not None else ""
    folder = f"the workdir {workdir}" if workdir is not None else "the workdir"
    kept = (
        f"{folder} keeps the checkpoint of step {checkpoint}"
        if checkpoint is not None
        else f"{folder} has no complete checkpoint yet"
    )
    return (
        f"{who} {', '.join(map(str, lost))} of {count} ({tasks}) stopped responding ({how}){at}; {kept}; "
        f"start all {count} processes again with the same command to resume"
    )


def _newest_checkpoint(workdir: Path | None) -> int | None:
    """The newest complete checkpoint step in ``workdir`` (orbax renames a step's folder
    to its number only once it is committed)."""
    if workdir is None:
        return None
    try:
        steps = [int(p.name) for p in (workdir / CHECKPOINT_DIR).iterdir() if p.name.isdigit()]
    except OSError:
        return None
    return max(steps, default=None)


def _stop(lost: list[int], how: str) -> None:
    """Print the lost-process line and end this process now (module docstring: why not
    an exception)."""
    import jax

    workdir = _position["workdir"]
    line = lost_process_message(lost, jax.process_count(), how, _position["step"], workdir, _newest_checkpoint(workdir))
    sys.stdout.flush()
    print(f"error: {line}", file=sys.stderr, flush=True)
    os._exit(LOST_PROCESS_EXIT)


def _client() -> Any:
    from jax._src import distributed as _dist

    return _dist.global_state.client

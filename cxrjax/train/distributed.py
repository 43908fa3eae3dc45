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

Every field involved is result-irrelevant (config.py): they say where the processes run,
not what they compute.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from cxrjax.train.config import TrainConfig

# Environment variables some launchers set instead of flags (docs/distributed.md); read
# only when the config leaves the value unset.
ENV_COORDINATOR = "CXRJAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "CXRJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "CXRJAX_PROCESS_ID"


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

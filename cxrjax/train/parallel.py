"""Two thin wrappers that run the per-replica steps of steps.py on several devices.

- :class:`ShardMapEngine` (default): ``jax.jit(jax.shard_map(step))`` over a 1-D mesh
  ``jax.make_mesh((n,), ("batch",))``; the state is replicated
  (``NamedSharding(mesh, P())``) and donated, batches are split along their first axis
  (``NamedSharding(mesh, P("batch"))``). This is what ``jax.pmap`` itself lowers to
  since JAX 0.8. ``check_vma=False``: the step is written in pmap semantics (it
  ``pmean``s its gradients itself); with shard_map's replication checking on, the
  gradient of a replicated parameter would already be summed over replicas by autodiff
  and the explicit ``pmean`` would leave it n times too large.
- :class:`PmapEngine` (``parallel="pmap"``): ``jax.pmap(step, axis_name="batch")`` for
  users who want literal pmap; the state carries a leading device axis and batches are
  reshaped to [devices, per-device batch, ...] in :meth:`PmapEngine._split` (the only
  place that reshape exists) and back in :meth:`PmapEngine._merge`.

Both expose the same small interface, used by the training loop, the tests and anyone
else: ``put_state`` / ``host_state`` (to and from the host as ONE copy), ``put_batch``,
``train_step(state, batch) -> (state, metrics)``, ``eval_step(state, batch) ->
log_probs`` and ``host_metrics``; ``put_batches`` / ``train_steps(state, batches)`` run
K stacked batches (leading axis K) as K steps in one compiled call
(``steps.scan_steps``, metrics stacked [K], ``host_metrics`` keeps the K axis), and
``train_fn`` / ``eval_fn`` are the per-replica steps the engine wraps (resident.py's
device-resident input wraps them with its in-step batch maker); :func:`lower_step`
lowers either step ahead of time
for callers that compile it themselves (the benchmarks). Steps are traced and run under
``state.random_config()`` (the classic threefry stream). Nothing leaves the devices
unless the caller fetches it: a step is dispatched asynchronously and returns device
arrays.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cxrjax.train.state import random_config
from cxrjax.train.steps import AXIS, scan_steps

TrainFn = Callable[[Any, dict], tuple[Any, dict]]
EvalFn = Callable[[Any, dict], jax.Array]


class _Steps:
    """The step calls both engines share: their compiled ``_train`` / ``_eval``, run under
    ``random_config()`` (as they were traced, see :func:`lower_step`). A batch is what the
    engine's ``put_batch`` returned."""

    _train: Callable[[Any, Any], tuple[Any, dict[str, jax.Array]]]
    _train_many: Callable[[Any, Any], tuple[Any, dict[str, jax.Array]]]
    _eval: Callable[[Any, Any], jax.Array]
    train_fn: TrainFn
    eval_fn: EvalFn

    def train_step(self, state: Any, batch: Any) -> tuple[Any, dict[str, jax.Array]]:
        with random_config():
            return self._train(state, batch)

    def train_steps(self, state: Any, batches: Any) -> tuple[Any, dict[str, jax.Array]]:
        """K steps in one call on what ``put_batches`` returned; metrics stacked [K]."""
        with random_config():
            return self._train_many(state, batches)

    def eval_step(self, state: Any, batch: Any) -> jax.Array:
        with random_config():
            return self._eval(state, batch)


class ShardMapEngine(_Steps):
    """See the module docstring.

    ``batch_spec`` lays a batch over the mesh: ``P(AXIS)`` (the default, what training
    uses) splits it along its first axis; ``P()`` hands every replica the whole of it, for
    a step that picks its own slice (benchmarks/device_resident.py keeps a whole split on
    every device and gathers each replica's batch inside the compiled step).
    """

    kind = "shard_map"

    def __init__(self, train_fn: TrainFn, eval_fn: EvalFn, devices: Sequence[jax.Device], *, batch_spec: P = P(AXIS)):
        self.devices = list(devices)
        self.num_devices = len(self.devices)
        self.train_fn, self.eval_fn = train_fn, eval_fn
        # Several processes: the mesh spans every process's devices in the order given
        # (run_setup orders them by process, so each process's rows are one block of the
        # batch); make_mesh could reorder them.
        self.multi_process = any(d.process_index != jax.process_index() for d in self.devices)
        if self.multi_process:
            self.mesh = jax.sharding.Mesh(np.array(self.devices), (AXIS,))
        else:
            self.mesh = jax.make_mesh((self.num_devices,), (AXIS,), devices=self.devices)
        self._replicated = NamedSharding(self.mesh, P())
        self._split_batch = NamedSharding(self.mesh, batch_spec)
        stacked_spec = P(None, *batch_spec)
        self._split_batches = NamedSharding(self.mesh, stacked_spec)
        self._train = jax.jit(
            jax.shard_map(train_fn, mesh=self.mesh, in_specs=(P(), batch_spec), out_specs=(P(), P()), check_vma=False),
            donate_argnums=0,
        )
        self._train_many = jax.jit(
            jax.shard_map(
                scan_steps(train_fn),
                mesh=self.mesh,
                in_specs=(P(), stacked_spec),
                out_specs=(P(), P()),
                check_vma=False,
            ),
            donate_argnums=0,
        )
        self._eval = jax.jit(
            jax.shard_map(eval_fn, mesh=self.mesh, in_specs=(P(), batch_spec), out_specs=P(AXIS), check_vma=False)
        )

    def put_state(self, state: Any) -> Any:
        # Through the host, so the placed state never aliases the caller's buffers (the
        # train step donates it; an alias would delete the caller's copy).
        host = jax.device_get(state)
        if self.multi_process:  # every process holds the same host state: place its own copies
            return jax.tree.map(
                lambda x: jax.make_array_from_callback(np.shape(x), self._replicated, lambda i, x=x: np.asarray(x)[i]),
                host,
            )
        return jax.device_put(host, self._replicated)

    def host_state(self, state: Any) -> Any:
        if self.multi_process:  # replicated: this process's first copy is the value
            return jax.tree.map(_local_copy, state)
        return jax.device_get(state)

    def put_batch(self, batch: dict[str, np.ndarray], *, on_device: bool = True) -> dict[str, jax.Array]:
        # Always on the devices; `on_device` is accepted so both engines take the same call.
        # Several processes: `batch` is this process's block of rows of the global batch.
        if self.multi_process:
            return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self._split_batch, x), batch)
        return jax.device_put(batch, self._split_batch)

    def put_batches(self, batches: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """K stacked batches [K, B, ...], each split along B like ``put_batch``'s."""
        if self.multi_process:
            return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self._split_batches, x), batches)
        return jax.device_put(batches, self._split_batches)

    def host_metrics(self, metrics: Any) -> Any:
        if self.multi_process:  # pmean'ed: replicated on every device
            return jax.tree.map(_local_copy, metrics)
        return jax.device_get(metrics)

    def host_outputs(self, outputs: jax.Array) -> np.ndarray:
        """The eval step's outputs of the whole global batch (several processes: gathered
        from all of them, in the batch's row order)."""
        if self.multi_process:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(outputs, tiled=True))
        return np.asarray(jax.device_get(outputs))


def _local_copy(x: Any) -> Any:
    """A replicated array's value from this process's first device copy."""
    return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x


class PmapEngine(_Steps):
    kind = "pmap"

    def __init__(self, train_fn: TrainFn, eval_fn: EvalFn, devices: Sequence[jax.Device]):
        self.devices = list(devices)
        self.num_devices = len(self.devices)
        self.train_fn, self.eval_fn = train_fn, eval_fn
        self._train = jax.pmap(train_fn, axis_name=AXIS, devices=self.devices, donate_argnums=0)
        self._train_many = jax.pmap(scan_steps(train_fn), axis_name=AXIS, devices=self.devices, donate_argnums=0)
        self._eval = jax.pmap(eval_fn, axis_name=AXIS, devices=self.devices)

    # The device axis: the one place batches are reshaped for pmap, and back.
    def _split(self, x: np.ndarray) -> np.ndarray:
        if x.shape[0] % self.num_devices:
            raise ValueError(f"batch of {x.shape[0]} examples cannot be split evenly over {self.num_devices} devices")
        return x.reshape(self.num_devices, x.shape[0] // self.num_devices, *x.shape[1:])

    def _merge(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])

    def put_state(self, state: Any) -> Any:
        # One copy per device along a new leading axis, placed by an identity pmap (so
        # the donated train step receives device buffers, not host arrays).
        stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (self.num_devices, *np.shape(x))), state)
        return _identity_pmap(tuple(self.devices))(stacked)

    def host_state(self, state: Any) -> Any:
        return jax.device_get(jax.tree.map(lambda x: x[0], state))

    def put_batch(self, batch: dict[str, np.ndarray], *, on_device: bool = False) -> Any:
        # By default the split host arrays: the pmapped step transfers them as part of the
        # call. `on_device=True` places them now, through the same identity pmap as
        # put_state, for a caller that reuses one batch (benchmarks/jax_step.py times the
        # step without the transfer).
        split = jax.tree.map(self._split, batch)
        return _identity_pmap(tuple(self.devices))(split) if on_device else split

    def put_batches(self, batches: dict[str, np.ndarray]) -> Any:
        # [K, B, ...] -> [devices, K, B / devices, ...]: every step's batch split as _split does.
        return jax.tree.map(lambda x: np.stack([self._split(b) for b in x], axis=1), batches)

    def host_metrics(self, metrics: Any) -> Any:
        # pmean'ed metrics are equal on every device: keep the first copy.
        return jax.device_get(jax.tree.map(lambda x: x[0], metrics))

    def host_outputs(self, outputs: jax.Array) -> np.ndarray:
        return self._merge(np.asarray(jax.device_get(outputs)))


@functools.lru_cache(maxsize=None)
def _identity_pmap(devices: tuple[jax.Device, ...]) -> Callable[[Any], Any]:
    return jax.pmap(lambda x: x, devices=list(devices))


Engine = ShardMapEngine | PmapEngine


def lower_step(engine: Engine, step: str, state: Any, batch: Any) -> jax.stages.Lowered:
    """`engine`'s "train" or "eval" step lowered ahead of time for these arguments.

    Traced under ``random_config()`` as :meth:`train_step` / :meth:`eval_step` are, so
    ``.compile()`` gives the very program they run, called the same way (``(state, batch)``,
    the state donated by the train step). For callers that compile explicitly, to time
    compilation apart from the steps and read XLA's cost and memory analyses of the
    executable they time (benchmarks/jax_step.py).
    """
    fn = {"train": engine._train, "eval": engine._eval}[step]
    with random_config():
        return fn.lower(state, batch)


def make_engine(kind: str, train_fn: TrainFn, eval_fn: EvalFn, devices: Sequence[jax.Device]) -> Engine:
    if kind == "shard_map":
        return ShardMapEngine(train_fn, eval_fn, devices)
    if kind == "pmap":
        return PmapEngine(train_fn, eval_fn, devices)
    raise ValueError(f"parallel={kind!r}: choose 'shard_map' or 'pmap'")

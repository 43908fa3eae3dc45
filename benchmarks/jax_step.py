"""The JAX side of the throughput benchmark: the training engine's step, compiled AOT.

The per-replica train and eval steps are cxrjax's own (``cxrjax.train.steps.train_step``
/ ``eval_step``: forward with ``train=True``, softmax cross-entropy, gradients, ``pmean``
of gradients, loss and accuracy over the ``"batch"`` axis, the non-finite guard, optax
Adam, BatchNorm statistics with cross-replica means through the model's ``axis_name``),
on the engine's ``TrainState`` (``create_train_state``), so the benchmark times exactly
what training runs. They are wrapped the way ``cxrjax/train/parallel.py`` wraps them
(``jit(shard_map(..., check_vma=False))`` with the state donated, or ``pmap``), but
here ahead of time (``.lower(...).compile()``): compile time is measured on its own,
and XLA's cost and memory analyses describe the exact executable that is timed.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cxrjax import models
from cxrjax.train.state import create_train_state
from cxrjax.train.steps import AXIS, LossConfig, eval_step, train_step

PARALLEL_MODES = ("shard_map", "pmap")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclass(frozen=True)
class JaxStepConfig:
    """One JAX configuration to compile: model, input, batch, precision, parallelism.

    ``overrides`` are passed to :func:`cxrjax.models.create` (e.g. tiny test variants);
    ``num_devices`` None means every local device.
    """

    model: str
    image_size: int
    per_device_batch: int
    dtype: str = "float32"
    parallel: str = "shard_map"
    num_devices: int | None = None
    num_classes: int = 4
    channels: int | None = None
    learning_rate: float = 1e-3
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class CompiledSteps:
    """Compiled train/eval executables with their inputs and XLA's static analyses."""

    train: Callable[[Any, dict], tuple[Any, dict]]  # (state, batch) -> (state, metrics)
    eval: Callable[[Any, dict], jax.Array]  # (state, batch) -> log-probabilities
    state: Any  # cxrjax.train.state.TrainState, placed for the parallel mode
    batch: dict[str, jax.Array]  # {"image", "label"}, split over devices
    num_devices: int
    train_compile_s: float
    eval_compile_s: float
    train_flops_per_device: float | None
    eval_flops_per_device: float | None
    train_memory_bytes: int | None  # XLA memory analysis: arguments + outputs + temps - aliased


def flops_from_cost_analysis(cost: Any) -> float | None:
    """Total "flops" from `Compiled.cost_analysis()`, a dict or a list of dicts by version."""
    if cost is None:
        return None
    if isinstance(cost, dict):
        cost = [cost]
    total = sum(float(c.get("flops", 0.0)) for c in cost if c)
    return total if total > 0 else None


def memory_bytes(compiled: Any) -> int | None:
    """Bytes an executable needs per device (arguments + outputs + temps - aliased)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return None
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def _devices(num_devices: int | None) -> list[jax.Device]:
    devices = jax.local_devices()
    if num_devices is None:
        return devices
    if not 1 <= num_devices <= len(devices):
        raise ValueError(
            f"num_devices={num_devices} but this process sees {len(devices)} local device(s); "
            "on CPU, force more with XLA_FLAGS=--xla_force_host_platform_device_count=N"
        )
    return devices[:num_devices]


def synthetic_batch(cfg: JaxStepConfig, num_devices: int, channels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Host images N(0, 1) float32 [global_batch, S, S, C] and labels, same for both frameworks."""
    rng = np.random.default_rng(seed)
    n = cfg.per_device_batch * num_devices
    images = rng.standard_normal((n, cfg.image_size, cfg.image_size, channels), dtype=np.float32)
    labels = rng.integers(0, cfg.num_classes, size=(n,), dtype=np.int32)
    return images, labels


class _NoParams:
    """Stands in for a model in ``create_train_state`` to get its non-parameter fields."""

    def init(self, rngs: Any, x: Any, train: bool) -> dict:
        return {"params": {}}


def host_initialized_state(model: Any, tx: optax.GradientTransformation, input_shape: tuple[int, ...],
                           seed: int = 0) -> Any:
    """The engine's ``TrainState`` with parameters drawn on the host, not by ``model.init``.

    Compiling (or eagerly dispatching) a model's random initialisers costs seconds of
    XLA:CPU time per model, more than the train step's own compilation for small
    models, and parameter values do not change step time. So shapes come from
    ``jax.eval_shape`` of the engine's ``create_train_state`` and values from NumPy:
    He-normal kernels (finite, no denormals), zero biases, unit BatchNorm scales and
    running variances, and Adam's initial state (zeros). The step counter, rng and the
    engine's other scalar fields come from ``create_train_state`` itself.
    """
    skeleton = jax.eval_shape(lambda: create_train_state(model, tx, seed, input_shape))
    rng = np.random.default_rng(seed)

    def leaf(path: Any, sd: jax.ShapeDtypeStruct) -> np.ndarray:
        name = getattr(path[-1], "key", getattr(path[-1], "name", ""))
        if name == "kernel":
            fan_in = int(np.prod(sd.shape[:-1]))
            return (rng.standard_normal(sd.shape, np.float32) * np.sqrt(2.0 / fan_in)).astype(sd.dtype)
        if name in ("scale", "var"):
            return np.ones(sd.shape, sd.dtype)
        return np.zeros(sd.shape, sd.dtype)

    fill = functools.partial(jax.tree_util.tree_map_with_path, leaf)
    scalars = create_train_state(_NoParams(), tx, seed, input_shape)
    return scalars.replace(
        params=fill(skeleton.params),
        batch_stats=fill(skeleton.batch_stats),
        opt_state=jax.tree.map(lambda sd: np.zeros(sd.shape, sd.dtype), skeleton.opt_state),
    )


def build_steps(cfg: JaxStepConfig, images: np.ndarray | None = None, labels: np.ndarray | None = None) -> CompiledSteps:
    """Create the model, initialise the state, place it, and compile train and eval steps."""
    if cfg.parallel not in PARALLEL_MODES:
        raise ValueError(f"unknown parallel mode {cfg.parallel!r}; choose one of {PARALLEL_MODES}")
    if cfg.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {cfg.dtype!r}; choose one of {tuple(DTYPES)}")
    devices = _devices(cfg.num_devices)
    n = len(devices)
    model = models.create(
        cfg.model,
        num_classes=cfg.num_classes,
        channels=cfg.channels,
        dtype=DTYPES[cfg.dtype],
        axis_name=AXIS,
        **cfg.overrides,
    )
    channels = cfg.channels if cfg.channels is not None else models.MODELS[cfg.model].channels
    if images is None or labels is None:
        images, labels = synthetic_batch(cfg, n, channels)
    if images.shape[0] != cfg.per_device_batch * n:
        raise ValueError(f"images has batch {images.shape[0]}, expected {cfg.per_device_batch} x {n} devices")

    tx = optax.adam(cfg.learning_rate)
    state = host_initialized_state(model, tx, tuple(images.shape[1:]))
    train_fn = functools.partial(
        train_step, model=model, tx=tx, schedule=optax.constant_schedule(cfg.learning_rate),
        loss=LossConfig(num_classes=cfg.num_classes),
    )
    eval_fn = functools.partial(eval_step, model=model)
    mesh = Mesh(np.array(devices), (AXIS,))
    sharded = NamedSharding(mesh, P(AXIS))
    if cfg.parallel == "shard_map":
        state = jax.device_put(state, NamedSharding(mesh, P()))
        batch = jax.device_put({"image": images, "label": labels}, sharded)
        train = jax.jit(
            jax.shard_map(train_fn, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P()), check_vma=False),
            donate_argnums=0,
        )
        evaluate = jax.jit(
            jax.shard_map(eval_fn, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS), check_vma=False)
        )
    else:
        # pmap: a leading device axis on every argument; the state is replicated per device.
        state = jax.device_put(jax.tree.map(lambda a: jnp.broadcast_to(a, (n, *a.shape)), state), sharded)
        batch = jax.device_put({"image": images.reshape(n, -1, *images.shape[1:]), "label": labels.reshape(n, -1)},
                               sharded)
        train = jax.pmap(train_fn, axis_name=AXIS, devices=devices, donate_argnums=0)
        evaluate = jax.pmap(eval_fn, axis_name=AXIS, devices=devices)

    t0 = time.perf_counter()
    train_c = train.lower(state, batch).compile()
    train_compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    eval_c = evaluate.lower(state, batch).compile()
    eval_compile_s = time.perf_counter() - t0
    return CompiledSteps(
        train=train_c,
        eval=eval_c,
        state=state,
        batch=batch,
        num_devices=n,
        train_compile_s=train_compile_s,
        eval_compile_s=eval_compile_s,
        train_flops_per_device=flops_from_cost_analysis(train_c.cost_analysis()),
        eval_flops_per_device=flops_from_cost_analysis(eval_c.cost_analysis()),
        train_memory_bytes=memory_bytes(train_c),
    )


def peak_device_memory_bytes() -> int | None:
    """Process-wide high-water mark of device 0's memory, where the backend reports it.

    JAX cannot reset this counter, so it covers every configuration run so far in the
    process (an upper bound for the current one); CPU reports nothing (None).
    """
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:
        return None
    if not stats:
        return None
    value = stats.get("peak_bytes_in_use")
    return int(value) if value is not None else None

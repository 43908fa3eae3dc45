"""The JAX side of the throughput benchmark: the training engine's step, compiled AOT.

The per-replica train and eval steps are cxrjax's own (``cxrjax.train.steps.train_step``
/ ``eval_step``: forward with ``train=True``, softmax cross-entropy, gradients, ``pmean``
of gradients, loss and accuracy over the ``"batch"`` axis, the non-finite guard, optax
Adam, BatchNorm statistics with cross-replica means through the model's ``axis_name``),
on the engine's ``TrainState`` (``create_train_state``), so the benchmark times exactly
what training runs. They are wrapped by the training engine itself
(``cxrjax.train.parallel.make_engine``: ``jit(shard_map(..., check_vma=False))`` with
the state donated, or ``pmap``, traced under the engine's random configuration), and
compiled ahead of time (``parallel.lower_step(...).compile()``): compile time is
measured on its own, and XLA's cost and memory analyses describe the exact executable
that is timed.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cxrjax import models
from cxrjax.train.parallel import Engine, lower_step, make_engine
from cxrjax.train.state import create_train_state
from cxrjax.train.steps import AXIS, LossConfig, bind_steps

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


def local_devices(num_devices: int | None) -> list[jax.Device]:
    """The first `num_devices` local devices (None: all), or a clear error if there are fewer."""
    devices = jax.local_devices()
    if num_devices is None:
        return devices
    if not 1 <= num_devices <= len(devices):
        raise ValueError(
            f"num_devices={num_devices} but this process sees {len(devices)} local device(s); "
            "on CPU, force more with XLA_FLAGS=--xla_force_host_platform_device_count=N"
        )
    return devices[:num_devices]


def bench_model(
    name: str,
    *,
    num_classes: int,
    channels: int | None,
    dtype: str = "float32",
    overrides: dict[str, Any] | None = None,
) -> nn.Module:
    """``cxrjax.models.create`` with BatchNorm statistics over the engine's device axis."""
    return models.create(
        name, num_classes=num_classes, channels=channels, dtype=DTYPES[dtype], axis_name=AXIS, **(overrides or {})
    )


def adam_steps(model: nn.Module, num_classes: int, learning_rate: float = 1e-3) -> tuple[Any, Callable, Callable]:
    """(optimizer, train_fn, eval_fn): the benchmarks' optimizer, optax Adam at a constant
    rate (no TrainConfig to build one from), and the engine's steps bound to it."""
    tx = optax.adam(learning_rate)
    schedule = optax.constant_schedule(learning_rate)
    return (tx, *bind_steps(model, tx, schedule, LossConfig(num_classes=num_classes)))


def compile_step(engine: Engine, step: str, state: Any, batch: Any) -> tuple[Any, float]:
    """`engine`'s "train" or "eval" step compiled for (state, batch), and the seconds that
    took (tracing and lowering included)."""
    t0 = time.perf_counter()
    compiled = lower_step(engine, step, state, batch).compile()
    return compiled, time.perf_counter() - t0


def synthetic_batch(
    cfg: JaxStepConfig, num_devices: int, channels: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
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


def host_initialized_state(
    model: Any, tx: optax.GradientTransformation, input_shape: tuple[int, ...], seed: int = 0
) -> Any:
    """The engine's ``TrainState`` with parameters drawn on the host, not by ``model.init``.

    Compiling (or eagerly dispatching) a model's random initialisers costs seconds of
    XLA:CPU time per model, more than the train step's own compilation for small
    models, and parameter values do not change step time. So shapes come from
    ``jax.eval_shape`` of the engine's ``create_train_state`` and values from NumPy:
    He-normal kernels (depthwise and pointwise ones too; finite, no denormals), zero
    biases, unit BatchNorm scales and running variances (and EfficientNet's
    Normalization variances), and the optimiser's initial state (zeros). The step
    counter, rng and the engine's other scalar fields come from ``create_train_state`` itself.
    """
    skeleton = jax.eval_shape(lambda: create_train_state(model, tx, seed, input_shape))
    rng = np.random.default_rng(seed)

    def leaf(path: Any, sd: jax.ShapeDtypeStruct) -> np.ndarray:
        name = str(getattr(path[-1], "key", getattr(path[-1], "name", "")))
        if name.endswith("kernel"):  # also the backbones' depthwise_kernel / pointwise_kernel
            fan_in = int(np.prod(sd.shape[:-1]))
            return (rng.standard_normal(sd.shape, np.float32) * np.sqrt(2.0 / fan_in)).astype(sd.dtype)
        if name in ("scale", "var", "variance"):  # variance: EfficientNet's Normalization layer
            return np.ones(sd.shape, sd.dtype)
        return np.zeros(sd.shape, sd.dtype)

    fill = functools.partial(jax.tree_util.tree_map_with_path, leaf)
    scalars = create_train_state(_NoParams(), tx, seed, input_shape)
    return scalars.replace(
        params=fill(skeleton.params),
        batch_stats=fill(skeleton.batch_stats),
        opt_state=jax.tree.map(lambda sd: np.zeros(sd.shape, sd.dtype), skeleton.opt_state),
    )


def build_steps(
    cfg: JaxStepConfig, images: np.ndarray | None = None, labels: np.ndarray | None = None
) -> CompiledSteps:
    """Create the model and the training engine, place the state and batch, and compile
    the engine's train and eval steps ahead of time."""
    if cfg.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {cfg.dtype!r}; choose one of {tuple(DTYPES)}")
    devices = local_devices(cfg.num_devices)
    n = len(devices)
    model = bench_model(
        cfg.model, num_classes=cfg.num_classes, channels=cfg.channels, dtype=cfg.dtype, overrides=cfg.overrides
    )
    tx, train_fn, eval_fn = adam_steps(model, cfg.num_classes, cfg.learning_rate)
    engine = make_engine(cfg.parallel, train_fn, eval_fn, devices)  # rejects an unknown parallel mode
    channels = cfg.channels if cfg.channels is not None else models.MODELS[cfg.model].channels
    if images is None or labels is None:
        images, labels = synthetic_batch(cfg, n, channels)
    if images.shape[0] != cfg.per_device_batch * n:
        raise ValueError(f"images has batch {images.shape[0]}, expected {cfg.per_device_batch} x {n} devices")

    state = engine.put_state(host_initialized_state(model, tx, tuple(images.shape[1:])))
    batch = engine.put_batch({"image": images, "label": labels}, on_device=True)
    train_c, train_compile_s = compile_step(engine, "train", state, batch)
    eval_c, eval_compile_s = compile_step(engine, "eval", state, batch)
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

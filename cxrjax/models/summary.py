"""Per-layer summary of a registered model, and its FLOPs as XLA counts them.

Everything here works on abstract shapes (``jax.eval_shape`` / ``jit(...).lower``), so a
summary of VGG16 allocates no 537 MB of parameters. FLOPs come from XLA's cost analysis
of the compiled functions, i.e. what the backend will actually execute (convolutions
count 2 x multiply-adds; elementwise ops count too):
- forward: ``model.apply(variables, x, train=False)``;
- train step: softmax cross-entropy forward, gradient with respect to the params (train
  mode: batch statistics, dropout) and a plain SGD update. Optimizers with more state
  (Adam) add a few FLOPs per parameter per step, which is negligible next to the convs.
Both are compiled for ``batch_size`` images and divided by it (FLOPs per image).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxrjax.models.registry import MODELS, create


@dataclasses.dataclass(frozen=True)
class LayerRow:
    path: str
    kind: str
    output_shape: tuple[int, ...]
    params: int


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    model: str
    input_shape: tuple[int, int, int]  # one image: (height, width, channels)
    num_classes: int
    layers: list[LayerRow]
    params: int
    forward_flops: float  # per image
    train_step_flops: float  # per image

    def to_json(self) -> dict[str, Any]:
        """The documented JSON record of ``python -m cxrjax.models summary --json``."""
        return {
            "model": self.model,
            "input_shape": list(self.input_shape),
            "params": self.params,
            "forward_flops": self.forward_flops,
            "train_step_flops": self.train_step_flops,
        }

    def to_text(self) -> str:
        w = max([len(r.path) for r in self.layers] + [5])
        lines = [
            f"{self.model}: input {'x'.join(map(str, self.input_shape))}, {self.num_classes} classes",
            f"{'layer':<{w}}  {'kind':<10} {'output (per image)':<20} {'params':>13}",
        ]
        for r in self.layers:
            shape = "x".join(map(str, r.output_shape[1:]))
            lines.append(f"{r.path:<{w}}  {r.kind:<10} {shape:<20} {r.params:>13,}")
        lines += [
            f"total params: {self.params:,}",
            f"forward: {self.forward_flops / 1e9:.4f} GFLOPs per image (XLA cost analysis)",
            f"train step: {self.train_step_flops / 1e9:.4f} GFLOPs per image (XLA cost analysis)",
        ]
        return "\n".join(lines)


def count_params(tree: Any) -> int:
    """Number of scalars in a (possibly abstract) pytree of arrays."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def xla_flops(compiled: Any) -> float:
    """'flops' of ``compiled.cost_analysis()``, which is a dict or a list of dicts."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, dict):
        analysis = [analysis]
    return float(sum((a or {}).get("flops", 0.0) for a in analysis))


def _abstract_init(model: nn.Module, x: jax.ShapeDtypeStruct) -> dict:
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    return jax.eval_shape(lambda x: model.init(rngs, x, train=False), x)


def forward_and_train_flops(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[float, float]:
    """(forward, train step) FLOPs of ``model`` for a batch of ``input_shape`` [B, H, W, C].

    Returns totals for the whole batch; divide by B for per-image numbers.
    """
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    y = jax.ShapeDtypeStruct((input_shape[0],), jnp.int32)
    variables = _abstract_init(model, x)

    def forward(variables, x):
        return model.apply(variables, x, train=False)

    def train_step(variables, x, y, key):
        def loss_fn(params):
            logits, updates = model.apply(
                {**variables, "params": params},
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": key},
            )
            logp = jax.nn.log_softmax(logits)
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1)), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        params = jax.tree.map(lambda p, g: p - 0.01 * g, variables["params"], grads)
        return {**variables, **updates, "params": params}, loss

    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    fwd = xla_flops(jax.jit(forward).lower(variables, x).compile())
    train = xla_flops(jax.jit(train_step).lower(variables, x, y, key).compile())
    return fwd, train


def layer_rows(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerRow]:
    """One row per submodule call (conv, dense, batchnorm, dropout), in call order."""
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    seen: dict[str, tuple[str, tuple[int, ...]]] = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name == "__call__" and module.path and len(module.path) == 1:
            seen.setdefault(module.path[0], (type(module).__name__, tuple(out.shape)))
        return out

    def init(x):
        with nn.intercept_methods(interceptor):
            return model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train=False)

    variables = jax.eval_shape(init, x)
    params = variables["params"]
    return [LayerRow(path, kind, shape, count_params(params.get(path, {}))) for path, (kind, shape) in seen.items()]


def summarize(
    name: str,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    num_classes: int = 4,
    batch_size: int = 2,
    **overrides: Any,
) -> ModelSummary:
    """Per-layer table and per-image totals for the registered model ``name``."""
    spec = MODELS[name]
    model = create(name, num_classes=num_classes, channels=channels, **overrides)
    size = image_size or spec.image_size
    shape = (batch_size, size, size, model.channels)
    rows = layer_rows(model, shape)
    params = count_params(_abstract_init(model, jax.ShapeDtypeStruct(shape, jnp.float32))["params"])
    fwd, train = forward_and_train_flops(model, shape)
    return ModelSummary(
        model=name,
        input_shape=(size, size, model.channels),
        num_classes=num_classes,
        layers=rows,
        params=params,
        forward_flops=fwd / batch_size,
        train_step_flops=train / batch_size,
    )

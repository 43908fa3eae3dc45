"""Tiny variants of every registered model, for fast tests (not part of ``MODELS``).

A tiny variant is the registered preset with small widths passed as overrides: the same
module, kernels, paddings, poolings, BatchNorm/Dropout placement and hence the same code
paths (including the CPU-cliff rewrites), at a cost of milliseconds. (VGG keeps its five
blocks but one conv per block: XLA:CPU compile time grows with every layer.)
``TINY_IMAGE_SIZE`` is a small input every family accepts.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cxrjax.models.registry import MODELS, create

# family -> overrides that shrink it; every registered model belongs to one family.
TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    "s0": {"filters": (3, 4, 5), "dense": 6},
    "s4": {"features": (3, 4, 5, 6), "head_width": 7},
    "lenet": {"conv_features": (3, 4), "dense_features": (6, 5)},
    "vgg": {
        "blocks": ((3,), (4,), (4,), (5,), (5,)),  # five blocks (and poolings), one conv each
        "classifier_width": 6,
        "pool_size": 2,
    },
}
# The ImageNet backbones have no tiny variant (their widths are what their weights fit):
# tests use them at their smallest input, abstractly (``jax.eval_shape``) where they can.
IMAGENET_FAMILIES: dict[str, int] = {
    "mobilenet": 32,
    "resnet": 32,
    "vgg_imagenet": 32,
    "densenet": 32,
    "inception": 75,
    "xception": 71,
    "efficientnet": 32,
}
TINY_OVERRIDES.update({family: {} for family in IMAGENET_FAMILIES})
# Smallest-but-not-trivial sizes: every family's pooling leaves a >= 1x1 map.
TINY_IMAGE_SIZE: dict[str, int] = {"s0": 24, "s4": 20, "lenet": 32, "vgg": 32, **IMAGENET_FAMILIES}


def tiny_image_size(name: str) -> int:
    return TINY_IMAGE_SIZE[MODELS[name].family]


def create_tiny(
    name: str,
    *,
    num_classes: int = 3,
    channels: int | None = None,
    dtype: Any = jnp.float32,
    axis_name: str | None = None,
    **overrides: Any,
) -> nn.Module:
    """``models.create(name, ...)`` with the family's tiny widths (overridable)."""
    options = {**TINY_OVERRIDES[MODELS[name].family], **overrides}
    return create(name, num_classes=num_classes, channels=channels, dtype=dtype, axis_name=axis_name, **options)


def numpy_variables(model: nn.Module, input_shape: tuple[int, ...], seed: int = 0, dtype: Any = None) -> dict:
    """Random variables for ``model`` made on the host, without compiling an init.

    XLA:CPU takes seconds to compile a model's ``init`` (one RNG kernel per parameter);
    tests that only need *some* well-scaled parameters use this instead: kernels
    N(0, 1/fan_in), biases and BatchNorm offsets N(0, 0.1^2), BatchNorm scales
    1 + N(0, 0.1^2), running means N(0, 0.1^2), running variances in [0.5, 1.5].
    Shapes come from ``jax.eval_shape`` of the real ``init``; ``dtype`` (default: the
    parameters' float32) lets float64 tests get float64 variables directly.
    """
    rng = np.random.default_rng(seed)
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    abstract = jax.eval_shape(
        lambda x: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train=False), x
    )

    def fill(path, leaf):
        name = str(path[-1].key)
        shape = leaf.shape
        if name == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            value = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
        elif name == "scale":
            value = 1.0 + rng.normal(0.0, 0.1, shape)
        elif name == "var":
            value = rng.uniform(0.5, 1.5, shape)
        else:  # bias, BatchNorm bias, running mean
            value = rng.normal(0.0, 0.1, shape)
        return jnp.asarray(value, dtype or leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)

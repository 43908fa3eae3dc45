"""Keras-equivalent layers for the ImageNet backbones, and what every backbone shares.

The backbones (``mobilenet``, ``resnet50``, ``densenet121``...) reproduce
``keras.applications`` layer by layer, so that the weight files the studies' Keras code
loaded can be imported (``cxrjax.models.weights``). Every layer with weights is a direct
child of the backbone module named exactly as its Keras layer, and its variables are
named so that the Keras weights of that layer, in the order Keras writes them, map onto
them one to one (:data:`KERAS_ORDER`): the importer needs no per-model table.

Layouts are Keras' (NHWC activations; conv kernels [kh, kw, cin, cout]; depthwise
kernels [kh, kw, cin, multiplier]); Keras' padding "same" is XLA's "SAME" (TF-style, the
extra row / column at the bottom / right), "valid" is "VALID". Parameters are float32,
``dtype`` is the computation dtype, as in :mod:`cxrjax.models.layers`. These layers call
``lax`` directly (the stride-1 CPU rewrites of ``layers.Conv`` do not apply to strided or
"same"-padded convolutions), except depthwise convolutions, which go through
``layers.depthwise_conv2d`` for its CPU rewrite.
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cxrjax.models import layers
from cxrjax.models.base import Classifier, logits_float32

Array = jax.Array
_DIMS = ("NHWC", "HWIO", "NHWC")

# Within one layer, the order of Keras' weights (legacy HDF5 order: trainable, then
# non-trainable) -> (Flax collection, variable name). A layer's Flax variables, sorted
# by this list, are its Keras weights in file order.
# (BatchNorm: gamma, beta, moving_mean, moving_variance = flax.linen.BatchNorm's params
# scale, bias and batch_stats mean, var; EfficientNet's Normalization layer: mean,
# variance, count, kept in batch_stats as constants.)
KERAS_ORDER: tuple[tuple[str, str, str], ...] = (
    ("depthwise_kernel", "params", "depthwise_kernel"),
    ("pointwise_kernel", "params", "pointwise_kernel"),
    ("kernel", "params", "kernel"),
    ("gamma", "params", "scale"),
    ("beta", "params", "bias"),
    ("bias", "params", "bias"),
    ("moving_mean", "batch_stats", "mean"),
    ("moving_variance", "batch_stats", "var"),
    ("mean", "batch_stats", "mean"),
    ("variance", "batch_stats", "variance"),
    ("count", "batch_stats", "count"),
)

POOLINGS = (None, "avg", "max")


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _padding(padding):
    """Keras' "same" / "valid" as XLA's "SAME" / "VALID"; explicit ((top, bottom), (left, right)) as is."""
    return padding.upper() if isinstance(padding, str) else tuple(tuple(p) for p in padding)


def _glorot():
    return nn.initializers.glorot_uniform()


class KConv(nn.Module):
    """``keras.layers.Conv2D``: kernel [kh, kw, cin, features], optional bias, strides,
    padding "same" | "valid", optional ``groups``."""

    features: int
    kernel_size: int | tuple[int, int]
    strides: int | tuple[int, int] = 1
    padding: str = "valid"
    use_bias: bool = True
    groups: int = 1
    dtype: Any = jnp.float32
    kernel_init: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kh, kw = _pair(self.kernel_size)
        cin = x.shape[-1]
        kernel = self.param(
            "kernel", self.kernel_init or _glorot(), (kh, kw, cin // self.groups, self.features), jnp.float32
        )
        y = lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            _pair(self.strides),
            _padding(self.padding),
            dimension_numbers=_DIMS,
            feature_group_count=self.groups,
        )
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(self.dtype)
        return y


def _depthwise(x: Array, kernel: Array, strides, padding: str, dtype) -> Array:
    """Depthwise conv with a Keras kernel [kh, kw, cin, m]: output channel c * m + j."""
    return layers.depthwise_conv2d(x.astype(dtype), kernel.astype(dtype), _pair(strides), _padding(padding))


class DepthwiseConv(nn.Module):
    """``keras.layers.DepthwiseConv2D``: depthwise_kernel [kh, kw, cin, multiplier]."""

    kernel_size: int | tuple[int, int]
    strides: int | tuple[int, int] = 1
    padding: str = "valid"
    use_bias: bool = True
    depth_multiplier: int = 1
    dtype: Any = jnp.float32
    kernel_init: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kh, kw = _pair(self.kernel_size)
        cin = x.shape[-1]
        shape = (kh, kw, cin, self.depth_multiplier)
        kernel = self.param("depthwise_kernel", self.kernel_init or _glorot(), shape, jnp.float32)
        y = _depthwise(x, kernel, self.strides, self.padding, self.dtype)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (cin * self.depth_multiplier,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y


class SeparableConv(nn.Module):
    """``keras.layers.SeparableConv2D``: depthwise [kh, kw, cin, 1] then pointwise
    [1, 1, cin, features], optional bias."""

    features: int
    kernel_size: int | tuple[int, int]
    strides: int | tuple[int, int] = 1
    padding: str = "valid"
    use_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kh, kw = _pair(self.kernel_size)
        cin = x.shape[-1]
        dw = self.param("depthwise_kernel", _glorot(), (kh, kw, cin, 1), jnp.float32)
        pw = self.param("pointwise_kernel", _glorot(), (1, 1, cin, self.features), jnp.float32)
        y = _depthwise(x, dw, self.strides, self.padding, self.dtype)
        y = lax.conv_general_dilated(y, pw.astype(self.dtype), (1, 1), "VALID", dimension_numbers=_DIMS)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(self.dtype)
        return y


class KDense(nn.Module):
    """``keras.layers.Dense``: kernel [in, features], bias."""

    features: int
    dtype: Any = jnp.float32
    kernel_init: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", self.kernel_init or _glorot(), (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return x.astype(self.dtype) @ kernel.astype(self.dtype) + bias.astype(self.dtype)


def zero_pad(x: Array, padding: int | tuple) -> Array:
    """``keras.layers.ZeroPadding2D(padding)``: int, (h, w) or ((top, bottom), (left, right))."""
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    elif isinstance(padding[0], int):
        padding = ((padding[0], padding[0]), (padding[1], padding[1]))
    return jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))


def max_pool(x: Array, size: int, strides: int, padding: str = "valid") -> Array:
    """``keras.layers.MaxPooling2D`` (padding "same" pads with -inf, as TF). flax's pooling
    (a Python-scalar init value) is differentiable under ``jit``; an array init value is not."""
    return nn.max_pool(x, (size, size), strides=(strides, strides), padding=padding.upper())


def avg_pool(x: Array, size: int, strides: int, padding: str = "valid") -> Array:
    """``keras.layers.AveragePooling2D``: with "same", the mean over the window's valid
    (unpadded) positions only, as TF."""
    return nn.avg_pool(x, (size, size), strides=(strides, strides), padding=padding.upper(), count_include_pad=False)


def relu6(x: Array) -> Array:
    return jnp.clip(x, 0.0, 6.0)


def swish(x: Array) -> Array:
    return x * jax.nn.sigmoid(x)


class Backbone(Classifier):
    """Base of the ImageNet backbones: the Keras options every one of them takes.

    - ``include_top``: the Keras classifier (1000 ImageNet classes for the published
      weights; ``num_classes`` of them here, logits: Keras' ``classifier_activation=None``);
      without it the model returns the last feature map, or its global ``pooling``
      ("avg" | "max") vector.
    - ``freeze_batchnorm``: every BatchNorm uses its inference statistics and is never
      updated, also with ``train=True`` (a frozen Keras layer).
    - ``variant``: "keras" (keras.applications), or "torchvision" where the torchvision
      architecture differs by a small switch (the subclass says which).

    Class attributes: ``preprocessing`` (the Keras ``preprocess_input`` mode the
    published weights expect, :mod:`cxrjax.models.preprocessing`), ``default_size``
    (Keras' default input), ``min_size`` (the smallest input Keras accepts),
    ``top_layers`` (the Keras layers of the classifier), ``variants``.
    ``feature_names`` are the ``stage<i>`` activations (the last one: the last conv
    stage, Grad-CAM's default). There is no ``spatial_plan``: strided and "same"-padded
    layers do not fit its format, so Grad-CAM resizes maps plainly.
    """

    num_classes: int = 1000
    channels: int = 3
    include_top: bool = True
    pooling: str | None = None
    freeze_batchnorm: bool = False
    variant: str = "keras"

    preprocessing: ClassVar[str] = "none"
    default_size: ClassVar[int] = 224
    min_size: ClassVar[int] = 32
    top_layers: ClassVar[tuple[str, ...]] = ("predictions",)
    variants: ClassVar[tuple[str, ...]] = ("keras",)
    num_stages: ClassVar[int] = 5
    torchvision_top: ClassVar[str | None] = None  # the torchvision classifier's key prefix

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f"stage{i}" for i in range(1, self.num_stages + 1))

    @nn.nowrap
    def min_image_size(self) -> int:
        return self.min_size

    @nn.nowrap
    def check_input(self, x: Any) -> None:
        name = type(self).__name__
        if self.variant not in self.variants:
            raise ValueError(f"{name}: unknown variant {self.variant!r}; choose one of {self.variants}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"{name}: unknown pooling {self.pooling!r}; choose one of {POOLINGS}")
        if x.ndim != 4:
            raise ValueError(f"{name} expects NHWC images [batch, height, width, channels], got shape {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{name} expects float images, got {x.dtype}; convert with x.astype(jnp.float32)")
        if x.shape[-1] != self.channels:
            raise ValueError(
                f"{name} was built for {self.channels} input channel(s) but got {x.shape[-1]} "
                f"(shape {x.shape}); pass channels={x.shape[-1]} to models.create"
            )
        if min(x.shape[1], x.shape[2]) < self.min_size:
            raise ValueError(
                f"{name}: input {x.shape[1]}x{x.shape[2]} is smaller than the smallest size the Keras "
                f"model accepts, {self.min_size}x{self.min_size}"
            )

    # Layer factories: each creates a child of this module named as its Keras layer.
    @nn.nowrap
    def conv(self, name: str, features: int, kernel, strides=1, padding="valid", use_bias=True, **kw) -> KConv:
        return KConv(features, kernel, strides, padding, use_bias, dtype=self.dtype, name=name, **kw)

    @nn.nowrap
    def bn(self, name: str, train: bool, epsilon: float = 1e-3, momentum: float = 0.99, scale: bool = True):
        """``keras.layers.BatchNormalization(epsilon, momentum, scale)`` on the channel axis as
        ``flax.linen.BatchNorm`` (Keras' and flax's momentum both weight the old statistic);
        inference statistics when not training or ``freeze_batchnorm``."""
        return nn.BatchNorm(
            use_running_average=(not train) or self.freeze_batchnorm,
            momentum=momentum,
            epsilon=epsilon,
            use_scale=scale,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            axis_name=self.axis_name,
            name=name,
        )

    @nn.nowrap
    def dense(self, name: str, features: int, **kw) -> KDense:
        return KDense(features, dtype=self.dtype, name=name, **kw)

    @nn.nowrap
    def head(self, x: Array, *, flatten_top: bool = False) -> Array:
        """Keras' top: global average pooling (or flatten) -> Dense "predictions"; or
        the headless output (``pooling``)."""
        if self.include_top:
            x = x.reshape(x.shape[0], -1) if flatten_top else jnp.mean(x, axis=(1, 2))
            return logits_float32(self.dense("predictions", self.num_classes)(x))
        return self.pool_features(x)

    @nn.nowrap
    def pool_features(self, x: Array) -> Array:
        if self.pooling == "avg":
            x = jnp.mean(x, axis=(1, 2))
        elif self.pooling == "max":
            x = jnp.max(x, axis=(1, 2))
        return x.astype(jnp.promote_types(x.dtype, jnp.float32))

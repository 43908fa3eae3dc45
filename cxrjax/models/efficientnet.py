"""EfficientNet B0 and B7 as ``keras.applications.EfficientNetB0`` / ``B7``.

Built-in input normalisation (so "pixels" preprocessing: the model takes pixels in
[0, 255] as they are): Rescaling 1/255, then Keras' ``Normalization`` layer ``normalization``
((x - mean) / sqrt(variance), its mean / variance / count weights kept in batch_stats),
then, with ``imagenet_rescaling``, Keras' extra Rescaling by 1 / sqrt(stddev) (Keras adds
it for ``weights="imagenet"``: the published files store the ImageNet stddev as the
variance; :func:`cxrjax.models.load_pretrained` turns it on when a file's variance is
exactly that). Stem: ``correct_pad`` + 3x3/2 valid conv, BatchNorm, swish; MBConv blocks
``block<i><a..>_`` (expand 1x1, ``correct_pad`` + depthwise k/2 or "same" k/1,
squeeze-excite with 1x1 convs, project 1x1, stochastic depth Dropout before the
residual add, rate 0.2 * block / blocks); ``top_conv`` 1x1 to round(1280), swish. No conv
biases except squeeze-excite; BatchNorm epsilon 1e-3, momentum 0.99. Top: global average
pool, Dropout (0.2 / 0.5), Dense ``predictions``. Widths and repeats scale by
``width`` / ``depth`` (B0: 1.0 / 1.0, 224; B7: 2.0 / 3.1, 600). Smallest input 32x32.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxrjax.models.keras_layers import Backbone, DepthwiseConv, logits_float32, swish, zero_pad
from cxrjax.models.mobilenet import correct_pad

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)
# (kernel, repeats, filters_in, filters_out, expand_ratio, strides); every block has
# squeeze-excite 0.25 and an identity skip where shapes allow.
BLOCKS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)
# name -> (width, depth, default size, top dropout)
EFFICIENTNETS = {"efficientnet_b0": (1.0, 1.0, 224, 0.2), "efficientnet_b7": (2.0, 3.1, 600, 0.5)}
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "truncated_normal")
_DENSE_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform")


def round_filters(filters: float, width: float, divisor: int = 8) -> int:
    filters *= width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    return int(new + divisor if new < 0.9 * filters else new)


class Normalization(nn.Module):
    """``keras.layers.Normalization`` (axis -1) with fixed statistics: (x - mean) /
    max(sqrt(variance), 1e-7)."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32)).value
        variance = self.variable("batch_stats", "variance", lambda: jnp.ones((c,), jnp.float32)).value
        self.variable("batch_stats", "count", lambda: jnp.zeros((), jnp.float32))
        return (x - mean.astype(self.dtype)) / jnp.maximum(jnp.sqrt(variance), 1e-7).astype(self.dtype)


class EfficientNet(Backbone):
    width: float = 1.0
    depth: float = 1.0
    dropout: float = 0.2
    drop_connect_rate: float = 0.2
    imagenet_rescaling: bool = False

    preprocessing = "pixels"  # [0, 255]: the model rescales and normalises itself
    min_size = 32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        self.check_input(x)
        conv = lambda name, f, k, s=1, p="same", bias=False: self.conv(name, f, k, s, p, bias, kernel_init=_CONV_INIT)  # noqa: E731
        bn = lambda name: self.bn(name, train)  # noqa: E731
        x = x.astype(self.dtype) / 255.0
        x = Normalization(self.dtype, name="normalization")(x)
        if self.imagenet_rescaling:
            x = x * jnp.asarray([1.0 / math.sqrt(s) for s in IMAGENET_STDDEV_RGB], self.dtype)
        x = zero_pad(x, correct_pad(x.shape[1:3], 3))
        x = swish(bn("stem_bn")(conv("stem_conv", round_filters(32, self.width), 3, 2, "valid")(x)))
        repeats = [int(math.ceil(self.depth * r)) for _, r, *_ in BLOCKS]
        total, b, stage = float(sum(repeats)), 0, 0
        for i, ((k, _, f_in, f_out, expand, strides), n) in enumerate(zip(BLOCKS, repeats)):
            f_in, f_out = round_filters(f_in, self.width), round_filters(f_out, self.width)
            for j in range(n):
                name = f"block{i + 1}{chr(j + 97)}_"
                s, fi = (strides, f_in) if j == 0 else (1, f_out)
                x = self._block(x, name, k, fi, f_out, expand, s, self.drop_connect_rate * b / total, train)
                b += 1
            if i + 1 < len(BLOCKS) and BLOCKS[i + 1][5] == 2:
                stage += 1
                x = self.perturb(f"stage{stage}", x)
        x = swish(bn("top_bn")(conv("top_conv", round_filters(1280, self.width), 1)(x)))
        x = self.perturb("stage5", x)
        if not self.include_top:
            return self.pool_features(x)
        x = jnp.mean(x, axis=(1, 2))
        if self.dropout > 0:
            x = nn.Dropout(self.dropout, deterministic=not train, name="top_dropout")(x)
        return logits_float32(self.dense("predictions", self.num_classes, kernel_init=_DENSE_INIT)(x))

    @nn.nowrap
    def _block(self, inputs, name, k, f_in, f_out, expand, strides, drop_rate, train):
        filters = f_in * expand
        x = inputs
        if expand != 1:
            x = self.conv(f"{name}expand_conv", filters, 1, 1, "same", False, kernel_init=_CONV_INIT)(x)
            x = swish(self.bn(f"{name}expand_bn", train)(x))
        if strides == 2:
            x = zero_pad(x, correct_pad(x.shape[1:3], k))
        pad = "valid" if strides == 2 else "same"
        x = DepthwiseConv(
            k, strides, pad, use_bias=False, dtype=self.dtype, kernel_init=_CONV_INIT, name=f"{name}dwconv"
        )(x)
        x = swish(self.bn(f"{name}bn", train)(x))
        se = jnp.mean(x, axis=(1, 2), keepdims=True)
        se = swish(self.conv(f"{name}se_reduce", max(1, int(f_in * 0.25)), 1, 1, "same", kernel_init=_CONV_INIT)(se))
        se = jax.nn.sigmoid(self.conv(f"{name}se_expand", filters, 1, 1, "same", kernel_init=_CONV_INIT)(se))
        x = x * se
        x = self.conv(f"{name}project_conv", f_out, 1, 1, "same", False, kernel_init=_CONV_INIT)(x)
        x = self.bn(f"{name}project_bn", train)(x)
        if strides == 1 and f_in == f_out:
            if drop_rate > 0:
                x = nn.Dropout(drop_rate, broadcast_dims=(1, 2, 3), deterministic=not train, name=f"{name}drop")(x)
            x = x + inputs
        return x

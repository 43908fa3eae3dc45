"""MobileNet (v1, alpha 1.0) and MobileNetV2 (alpha 1.0), as ``keras.applications``.

MobileNet: conv1 3x3/2 "same", then 13 depthwise-separable
blocks ``conv_dw_<i>`` / ``conv_pw_<i>`` (stride-2 blocks pad ((0, 1), (0, 1)) first),
every conv without bias, BatchNorm (epsilon 1e-3, momentum 0.99) and ReLU6; top: global
average pool, Dropout 1e-3, 1x1 conv ``conv_preds`` (with bias) to the classes.
MobileNetV2: Conv1 3x3/2 "same", 17 inverted-residual blocks (expand 1x1, depthwise 3x3,
project 1x1; stride-2 depthwise convs pad ``correct_pad`` first; a residual add where
shapes allow), Conv_1 1x1 to 1280, ReLU6; BatchNorm epsilon 1e-3, momentum 0.999; top:
global average pool, Dense ``predictions``. Both: "tf" preprocessing ([-1, 1]), smallest
input 32x32.

``variant="torchvision"`` (MobileNetV2 only): torchvision's ``mobilenet_v2`` is the same
network except for symmetric padding 1 on every stride-2 3x3 conv and BatchNorm epsilon
1e-5, momentum 0.9 (PyTorch 0.1), and Dropout 0.2 before the classifier.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxrjax.models.keras_layers import Backbone, DepthwiseConv, logits_float32, relu6, zero_pad

# MobileNetV2's inverted-residual blocks: (filters, stride, expansion) for block_id 0..16.
MOBILENET_V2_BLOCKS: tuple[tuple[int, int, int], ...] = (
    (16, 1, 1),
    (24, 2, 6), (24, 1, 6),
    (32, 2, 6), (32, 1, 6), (32, 1, 6),
    (64, 2, 6), (64, 1, 6), (64, 1, 6), (64, 1, 6),
    (96, 1, 6), (96, 1, 6), (96, 1, 6),
    (160, 2, 6), (160, 1, 6), (160, 1, 6),
    (320, 1, 6),
)  # fmt: skip
# MobileNet v1's depthwise-separable blocks 1..13: (pointwise filters, stride).
MOBILENET_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip


def _mobilenet_v2_torchvision_names() -> dict[str, str]:
    names = {"Conv1": "features.0.0", "bn_Conv1": "features.0.1", "Conv_1": "features.18.0"}
    names |= {"Conv_1_bn": "features.18.1", "predictions": "classifier.1"}
    for block_id in range(len(MOBILENET_V2_BLOCKS)):
        f = f"features.{block_id + 1}.conv"
        if block_id == 0:  # no expansion: [dw conv, bn, relu], project, bn
            names |= {"expanded_conv_depthwise": f"{f}.0.0", "expanded_conv_depthwise_BN": f"{f}.0.1"}
            names |= {"expanded_conv_project": f"{f}.1", "expanded_conv_project_BN": f"{f}.2"}
            continue
        p = f"block_{block_id}_"
        names |= {f"{p}expand": f"{f}.0.0", f"{p}expand_BN": f"{f}.0.1"}
        names |= {f"{p}depthwise": f"{f}.1.0", f"{p}depthwise_BN": f"{f}.1.1"}
        names |= {f"{p}project": f"{f}.2", f"{p}project_BN": f"{f}.3"}
    return names


_MOBILENET_V2_TORCHVISION = _mobilenet_v2_torchvision_names()


def correct_pad(size: tuple[int, int], kernel: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``keras.applications.imagenet_utils.correct_pad``: the padding that makes a stride-2
    valid conv of an (h, w) map centre like TF's "same" on odd sizes."""
    c = kernel // 2
    return ((c - (1 - size[0] % 2), c), (c - (1 - size[1] % 2), c))


class MobileNetV2(Backbone):
    preprocessing = "tf"
    min_size = 32
    variants = ("keras", "torchvision")
    torchvision_top = "classifier."

    @nn.nowrap
    def torchvision_layer(self, name: str) -> str:
        """torchvision ``mobilenet_v2``'s module for Flax layer ``name``."""
        return _MOBILENET_V2_TORCHVISION[name]

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        self.check_input(x)
        tv = self.variant == "torchvision"
        eps, mom = (1e-5, 0.9) if tv else (1e-3, 0.999)
        bn = lambda name: self.bn(name, train, eps, mom)  # noqa: E731
        if tv:
            x = self.conv("Conv1", 32, 3, 2, ((1, 1), (1, 1)), use_bias=False)(x)
        else:
            x = self.conv("Conv1", 32, 3, 2, "same", use_bias=False)(x)
        x = relu6(bn("bn_Conv1")(x))
        stage = 0  # stage<i>: the last block at each resolution (strides 2, 4, 8, 16, 32)
        for block_id, (filters, stride, expansion) in enumerate(MOBILENET_V2_BLOCKS):
            inputs = x
            in_channels = x.shape[-1]
            prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
            if block_id:
                x = self.conv(f"{prefix}expand", expansion * in_channels, 1, use_bias=False)(x)
                x = relu6(bn(f"{prefix}expand_BN")(x))
            if stride == 2:
                pad = ((1, 1), (1, 1)) if tv else correct_pad(x.shape[1:3], 3)
                x = zero_pad(x, pad)
            padding = "same" if stride == 1 else "valid"
            x = DepthwiseConv(3, stride, padding, use_bias=False, dtype=self.dtype, name=f"{prefix}depthwise")(x)
            x = relu6(bn(f"{prefix}depthwise_BN")(x))
            x = self.conv(f"{prefix}project", filters, 1, use_bias=False)(x)
            x = bn(f"{prefix}project_BN")(x)
            if in_channels == filters and stride == 1:
                x = inputs + x
            if block_id + 1 < len(MOBILENET_V2_BLOCKS) and MOBILENET_V2_BLOCKS[block_id + 1][1] == 2:
                stage += 1
                x = self.perturb(f"stage{stage}", x)
        x = self.conv("Conv_1", 1280, 1, use_bias=False)(x)
        x = relu6(bn("Conv_1_bn")(x))
        x = self.perturb("stage5", x)
        if self.include_top and tv:
            x = nn.Dropout(0.2, deterministic=not train, name="dropout")(jnp.mean(x, axis=(1, 2)))
            return logits_float32(self.dense("predictions", self.num_classes)(x))
        return self.head(x)


class MobileNet(Backbone):
    preprocessing = "tf"
    min_size = 32
    top_layers = ("conv_preds",)
    num_stages = 6
    dropout: float = 1e-3

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        self.check_input(x)
        x = self.conv("conv1", 32, 3, 2, "same", use_bias=False)(x)
        x = relu6(self.bn("conv1_bn", train)(x))
        x = self.perturb("stage1", x)
        stage = 1
        for i, (filters, stride) in enumerate(MOBILENET_BLOCKS, start=1):
            if stride == 2:
                stage += 1
                x = self.perturb(f"stage{stage}", x)
                x = zero_pad(x, ((0, 1), (0, 1)))
            padding = "same" if stride == 1 else "valid"
            x = DepthwiseConv(3, stride, padding, use_bias=False, dtype=self.dtype, name=f"conv_dw_{i}")(x)
            x = relu6(self.bn(f"conv_dw_{i}_bn", train)(x))
            x = self.conv(f"conv_pw_{i}", filters, 1, use_bias=False)(x)
            x = relu6(self.bn(f"conv_pw_{i}_bn", train)(x))
        x = self.perturb("stage6", x)
        if not self.include_top:
            return self.pool_features(x)
        x = jnp.mean(x, axis=(1, 2), keepdims=True)
        x = nn.Dropout(self.dropout, deterministic=not train, name="dropout")(x)
        x = self.conv("conv_preds", self.num_classes, 1, padding="same")(x)
        return logits_float32(x.reshape(x.shape[0], self.num_classes))

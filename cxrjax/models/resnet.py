"""ResNet50 (v1) as ``keras.applications.ResNet50``, and torchvision's ``resnet50``.

conv1: ZeroPadding2D(3) + 7x7/2 conv (with bias), BatchNorm, ReLU; ZeroPadding2D(1) +
3x3/2 max-pool; four stacks ``conv2``..``conv5`` of 3/4/6/3 bottleneck blocks
``conv<s>_block<b>``: 1x1 (stride 2 in the first block of conv3..conv5) -> 3x3 "same" ->
1x1 (4x filters), the first block with a 1x1 conv + BatchNorm shortcut ``_0_``; every
conv with bias, every BatchNorm epsilon 1.001e-5, momentum 0.99; top: global average
pool, Dense ``predictions``. "caffe" preprocessing; smallest input 32x32.

``variant="torchvision"`` (torchvision's ResNet50 "v1.5"): the stride on the 3x3 conv
(padding 1) instead of the first 1x1, no conv biases, BatchNorm epsilon 1e-5,
momentum 0.9; the torchvision weights expect "torch" preprocessing.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from cxrjax.models.keras_layers import Backbone, max_pool, zero_pad

RESNET50_STACKS: tuple[tuple[int, int, int], ...] = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))


class ResNet50(Backbone):
    preprocessing = "caffe"
    min_size = 32
    variants = ("keras", "torchvision")
    torchvision_top = "fc."

    @nn.nowrap
    def torchvision_layer(self, name: str) -> str:
        """torchvision ``resnet50``'s module for Flax layer ``name``."""
        if name == "predictions":
            return "fc"
        if name.startswith("conv1_"):
            return {"conv1_conv": "conv1", "conv1_bn": "bn1"}[name]
        stack, block, i, kind = name.split("_")  # conv3_block2_1_conv
        prefix = f"layer{int(stack[4:]) - 1}.{int(block[5:]) - 1}"
        if i == "0":
            return f"{prefix}.downsample.{0 if kind == 'conv' else 1}"
        return f"{prefix}.{kind}{i}"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        self.check_input(x)
        tv = self.variant == "torchvision"
        eps, mom, bias = (1e-5, 0.9, False) if tv else (1.001e-5, 0.99, True)
        bn = lambda name: self.bn(name, train, eps, mom)  # noqa: E731
        x = self.conv("conv1_conv", 64, 7, 2, use_bias=bias)(zero_pad(x, 3))
        x = nn.relu(bn("conv1_bn")(x))
        x = self.perturb("stage1", x)
        x = max_pool(zero_pad(x, 1), 3, 2)
        for s, (filters, blocks, stride) in enumerate(RESNET50_STACKS, start=2):
            for b in range(1, blocks + 1):
                name = f"conv{s}_block{b}"
                st = stride if b == 1 else 1
                if b == 1:
                    shortcut = self.conv(f"{name}_0_conv", 4 * filters, 1, st, use_bias=bias)(x)
                    shortcut = bn(f"{name}_0_bn")(shortcut)
                else:
                    shortcut = x
                y = self.conv(f"{name}_1_conv", filters, 1, 1 if tv else st, use_bias=bias)(x)
                y = nn.relu(bn(f"{name}_1_bn")(y))
                pad = ((1, 1), (1, 1)) if tv else "same"
                y = self.conv(f"{name}_2_conv", filters, 3, st if tv else 1, pad, use_bias=bias)(y)
                y = nn.relu(bn(f"{name}_2_bn")(y))
                y = self.conv(f"{name}_3_conv", 4 * filters, 1, use_bias=bias)(y)
                y = bn(f"{name}_3_bn")(y)
                x = nn.relu(shortcut + y)
            x = self.perturb(f"stage{s}", x)
        return self.head(x)

"""DenseNet121 / DenseNet201 as ``keras.applications``, and torchvision's densenets.

conv1: ZeroPadding2D(3) + 7x7/2 conv, BatchNorm, ReLU, ZeroPadding2D(1) + 3x3/2 max-pool;
dense blocks ``conv2``..``conv5`` (121: 6/12/24/16 layers, 201: 6/12/48/32) of
``conv<s>_block<i>``: BatchNorm, ReLU, 1x1 conv to 128, BatchNorm, ReLU, 3x3 "same" conv to
32 (growth rate), concatenated to the input; transitions ``pool2``..``pool4``: BatchNorm,
ReLU, 1x1 conv to half the channels, 2x2 average pool; final BatchNorm ``bn`` + ReLU; no
conv biases; BatchNorm epsilon 1.001e-5, momentum 0.99. Top: global average pool, Dense
``predictions``. "torch" preprocessing; smallest input 32x32.

``variant="torchvision"``: the same network with BatchNorm epsilon 1e-5, momentum 0.9.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxrjax.models.keras_layers import Backbone, avg_pool, max_pool, zero_pad

DENSENET_BLOCKS = {"densenet121": (6, 12, 24, 16), "densenet201": (6, 12, 48, 32)}


class DenseNet(Backbone):
    blocks: tuple[int, ...] = DENSENET_BLOCKS["densenet121"]
    growth_rate: int = 32

    preprocessing = "torch"
    min_size = 32
    variants = ("keras", "torchvision")
    torchvision_top = "classifier."

    @nn.nowrap
    def torchvision_layer(self, name: str) -> str:
        """torchvision ``densenet121`` / ``densenet201``'s module for Flax layer ``name``."""
        fixed = {"conv1_conv": "features.conv0", "conv1_bn": "features.norm0", "bn": "features.norm5"}
        if name in fixed:
            return fixed[name]
        if name == "predictions":
            return "classifier"
        parts = name.split("_")
        s = int(parts[0][4:])
        if parts[0].startswith("pool"):  # pool3_bn -> features.transition2.norm
            return f"features.transition{s - 1}.{'norm' if parts[1] == 'bn' else 'conv'}"
        i = int(parts[1][5:])
        leaf = {("0", "bn"): "norm1", ("1", "conv"): "conv1", ("1", "bn"): "norm2", ("2", "conv"): "conv2"}
        return f"features.denseblock{s - 1}.denselayer{i}.{leaf[(parts[2], parts[3])]}"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        self.check_input(x)
        eps, mom = (1e-5, 0.9) if self.variant == "torchvision" else (1.001e-5, 0.99)
        bn = lambda name: self.bn(name, train, eps, mom)  # noqa: E731
        x = self.conv("conv1_conv", 64, 7, 2, use_bias=False)(zero_pad(x, 3))
        x = nn.relu(bn("conv1_bn")(x))
        x = self.perturb("stage1", x)
        x = max_pool(zero_pad(x, 1), 3, 2)
        for s, n in enumerate(self.blocks, start=2):
            for i in range(1, n + 1):
                name = f"conv{s}_block{i}"
                y = nn.relu(bn(f"{name}_0_bn")(x))
                y = self.conv(f"{name}_1_conv", 4 * self.growth_rate, 1, use_bias=False)(y)
                y = nn.relu(bn(f"{name}_1_bn")(y))
                y = self.conv(f"{name}_2_conv", self.growth_rate, 3, padding="same", use_bias=False)(y)
                x = jnp.concatenate([x, y], axis=-1)
            if s < 5:
                x = nn.relu(bn(f"pool{s}_bn")(x))
                x = self.perturb(f"stage{s}", x)
                x = self.conv(f"pool{s}_conv", int(x.shape[-1] * 0.5), 1, use_bias=False)(x)
                x = avg_pool(x, 2, 2)
        x = nn.relu(bn("bn")(x))
        x = self.perturb("stage5", x)
        return self.head(x)

"""S3's LeNet-5 for 32x32 grayscale (PyTorch Lightning in the study).

conv 6@5x5 -> ReLU -> max-pool 2 -> conv 16@5x5 -> ReLU -> max-pool 2 -> flatten (400)
-> dense 120 -> ReLU -> dense 84 -> ReLU -> dense K.

The study's "LeNet-5" is the usual PyTorch tutorial version: ReLU and max pooling, not
LeCun's tanh and subsampling, and no padding (32 -> 28 -> 14 -> 10 -> 5). Parameter count
for 32x32x1 and K = 3 classes (S3 reports about 61.1 k):
  conv1 5*5*1*6 + 6 = 156, conv2 5*5*6*16 + 16 = 2,416, dense 400*120 + 120 = 48,120,
  dense 120*84 + 84 = 10,164, dense 84*3 + 3 = 255; total 61,111.
Initialisation: PyTorch defaults ("torch"). Flattening is NHWC (a weight port from
PyTorch must permute the 400 inputs of the first dense layer from CHW order).
"""

from __future__ import annotations

import flax.linen as nn
import jax

from cxrjax.models.base import Classifier, logits_float32
from cxrjax.models.layers import Conv, Dense, MaxPool, Plan, flatten


class LeNet5(Classifier):
    channels: int = 1
    conv_features: tuple[int, int] = (6, 16)
    dense_features: tuple[int, int] = (120, 84)
    init_style: str = "torch"

    @nn.nowrap
    def spatial_plan(self) -> Plan:
        return [("conv", 5, 0), ("pool",), ("conv", 5, 0), ("pool",)]

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        self.check_input(x)
        for i, features in enumerate(self.conv_features, start=1):
            x = Conv(features, 5, 0, init_style=self.init_style, dtype=self.dtype, name=f"conv{i}")(x)
            x = nn.relu(x)
            x = self.perturb(f"feat{i}", x)
            x = MaxPool(name=f"pool{i}")(x)
        x = flatten(x)
        for i, features in enumerate(self.dense_features, start=1):
            x = nn.relu(Dense(features, init_style=self.init_style, dtype=self.dtype, name=f"dense{i}")(x))
        x = Dense(self.num_classes, init_style=self.init_style, dtype=self.dtype, name="logits")(x)
        return logits_float32(x)

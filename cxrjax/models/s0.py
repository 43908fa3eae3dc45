"""S0's simple Keras CNNs (A, B, C and, through options, E).

Three blocks [Conv2D 3x3 (Keras default "valid" padding) -> ReLU -> (perturb) ->
MaxPool 2x2 -> (Dropout ``block_dropout``)], flatten, Dense ``dense`` -> ReLU ->
Dropout ``head_dropout`` -> Dense K (logits; the study's softmax lives in the loss).

- S0-A: filters not stated in the study; 32/64/128 (S0-C's, the Keras-tutorial
  default) is used, so ``s0_a`` and ``s0_c`` are the same network under two names.
- S0-B: A + Dropout 0.2 after each block, Dense 64, Dropout 0.3 before the output.
- S0-C: filters 32/64/128, Dense 128, Dropout 0.5.
- S0-E: S0-C without dropout and 2 classes:
  ``models.create("s0_c", num_classes=2, head_dropout=0.0)``.
Initialisation: Keras defaults (Glorot-uniform kernels, zero biases).

At 150x150x3, K = 4: 150 -> 148 -> 74 -> 72 -> 36 -> 34 -> 17; flatten 17*17*128 = 36,992.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from cxrjax.models.base import Classifier, logits_float32
from cxrjax.models.layers import Conv, Dense, MaxPool, Plan, flatten


class SimpleCNN(Classifier):
    channels: int = 3
    filters: tuple[int, ...] = (32, 64, 128)
    dense: int = 128
    block_dropout: float = 0.0
    head_dropout: float = 0.5
    init_style: str = "keras"

    @nn.nowrap
    def spatial_plan(self) -> Plan:
        return [step for _ in self.filters for step in (("conv", 3, 0), ("pool",))]

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        self.check_input(x)
        for i, f in enumerate(self.filters, start=1):
            x = nn.relu(Conv(f, 3, 0, init_style=self.init_style, dtype=self.dtype, name=f"conv{i}")(x))
            x = self.perturb(f"feat{i}", x)
            x = MaxPool(name=f"pool{i}")(x)
            if self.block_dropout:
                x = nn.Dropout(self.block_dropout, deterministic=not train, name=f"dropout{i}")(x)
        x = flatten(x)
        x = nn.relu(Dense(self.dense, init_style=self.init_style, dtype=self.dtype, name="dense")(x))
        if self.head_dropout:
            x = nn.Dropout(self.head_dropout, deterministic=not train, name="head_dropout")(x)
        x = Dense(self.num_classes, init_style=self.init_style, dtype=self.dtype, name="logits")(x)
        return logits_float32(x)

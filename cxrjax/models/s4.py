"""S4's BatchNorm / Dropout ablation network (PyTorch in the study), as ONE module.

Four conv stages, each: conv (stride 1) -> [BatchNorm] -> ReLU -> [max-pool 2x2]
-> [Dropout]; then a classification head. The experiments differ only in:

- ``layout`` "exp1": 3->128 k8 p2, 128->64 k4 p2, 64->32 k3 p2, 32->32 k3 p2, every stage
  pooled. "exp2" (Exp2..Exp9): 3->16 k10 p0, 16->32 k6 p2, 32->64 k3 p2, 64->128 k3 p2,
  every stage pooled except the first (SPEC: "ReLU + MaxPool after every layer except
  the first"; the first stage still has its ReLU).
- ``batchnorm`` "none" | "first" | "all": BatchNorm after the conv of the first / every
  stage, before the ReLU (PyTorch momentum 0.1, eps 1e-5).
- ``dropout``: rate of the Dropout after every conv stage (after its pooling) and after
  the head's hidden layer ("Dropout 0.25 on every layer"); 0 disables it.

Head (the study does not specify it beyond "a small MLP"): flatten -> Dense
``head_width`` (128) -> ReLU -> [Dropout] -> Dense K. Flatten rather than global pooling
because that is what a PyTorch ``nn.Sequential`` of this era does, and it keeps the
spatial information the study's network had. ``head_width=0`` gives flatten -> Dense K.

Parameter arithmetic, default size 128x128x3 (S4 does not state its input size; 128 is
the default here, 224 also works), K = 4, ``head_width`` 128:
- exp2: 128 -k10p0-> 119 -k6p2-> 118 -pool-> 59 -k3p2-> 61 -pool-> 30 -k3p2-> 32 -pool-> 16.
  conv1 10*10*3*16+16 = 4,816; conv2 6*6*16*32+32 = 18,464; conv3 3*3*32*64+64 = 18,496;
  conv4 3*3*64*128+128 = 73,856; head 16*16*128*128+128 = 4,194,432; logits 128*4+4 = 516.
  Total 4,310,580 without BatchNorm; BatchNorm adds 2 params per channel:
  "first" +32 = 4,310,612, "all" +2*(16+32+64+128) = +480 = 4,311,060.
- exp1: 128 -k8p2-> 125 -pool-> 62 -k4p2-> 63 -pool-> 31 -k3p2-> 33 -pool-> 16 -k3p2-> 18
  -pool-> 9. conv1 8*8*3*128+128 = 24,704; conv2 4*4*128*64+64 = 131,136;
  conv3 3*3*64*32+32 = 18,464; conv4 3*3*32*32+32 = 9,248; head 9*9*32*128+128 = 331,904;
  logits 516. Total 515,972.
Initialisation: PyTorch defaults ("torch").
"""

from __future__ import annotations

import flax.linen as nn
import jax

from cxrjax.models.base import Classifier, logits_float32
from cxrjax.models.layers import Conv, Dense, MaxPool, Plan, batch_norm, flatten

# layout -> (features, kernels, paddings, pooled) per stage
LAYOUTS: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[bool, ...]]] = {
    "exp1": ((128, 64, 32, 32), (8, 4, 3, 3), (2, 2, 2, 2), (True, True, True, True)),
    "exp2": ((16, 32, 64, 128), (10, 6, 3, 3), (0, 2, 2, 2), (False, True, True, True)),
}
BATCHNORM_PLACEMENTS = ("none", "first", "all")


class S4CNN(Classifier):
    channels: int = 3
    layout: str = "exp2"
    batchnorm: str = "none"
    dropout: float = 0.0
    head_width: int = 128
    # Test-only / exploration: replace the layout's conv widths (same kernels, paddings).
    features: tuple[int, ...] | None = None
    init_style: str = "torch"

    @nn.nowrap
    def _layout(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"S4CNN: unknown layout {self.layout!r}; choose one of {tuple(LAYOUTS)}")
        if self.batchnorm not in BATCHNORM_PLACEMENTS:
            raise ValueError(f"S4CNN: unknown batchnorm {self.batchnorm!r}; choose one of {BATCHNORM_PLACEMENTS}")
        features, kernels, paddings, pooled = LAYOUTS[self.layout]
        if self.features is not None:
            if len(self.features) != len(features):
                raise ValueError(f"S4CNN: features must have {len(features)} entries, got {self.features}")
            features = tuple(self.features)
        return features, kernels, paddings, pooled

    @nn.nowrap
    def spatial_plan(self) -> Plan:
        _, kernels, paddings, pooled = self._layout()
        plan: list[tuple] = []
        for k, p, pool in zip(kernels, paddings, pooled):
            plan.append(("conv", k, p))
            if pool:
                plan.append(("pool",))
        return plan

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        self.check_input(x)
        features, kernels, paddings, pooled = self._layout()
        for i, (f, k, p, pool) in enumerate(zip(features, kernels, paddings, pooled), start=1):
            x = Conv(f, k, p, init_style=self.init_style, dtype=self.dtype, name=f"conv{i}")(x)
            if self.batchnorm == "all" or (self.batchnorm == "first" and i == 1):
                x = batch_norm(train, self.axis_name, self.dtype, name=f"bn{i}")(x)
            x = nn.relu(x)
            x = self.perturb(f"feat{i}", x)
            if pool:
                x = MaxPool(name=f"pool{i}")(x)
            if self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train, name=f"dropout{i}")(x)
        x = flatten(x)
        if self.head_width:
            x = nn.relu(Dense(self.head_width, init_style=self.init_style, dtype=self.dtype, name="head")(x))
            if self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train, name="head_dropout")(x)
        x = Dense(self.num_classes, init_style=self.init_style, dtype=self.dtype, name="logits")(x)
        return logits_float32(x)

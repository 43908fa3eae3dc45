"""VGG16 from scratch: S3's faithful version (``vgg16``) and a trainable one (``vgg16_bn``).

Features: 13 conv 3x3 padding 1 (64-64 / 128-128 / 256x3 / 512x3 / 512x3), each followed
by [BatchNorm] and ReLU, a 2x2 max-pool after every block. Head:
- "classifier" (torchvision / S3): adaptive average pool to 7x7, flatten (25,088 at 512
  channels), Dense 4096 -> ReLU -> Dropout 0.5 -> Dense 4096 -> ReLU -> Dropout 0.5 ->
  Dense K.
- "gap": global average pool -> Dropout -> Dense K (a head a practitioner would use from
  scratch on a few hundred images: 2k head parameters instead of 120 M).

``vgg16`` = batchnorm False, head "classifier", torchvision init (He-normal fan-out convs,
N(0, 0.01) dense); S3's own init is ``init_style="normal_0.05"`` (every weight N(0, 0.05), zero
biases). Parameters at 224x224x1, K = 3: features 14,713,536 (first conv 9*1*64+64 = 640)
+ 25,088*4,096+4,096 + 4,096*4,096+4,096 + 4,096*3+3 = 134,271,683 (S3: "134 M, 537 MB").
``vgg16_bn`` = the same with BatchNorm after every conv (torchvision's vgg16_bn; 2 params
per channel: +8,448). Smallest input: 32x32 (five poolings); the adaptive pool then
replicates the 1x1 map to 7x7 exactly as PyTorch does.

``vgg16_imagenet`` (:class:`ImageNetVGG16`) is the Keras / torchvision ImageNet VGG16
(3 channels, 224, the same convolutions with Keras' layer names) that the published
weights load into.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxrjax.models.base import Classifier, logits_float32
from cxrjax.models.keras_layers import Backbone, KDense
from cxrjax.models.layers import (
    Conv,
    Dense,
    MaxPool,
    Plan,
    adaptive_avg_pool,
    batch_norm,
    flatten,
)

# Conv widths per block; a max-pool ends every block.
VGG16_BLOCKS: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
HEADS = ("classifier", "gap")


class VGG(Classifier):
    channels: int = 1
    blocks: tuple[tuple[int, ...], ...] = VGG16_BLOCKS
    batchnorm: bool = False
    head: str = "classifier"
    classifier_width: int = 4096
    pool_size: int = 7
    dropout: float = 0.5
    init_style: str = "torchvision"

    @nn.nowrap
    def spatial_plan(self) -> Plan:
        return [step for b in self.blocks for step in ([("conv", 3, 1)] * len(b) + [("pool",)])]

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        self.check_input(x)
        if self.head not in HEADS:
            raise ValueError(f"VGG: unknown head {self.head!r}; choose one of {HEADS}")
        i = 0
        for j, block in enumerate(self.blocks, start=1):
            for f in block:
                i += 1
                x = Conv(f, 3, 1, init_style=self.init_style, dtype=self.dtype, name=f"conv{i}")(x)
                if self.batchnorm:
                    x = batch_norm(train, self.axis_name, self.dtype, name=f"bn{i}")(x)
                x = nn.relu(x)
                x = self.perturb(f"feat{i}", x)
            x = MaxPool(name=f"pool{j}")(x)
        dense = lambda n, name: Dense(n, init_style=self.init_style, dtype=self.dtype, name=name)  # noqa: E731
        if self.head == "gap":
            x = jnp.mean(x, axis=(1, 2))
            if self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train, name="dropout")(x)
        else:
            x = flatten(adaptive_avg_pool(x, self.pool_size))
            for k in (1, 2):
                x = nn.relu(dense(self.classifier_width, f"fc{k}")(x))
                if self.dropout:
                    x = nn.Dropout(self.dropout, deterministic=not train, name=f"dropout{k}")(x)
        return logits_float32(dense(self.num_classes, "logits")(x))


class ImageNetVGG16(Backbone):
    """``keras.applications.VGG16`` (3 channels, 224): :data:`VGG16_BLOCKS` of 3x3 "same"
    convs ``block<j>_conv<k>`` (with bias, ReLU; ``layers.Conv`` with padding 1 is Keras'
    stride-1 "same") and 2x2 max-pools ``block<j>_pool``; top: flatten, ``fc1`` 4096 ReLU,
    ``fc2`` 4096 ReLU, ``predictions``. Headless: the block5 pool's output. "caffe"
    preprocessing; smallest input 32x32. The flattening top's width depends on the input
    size (7x7x512 at 224), as in Keras.

    ``variant="torchvision"`` (torchvision's ``vgg16``): the top first average-pools
    adaptively to 7x7 (identity at 224) and flattens channel-major (PyTorch's CHW), with
    Dropout 0.5 after fc1 and fc2; its weights expect "torch" preprocessing.
    """

    preprocessing = "caffe"
    min_size = 32
    top_layers = ("fc1", "fc2", "predictions")
    variants = ("keras", "torchvision")
    torchvision_top = "classifier."

    @nn.nowrap
    def torchvision_layer(self, name: str) -> str:
        """torchvision ``vgg16``'s module for Flax layer ``name``: ``features.<i>`` counts
        each conv, ReLU and pool; ``classifier.0/3/6`` are fc1, fc2, predictions."""
        top = {"fc1": "classifier.0", "fc2": "classifier.3", "predictions": "classifier.6"}
        if name in top:
            return top[name]
        j, k = (int(v) for v in name.removeprefix("block").split("_conv"))
        index = sum(2 * len(b) + 1 for b in VGG16_BLOCKS[: j - 1]) + 2 * (k - 1)
        return f"features.{index}"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        self.check_input(x)
        for j, block in enumerate(VGG16_BLOCKS, start=1):
            for k, f in enumerate(block, start=1):
                x = Conv(f, 3, 1, init_style="keras", dtype=self.dtype, name=f"block{j}_conv{k}")(x)
                x = nn.relu(x)
            x = self.perturb(f"stage{j}", x)
            x = MaxPool(name=f"block{j}_pool")(x)
        if not self.include_top:
            return self.pool_features(x)
        tv = self.variant == "torchvision"
        if tv:
            x = adaptive_avg_pool(x, 7).transpose(0, 3, 1, 2)
        x = x.reshape(x.shape[0], -1)
        for name in ("fc1", "fc2"):
            x = nn.relu(KDense(4096, dtype=self.dtype, name=name)(x))
            if tv:
                x = nn.Dropout(0.5, deterministic=not train, name=f"{name}_dropout")(x)
        return logits_float32(KDense(self.num_classes, dtype=self.dtype, name="predictions")(x))

"""InceptionV3 as ``keras.applications.InceptionV3``.

Every conv is Keras' ``conv2d_bn``: conv without bias ("same" unless noted), BatchNorm
without scale (epsilon 1e-3, momentum 0.99), ReLU. Stem: 3x3/2 valid 32, 3x3 valid 32,
3x3 64, 3x3/2 max-pool, 1x1 valid 80, 3x3 valid 192, 3x3/2 max-pool; mixed0-2 (35x35 at
299), mixed3 (reduction), mixed4-7 (17x17, 1x7 / 7x1 factorised), mixed8 (reduction),
mixed9-10 (8x8); average-pool branches are 3x3/1 "same" (the mean over the valid
positions). Top: global average pool, Dense ``predictions``. "tf" preprocessing; default
299, smallest 75x75.

Keras names these layers automatically ("conv2d", "conv2d_1".. and
"batch_normalization".., in creation order, numbered per session; Keras 2's files start at
"_1"): so are they named here, and the importer pairs them by that order.

``variant="torchvision"`` (torchvision's ``inception_v3``, ``Inception3``): the same
layers with the same shapes (Mixed_6b..6e: 1x7 / 7x1 widths 128, 160, 160, 192), the
branches in the same order in every concatenation, the same "valid" stride-2 convs and
3x3/2 max-pools, BatchNorm epsilon 1e-3; its stride-1 convs pad k // 2 on each side, which
is TF's "same" for these odd kernels. It differs in: BatchNorm with a scale
(``affine=True``) and momentum 0.9 (PyTorch 0.1); the average-pool branches'
``F.avg_pool2d(3, 1, padding=1)``, whose zero padding counts in the mean
(``count_include_pad=True``: a border position divides by 9, Keras by its valid
neighbours); Dropout 0.5 before ``fc`` (train only). Its auxiliary classifier
(``AuxLogits.*``, run only in training mode) is not part of this model: the importer
skips those tensors and says so (``torchvision_skipped``; ``weights.load_pretrained``).

Input: torchvision's pretrained ``inception_v3`` (``weights=IMAGENET1K_V1``) sets
``transform_input=True``: it takes ImageNet-normalised input ("torch" preprocessing)
and maps channel c back by ``x * std_c / 0.5 + (mean_c - 0.5) / 0.5``, i.e. the network
sees ``pixels / 127.5 - 1``, Keras' "tf" preprocessing (the weights are ported from
TensorFlow). So the torchvision variant expects "tf" preprocessing
(``models.preprocessing_mode("inception_v3", "torchvision")``), which reproduces
torchvision's pretrained pipeline; a state dict trained with ``transform_input=False``
on "torch"-normalised input needs "torch" set explicitly (``TrainConfig.preprocessing``).
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxrjax.models.keras_layers import Backbone, avg_pool, logits_float32, max_pool

_TV_A = ("branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3")
_TV_B = ("branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3")
_TV_C = ("branch1x1", *(f"branch7x7_{i}" for i in (1, 2, 3)), *(f"branch7x7dbl_{i}" for i in (1, 2, 3, 4, 5)))
_TV_D = ("branch3x3_1", "branch3x3_2", *(f"branch7x7x3_{i}" for i in (1, 2, 3, 4)))
_TV_E = ("branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b")
_TV_E += ("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3a", "branch3x3dbl_3b")
_TV_BLOCKS = (
    ("5b", _TV_A + ("branch_pool",)), ("5c", _TV_A + ("branch_pool",)), ("5d", _TV_A + ("branch_pool",)),
    ("6a", _TV_B),
    *((b, _TV_C + ("branch_pool",)) for b in ("6b", "6c", "6d", "6e")),
    ("7a", _TV_D),
    ("7b", _TV_E + ("branch_pool",)), ("7c", _TV_E + ("branch_pool",)),
)  # fmt: skip
# torchvision Inception3's BasicConv2d modules in the order __call__ creates its conv2d_bn
# layers: the i-th "conv2d[_i]" / "batch_normalization[_i]" is TORCHVISION_CONVS[i]'s .conv / .bn.
TORCHVISION_CONVS: tuple[str, ...] = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
    *(f"Mixed_{block}.{branch}" for block, branches in _TV_BLOCKS for branch in branches),
)  # fmt: skip


class InceptionV3(Backbone):
    preprocessing = "tf"
    default_size = 299
    min_size = 75
    variants = ("keras", "torchvision")
    torchvision_top = "fc."
    torchvision_preprocessing = "tf"  # transform_input=True's input: see the module docstring
    torchvision_skipped = ("AuxLogits.",)  # torchvision's training-only auxiliary classifier

    @nn.nowrap
    def torchvision_layer(self, name: str) -> str:
        """torchvision ``inception_v3``'s module for Flax layer ``name``."""
        if name == "predictions":
            return "fc"
        kind, number = re.fullmatch(r"(conv2d|batch_normalization)(?:_(\d+))?", name).groups()
        return f"{TORCHVISION_CONVS[int(number or 0)]}.{'conv' if kind == 'conv2d' else 'bn'}"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        self.check_input(x)
        tv = self.variant == "torchvision"
        bn_options = (1e-3, 0.9, True) if tv else (1e-3, 0.99, False)  # epsilon, momentum, scale
        count = 0

        def cbr(x, filters, rows, cols, strides=1, padding="same"):
            nonlocal count
            suffix = f"_{count}" if count else ""
            count += 1
            x = self.conv(f"conv2d{suffix}", filters, (rows, cols), strides, padding, use_bias=False)(x)
            return nn.relu(self.bn(f"batch_normalization{suffix}", train, *bn_options)(x))

        def pool_branch(x, filters):
            if tv:  # F.avg_pool2d(x, 3, 1, padding=1): the zero padding counts in the mean
                pooled = nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=True)
            else:
                pooled = avg_pool(x, 3, 1, "same")
            return cbr(pooled, filters, 1, 1)

        cat = lambda *xs: jnp.concatenate(xs, axis=-1)  # noqa: E731
        x = cbr(x, 32, 3, 3, 2, "valid")
        x = cbr(x, 32, 3, 3, padding="valid")
        x = cbr(x, 64, 3, 3)
        x = self.perturb("stage1", x)
        x = max_pool(x, 3, 2)
        x = cbr(x, 80, 1, 1, padding="valid")
        x = cbr(x, 192, 3, 3, padding="valid")
        x = self.perturb("stage2", x)
        x = max_pool(x, 3, 2)
        for pool_filters in (32, 64, 64):  # mixed0, 1, 2
            b1 = cbr(x, 64, 1, 1)
            b5 = cbr(cbr(x, 48, 1, 1), 64, 5, 5)
            b3 = cbr(cbr(cbr(x, 64, 1, 1), 96, 3, 3), 96, 3, 3)
            x = cat(b1, b5, b3, pool_branch(x, pool_filters))
        x = self.perturb("stage3", x)
        b3 = cbr(x, 384, 3, 3, 2, "valid")  # mixed3
        b3d = cbr(cbr(cbr(x, 64, 1, 1), 96, 3, 3), 96, 3, 3, 2, "valid")
        x = cat(b3, b3d, max_pool(x, 3, 2))
        for width in (128, 160, 160, 192):  # mixed4..7
            b1 = cbr(x, 192, 1, 1)
            b7 = cbr(cbr(cbr(x, width, 1, 1), width, 1, 7), 192, 7, 1)
            b7d = cbr(x, width, 1, 1)
            for filters, rows, cols in ((width, 7, 1), (width, 1, 7), (width, 7, 1), (192, 1, 7)):
                b7d = cbr(b7d, filters, rows, cols)
            x = cat(b1, b7, b7d, pool_branch(x, 192))
        x = self.perturb("stage4", x)
        b3 = cbr(cbr(x, 192, 1, 1), 320, 3, 3, 2, "valid")  # mixed8
        b7 = cbr(cbr(cbr(cbr(x, 192, 1, 1), 192, 1, 7), 192, 7, 1), 192, 3, 3, 2, "valid")
        x = cat(b3, b7, max_pool(x, 3, 2))
        for _ in range(2):  # mixed9, 10
            b1 = cbr(x, 320, 1, 1)
            b3 = cbr(x, 384, 1, 1)
            b3 = cat(cbr(b3, 384, 1, 3), cbr(b3, 384, 3, 1))
            b3d = cbr(cbr(x, 448, 1, 1), 384, 3, 3)
            b3d = cat(cbr(b3d, 384, 1, 3), cbr(b3d, 384, 3, 1))
            x = cat(b1, b3, b3d, pool_branch(x, 192))
        x = self.perturb("stage5", x)
        if self.include_top and tv:
            x = nn.Dropout(0.5, deterministic=not train, name="dropout")(jnp.mean(x, axis=(1, 2)))
            return logits_float32(self.dense("predictions", self.num_classes)(x))
        return self.head(x)

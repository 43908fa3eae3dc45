"""Xception as ``keras.applications.Xception``.

Entry flow: block1 3x3/2 valid conv 32 and 3x3 valid conv 64 (no bias, BatchNorm,
ReLU); blocks 2-4: two separable 3x3 convs (128 / 256 / 728) and a 3x3/2 "same"
max-pool, plus a 1x1/2 conv + BatchNorm shortcut; middle flow: blocks 5-12, three
ReLU-separable-BatchNorm units of 728 with an identity shortcut; exit flow: block13
(728, 1024, pool, 1x1/2 shortcut to 1024), block14 separable 1536 and 2048 with ReLU.
Separable convs without bias; BatchNorm epsilon 1e-3, momentum 0.99. Top: global
average pool, Dense ``predictions``. "tf" preprocessing; default 299, smallest 71x71.

Keras gives the four shortcut convs and their BatchNorms automatic names ("conv2d",
"batch_normalization", numbered per session; Keras 2's published file: "conv2d_1"..);
here they are ``conv2d``, ``conv2d_1``.. and ``batch_normalization``.. in creation order,
and the importer matches such leftover layers by position when the names differ.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from cxrjax.models.keras_layers import Backbone, SeparableConv, max_pool


class Xception(Backbone):
    preprocessing = "tf"
    default_size = 299
    min_size = 71
    num_stages = 6

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        self.check_input(x)
        bn = lambda name: self.bn(name, train)  # noqa: E731
        sep = lambda name, f: SeparableConv(f, 3, 1, "same", use_bias=False, dtype=self.dtype, name=name)  # noqa: E731
        x = self.conv("block1_conv1", 32, 3, 2, use_bias=False)(x)
        x = nn.relu(bn("block1_conv1_bn")(x))
        x = self.conv("block1_conv2", 64, 3, use_bias=False)(x)
        x = nn.relu(bn("block1_conv2_bn")(x))
        x = self.perturb("stage1", x)
        shortcut = 0

        def residual(x, features):
            nonlocal shortcut
            suffix = f"_{shortcut}" if shortcut else ""
            shortcut += 1
            r = self.conv(f"conv2d{suffix}", features, 1, 2, "same", use_bias=False)(x)
            return bn(f"batch_normalization{suffix}")(r)

        for block, features in ((2, 128), (3, 256), (4, 728)):
            r = residual(x, features)
            if block > 2:
                x = nn.relu(x)
            x = sep(f"block{block}_sepconv1", features)(x)
            x = nn.relu(bn(f"block{block}_sepconv1_bn")(x))
            x = sep(f"block{block}_sepconv2", features)(x)
            x = bn(f"block{block}_sepconv2_bn")(x)
            x = self.perturb(f"stage{block}", x)  # the last map at this resolution
            x = max_pool(x, 3, 2, "same") + r
        for block in range(5, 13):
            r = x
            for i in (1, 2, 3):
                x = sep(f"block{block}_sepconv{i}", 728)(nn.relu(x))
                x = bn(f"block{block}_sepconv{i}_bn")(x)
            x = x + r
        r = residual(x, 1024)
        x = sep("block13_sepconv1", 728)(nn.relu(x))
        x = nn.relu(bn("block13_sepconv1_bn")(x))
        x = sep("block13_sepconv2", 1024)(x)
        x = bn("block13_sepconv2_bn")(x)
        x = self.perturb("stage5", x)
        x = max_pool(x, 3, 2, "same") + r
        x = sep("block14_sepconv1", 1536)(x)
        x = nn.relu(bn("block14_sepconv1_bn")(x))
        x = sep("block14_sepconv2", 2048)(x)
        x = nn.relu(bn("block14_sepconv2_bn")(x))
        x = self.perturb("stage6", x)
        return self.head(x)

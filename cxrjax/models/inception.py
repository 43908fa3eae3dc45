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
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxrjax.models.keras_layers import Backbone, avg_pool, max_pool


class InceptionV3(Backbone):
    preprocessing = "tf"
    default_size = 299
    min_size = 75

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        self.check_input(x)
        count = 0

        def cbr(x, filters, rows, cols, strides=1, padding="same"):
            nonlocal count
            suffix = f"_{count}" if count else ""
            count += 1
            x = self.conv(f"conv2d{suffix}", filters, (rows, cols), strides, padding, use_bias=False)(x)
            return nn.relu(self.bn(f"batch_normalization{suffix}", train, scale=False)(x))

        def pool_branch(x, filters):
            return cbr(avg_pool(x, 3, 1, "same"), filters, 1, 1)

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
        return self.head(x)

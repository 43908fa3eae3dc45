"""weights.random_init (the seeded init kept by a strict=False load): one jitted program
must give the numbers an op-by-op init gives (compiled with XLA's backend optimisations
off it does not: truncated-normal samples differ in the last bit)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cxrjax.models.weights import random_init


class _Tiny(nn.Module):
    """The initialisers the backbones use: variance scaling (truncated normal, uniform),
    zeros and ones (BatchNorm), on a conv, a depthwise conv and a dense layer."""

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = nn.Conv(8, (3, 3), kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "truncated_normal"))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.Conv(8, (3, 3), feature_group_count=8, kernel_init=nn.initializers.he_normal())(x)
        x = nn.Dense(5, kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_out", "uniform"))(x.mean((1, 2)))
        return x


def test_random_init_equals_the_op_by_op_init():
    module = _Tiny()
    for seed in (0, 3):
        got = random_init(module, (1, 12, 12, 3), seed)
        want = module.init(jax.random.key(seed), jnp.zeros((1, 12, 12, 3)), train=False)
        assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            assert isinstance(a, np.ndarray)
            np.testing.assert_array_equal(a, np.asarray(b))
    other = random_init(module, (1, 12, 12, 3), 1)
    assert not np.array_equal(other["params"]["Conv_0"]["kernel"], got["params"]["Conv_0"]["kernel"])

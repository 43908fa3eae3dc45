"""Parameter counts against the studies, with the arithmetic that gives them.

Counted on abstract shapes (``jax.eval_shape``): VGG16's 537 MB are never allocated.
"""

import jax
import jax.numpy as jnp
import pytest

from cxrjax import models
from cxrjax.models import layers
from cxrjax.models.summary import count_params


def conv(k, cin, cout):
    return k * k * cin * cout + cout


def dense(n_in, n_out):
    return n_in * n_out + n_out


def n_params(name, size, channels, num_classes, **overrides):
    model = models.create(name, num_classes=num_classes, channels=channels, **overrides)
    x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    return count_params(variables["params"]), count_params(variables.get("batch_stats", {}))


def test_lenet5_matches_s3():
    expected = conv(5, 1, 6) + conv(5, 6, 16) + dense(16 * 5 * 5, 120) + dense(120, 84) + dense(84, 3)
    assert expected == 61_111
    assert n_params("lenet5", 32, 1, 3) == (61_111, 0)


def test_vgg16_matches_s3():
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    features = sum(conv(3, cin, cout) for cin, cout in zip([1] + widths[:-1], widths))
    classifier = dense(512 * 7 * 7, 4096) + dense(4096, 4096) + dense(4096, 3)
    params, stats = n_params("vgg16", 224, 1, 3)
    assert params == features + classifier == 134_271_683
    assert abs(params - 134.27e6) / 134.27e6 < 1e-3
    assert params * 4 / 1e6 == pytest.approx(537.1, abs=0.1)  # S3: "537 MB" of float32
    assert stats == 0
    # vgg16_bn: BatchNorm scale + offset per conv channel, running mean + var likewise.
    assert n_params("vgg16_bn", 224, 1, 3) == (params + 2 * sum(widths), 2 * sum(widths))
    # The global-average-pool head replaces 119.6 M classifier parameters by 512 * 3 + 3.
    assert n_params("vgg16_bn", 224, 1, 3, head="gap")[0] == features + 2 * sum(widths) + dense(512, 3)


def test_vgg16_size_independent_thanks_to_adaptive_pool():
    assert n_params("vgg16", 64, 1, 3)[0] == n_params("vgg16", 224, 1, 3)[0]


# S4 at its default 128x128x3, 4 classes, head Dense 128 (see cxrjax/models/s4.py).
# exp2: 128 -k10p0-> 119 -k6p2-> 118 -pool-> 59 -k3p2-> 61 -pool-> 30 -k3p2-> 32 -pool-> 16
S4_EXP2 = (
    conv(10, 3, 16) + conv(6, 16, 32) + conv(3, 32, 64) + conv(3, 64, 128) + dense(16 * 16 * 128, 128) + dense(128, 4)
)
# exp1: 128 -k8p2-> 125 -pool-> 62 -k4p2-> 63 -pool-> 31 -k3p2-> 33 -pool-> 16 -k3p2-> 18 -pool-> 9
S4_EXP1 = (
    conv(8, 3, 128) + conv(4, 128, 64) + conv(3, 64, 32) + conv(3, 32, 32) + dense(9 * 9 * 32, 128) + dense(128, 4)
)
BN_FIRST = 2 * 16
BN_ALL = 2 * (16 + 32 + 64 + 128)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("s4_exp1", (S4_EXP1, 0)),
        ("s4_exp2", (S4_EXP2, 0)),
        ("s4_exp3", (S4_EXP2 + BN_FIRST, BN_FIRST)),
        ("s4_exp4", (S4_EXP2 + BN_ALL, BN_ALL)),
        ("s4_exp5", (S4_EXP2 + BN_ALL, BN_ALL)),
        ("s4_exp6", (S4_EXP2, 0)),  # dropout has no parameters
        ("s4_exp7", (S4_EXP2, 0)),
        ("s4_exp8", (S4_EXP2 + BN_ALL, BN_ALL)),
        ("s4_exp9", (S4_EXP2 + BN_ALL, BN_ALL)),
    ],
)
def test_s4_family_counts(name, expected):
    assert (S4_EXP1, S4_EXP2) == (515_972, 4_310_580)
    assert n_params(name, 128, 3, 4) == expected


def test_s0_counts():
    # 150 -c3-> 148 -p-> 74 -c3-> 72 -p-> 36 -c3-> 34 -p-> 17; flatten 17 * 17 * 128
    convs = conv(3, 3, 32) + conv(3, 32, 64) + conv(3, 64, 128)
    assert n_params("s0_a", 150, 3, 4)[0] == convs + dense(17 * 17 * 128, 128) + dense(128, 4) == 4_828_868
    assert n_params("s0_b", 150, 3, 4)[0] == convs + dense(17 * 17 * 128, 64) + dense(64, 4)
    # S0-E is s0_c without dropout and with 2 classes: same layers, 2-way output.
    assert n_params("s0_c", 150, 3, 2, head_dropout=0.0)[0] == convs + dense(17 * 17 * 128, 128) + dense(128, 2)


def test_parameters_are_float32_whatever_the_compute_dtype():
    model = models.create("s4_exp4", num_classes=4, dtype=jnp.bfloat16)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("style", layers.INIT_STYLES)
def test_initialisation_styles_have_their_documented_scale(style):
    """Kernel std and bias range of each style on a 3x3x64 -> 256 conv (fan_in 576)."""
    fan_in, fan_out = 3 * 3 * 64, 3 * 3 * 256
    kernel_init, bias_init = layers.initializers(style, fan_in, "conv")
    k = kernel_init(jax.random.key(0, impl="rbg"), (3, 3, 64, 256), jnp.float32)
    b = bias_init(jax.random.key(1, impl="rbg"), (256,), jnp.float32)
    expected_std = {
        "torch": (1 / fan_in) ** 0.5 / 3**0.5,  # U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        "keras": (2 / (fan_in + fan_out)) ** 0.5,  # Glorot uniform
        "torchvision": (2 / fan_out) ** 0.5,  # He normal, fan_out
        "normal_0.05": 0.05,
    }[style]
    assert float(jnp.std(k)) == pytest.approx(expected_std, rel=0.03)
    if style == "torch":
        assert float(jnp.max(jnp.abs(k))) <= fan_in**-0.5 and float(jnp.max(jnp.abs(b))) <= fan_in**-0.5
        assert float(jnp.std(b)) > 0
    else:
        assert float(jnp.max(jnp.abs(b))) == 0.0


def test_registered_twins_build_the_same_network_and_nothing_else_does():
    from cxrjax.models.registry import same_network_as

    twins = {name: same_network_as(name) for name in models.MODELS if same_network_as(name) != name}
    assert twins == {"s0_c": "s0_a", "s4_exp5": "s4_exp4", "s4_exp7": "s4_exp6", "s4_exp9": "s4_exp8"}
    x = jnp.asarray(jax.random.normal(jax.random.key(1), (2, 48, 48, 1)))
    for name, twin in (("s0_c", "s0_a"), ("s4_exp9", "s4_exp8")):
        a, b = (models.create(n, num_classes=2, channels=1) for n in (name, twin))
        va, vb = (m.init(jax.random.key(0), x, train=False) for m in (a, b))
        assert jax.tree.all(jax.tree.map(lambda p, q: bool(jnp.array_equal(p, q)), va, vb))
        assert jnp.array_equal(a.apply(va, x, train=False), b.apply(vb, x, train=False))
    # A network option that differs (S0-B's head, Exp8's dropout) is another network.
    assert same_network_as("s0_b") == "s0_b" and same_network_as("s4_exp6") != same_network_as("s4_exp8")

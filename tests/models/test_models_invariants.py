"""Behavioural invariants of train / eval mode, dropout, BatchNorm and bfloat16 compute.

Tiny variants (same layers, small widths) of the families that have dropout and/or
BatchNorm; one compiled function per (model, mode) shared by the tests of that model.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxrjax.models import testing

# name -> (has dropout, has BatchNorm)
# (VGG16-BN's BatchNorm and Dropout are the same layers as S4's; its bfloat16 path is
# checked below.)
CASES = {"s4_exp8": (True, True), "s0_b": (True, False), "lenet5": (False, False)}
BATCH = 4
# bfloat16 keeps 8 bits of mantissa (relative step 2^-8 = 0.4%); through a handful of
# layers the logits stay within 5% of their scale of the float32 ones.
BF16_TOLERANCE = 0.05


class Harness:
    """A tiny model with host-made variables and its jitted eval / train functions."""

    def __init__(self, name):
        self.model = testing.create_tiny(name, num_classes=3)
        size = testing.tiny_image_size(name)
        self.shape = (BATCH, size, size, self.model.channels)
        self.variables = testing.numpy_variables(self.model, self.shape, seed=0)
        self.x = jnp.asarray(np.random.default_rng(1).normal(size=self.shape), jnp.float32)
        model = self.model
        self.eval = jax.jit(
            lambda v, x, key: model.apply(v, x, train=False, mutable=["batch_stats"], rngs={"dropout": key})
        )
        self.train = jax.jit(
            lambda v, x, key: model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})
        )


@functools.lru_cache(maxsize=None)
def harness(name):
    return Harness(name)


def k(i):
    # "rbg" keys: XLA:CPU compiles RngBitGenerator in a fraction of threefry's time.
    return jax.random.key(i, impl="rbg")


@pytest.mark.parametrize("name", CASES)
def test_eval_is_deterministic_and_ignores_the_rng(name):
    h = harness(name)
    a, stats_a = h.eval(h.variables, h.x, k(0))
    b, _ = h.eval(h.variables, h.x, k(1))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # BatchNorm statistics are left untouched in eval mode.
    expected = {"batch_stats": h.variables["batch_stats"]} if "batch_stats" in h.variables else {}
    assert set(stats_a) == set(expected)
    jax.tree.map(np.testing.assert_array_equal, dict(stats_a), expected)


@pytest.mark.parametrize("name", CASES)
def test_eval_output_of_an_example_does_not_depend_on_the_others(name):
    h = harness(name)
    logits, _ = h.eval(h.variables, h.x, k(0))
    others = jnp.asarray(np.random.default_rng(2).normal(size=h.shape), jnp.float32)
    mixed = others.at[0].set(h.x[0])
    logits_mixed, _ = h.eval(h.variables, mixed, k(0))
    np.testing.assert_allclose(np.asarray(logits_mixed[0]), np.asarray(logits[0]), rtol=1e-5, atol=1e-6)
    perm = jnp.array([2, 0, 3, 1])
    logits_perm, _ = h.eval(h.variables, h.x[perm], k(0))
    np.testing.assert_allclose(np.asarray(logits_perm), np.asarray(logits[perm]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", CASES)
def test_train_mode_is_deterministic_given_the_rng(name):
    h = harness(name)
    a, stats_a = h.train(h.variables, h.x, k(3))
    b, stats_b = h.train(h.variables, h.x, k(3))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    jax.tree.map(np.testing.assert_array_equal, stats_a, stats_b)


@pytest.mark.parametrize("name", CASES)
def test_dropout_and_batchnorm_act_only_in_train_mode(name):
    has_dropout, has_bn = CASES[name]
    h = harness(name)
    eval_logits, _ = h.eval(h.variables, h.x, k(0))
    a, stats = h.train(h.variables, h.x, k(4))
    b, _ = h.train(h.variables, h.x, k(5))
    differs = not np.allclose(np.asarray(a), np.asarray(b))
    assert differs == has_dropout, "train outputs should depend on the dropout rng iff there is dropout"
    if not has_dropout and not has_bn:
        np.testing.assert_allclose(np.asarray(a), np.asarray(eval_logits), rtol=1e-6)
    if has_bn:
        old, new = h.variables["batch_stats"], stats["batch_stats"]
        for o, n in zip(jax.tree.leaves(old), jax.tree.leaves(new)):
            assert not np.allclose(np.asarray(o), np.asarray(n)), "train mode must update batch_stats"
    else:
        assert not jax.tree.leaves(stats)


@pytest.mark.parametrize("name", ["s4_exp8", "s0_b", "lenet5", "vgg16_bn"])
def test_bfloat16_compute_stays_close_to_float32(name):
    model32 = testing.create_tiny(name, num_classes=3)
    model16 = testing.create_tiny(name, num_classes=3, dtype=jnp.bfloat16)
    size = testing.tiny_image_size(name)
    shape = (BATCH, size, size, model32.channels)
    variables = testing.numpy_variables(model32, shape, seed=0)
    x = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)

    @jax.jit
    def both(v, x):
        return model16.apply(v, x, train=False), model32.apply(v, x, train=False)

    logits16, logits32 = both(variables, x)
    assert logits16.dtype == jnp.float32  # logits are float32 whatever the compute dtype
    scale = float(jnp.max(jnp.abs(logits32)))
    err = float(jnp.max(jnp.abs(logits16 - logits32)))
    assert err <= BF16_TOLERANCE * scale, (err, scale)
    assert err > 0, "bfloat16 compute should not be bit-identical to float32 (is dtype ignored?)"


def test_batchnorm_running_statistics_follow_pytorch_momentum():
    """running = 0.9 * running + 0.1 * batch statistic (PyTorch momentum=0.1), on bn1."""
    from cxrjax.models.layers import conv2d

    h = harness("s4_exp8")
    params, old = h.variables["params"], h.variables["batch_stats"]["bn1"]
    _, stats = h.train(h.variables, h.x, k(0))
    y = conv2d(h.x, params["conv1"]["kernel"], 0, "xla") + params["conv1"]["bias"]  # exp2 conv1: k10 p0
    mean, var = jnp.mean(y, axis=(0, 1, 2)), jnp.var(y, axis=(0, 1, 2))
    new = stats["batch_stats"]["bn1"]
    np.testing.assert_allclose(
        np.asarray(new["mean"]), np.asarray(0.9 * old["mean"] + 0.1 * mean), rtol=1e-4, atol=1e-6
    )
    # flax uses the biased batch variance (PyTorch's running_var uses the unbiased one).
    np.testing.assert_allclose(np.asarray(new["var"]), np.asarray(0.9 * old["var"] + 0.1 * var), rtol=1e-4, atol=1e-6)

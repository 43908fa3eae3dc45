"""The CPU-cliff rewrites compute exactly what the reference formulations compute.

On XLA:CPU, ``cxrjax.models.layers`` lowers (1) convolutions whose padding is at least
half the kernel as ``jnp.pad`` + VALID conv (``layers.conv_cliff``) and (2) max-pooling's
gradient with element-wise masks instead of select-and-scatter (``layers.pool_cliff``).
These tests prove the rewrites change nothing but speed: same outputs, input gradients
and weight gradients as the reference formulations, per layer (float64 to rounding,
float32; bit-equal for pooling, ties included) and for a whole model.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxrjax import models
from cxrjax.models import layers, testing


def registered_conv_configs():
    """(kernel, padding) of every conv of every registered model, from its plan."""
    configs = set()
    for name in models.MODELS:
        model = models.create(name, num_classes=2)
        if models.MODELS[name].study == "ImageNet":
            continue  # strided / "same" convs of keras_layers: no stride-1 plan, no rewrites
        configs |= {(step[1], step[2]) for step in model.spatial_plan() if step[0] == "conv"}
    return configs


REWRITTEN = sorted(c for c in registered_conv_configs() if layers.conv_cliff(*c, backend="cpu"))


def test_the_rewritten_configs_are_s4s_large_paddings():
    assert REWRITTEN == [(3, 2), (4, 2)]  # S4 Exp2-9's conv3/conv4; Exp1's conv2/conv3/conv4
    assert not layers.conv_cliff(3, 1, backend="cpu")  # VGG
    assert not layers.conv_cliff(3, 2, backend="gpu")  # other backends: untouched


def _conv_and_grads(formulation, padding):
    def f(x, w):
        y, vjp = jax.vjp(lambda x, w: layers.conv2d(x, w, padding, formulation), x, w)
        dx, dw = vjp(jnp.cos(y))  # a generic cotangent
        return y, dx, dw

    return jax.jit(f)


@pytest.mark.parametrize("kernel, padding", REWRITTEN)
@pytest.mark.parametrize("dtype, rtol", [(jnp.float64, 1e-12), (jnp.float32, 2e-5)])
def test_pad_valid_equals_reference(kernel, padding, dtype, rtol):
    with jax.enable_x64(dtype == jnp.float64):
        rng = np.random.default_rng(kernel)
        x = jnp.asarray(rng.normal(size=(2, 7, 6, 3)), dtype)
        w = jnp.asarray(rng.normal(size=(kernel, kernel, 3, 4)), dtype)
        ref = _conv_and_grads("xla", padding)(x, w)
        out = _conv_and_grads("pad_valid", padding)(x, w)
        for name, a, b in zip(("output", "input grad", "weight grad"), out, ref):
            assert a.shape == b.shape and a.dtype == b.dtype == dtype
            np.testing.assert_allclose(
                np.asarray(a), np.asarray(b), rtol=rtol, atol=rtol * float(jnp.max(jnp.abs(b))), err_msg=name
            )


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 7, 9, 2)])  # even and odd (floor mode)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_max_pool_mask_equals_select_and_scatter(shape, dtype):
    rng = np.random.default_rng(0)
    # Quantised ReLU outputs: many exact ties inside windows (zeros and repeated values).
    x = jnp.asarray(np.maximum(np.round(rng.normal(size=shape) * 2) / 2, 0), dtype)

    def run(formulation):
        def f(x):
            y, vjp = jax.vjp(lambda x: layers.max_pool(x, formulation), x)
            return y, vjp(jnp.cos(y.astype(jnp.float32)).astype(dtype) + 2)[0]

        return jax.jit(f)(x)

    (y_ref, dx_ref), (y, dx) = run("xla"), run("mask")
    assert y.shape == (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_ref, np.float32))
    np.testing.assert_array_equal(np.asarray(dx, np.float32), np.asarray(dx_ref, np.float32))
    assert dx.dtype == dtype
    # Each window sends its whole gradient to one input (the first maximum).
    assert int(jnp.sum(dx != 0)) == y.size


@pytest.mark.parametrize("name", ["s4_exp1"])  # Exp1 has both rewritten configs, k4/p2 and k3/p2
def test_whole_model_outputs_and_gradients_unchanged(name, monkeypatch):
    model = testing.create_tiny(name, num_classes=3)
    size = testing.tiny_image_size(name)
    shape = (2, size, size, 3)
    variables = testing.numpy_variables(model, shape, seed=3)
    x = jnp.asarray(np.random.default_rng(4).normal(size=shape), jnp.float32)

    def loss(params, x):
        logits, _ = model.apply(
            {**variables, "params": params},
            x,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(0, impl="rbg")},
        )
        return jnp.sum(jnp.sin(logits)), logits

    def run():
        fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
        jaxpr = str(jax.make_jaxpr(fn)(variables["params"], x))
        return fn(variables["params"], x), jaxpr

    (rewritten, jaxpr_rewritten) = run()
    monkeypatch.setattr(layers, "conv_cliff", lambda *a, **k: False)
    monkeypatch.setattr(layers, "pool_cliff", lambda *a, **k: False)
    monkeypatch.setattr(layers, "dw_cliff", lambda *a, **k: False)
    (reference, jaxpr_reference) = run()
    # The rewrites really happened: explicit pads appear only in the rewritten program,
    # select-and-scatter (max-pool gradient) only in the reference.
    assert " pad[" in jaxpr_rewritten and " pad[" not in jaxpr_reference
    assert "select_and_scatter" in jaxpr_reference and "select_and_scatter" not in jaxpr_rewritten
    for a, b in zip(jax.tree.leaves(rewritten), jax.tree.leaves(reference)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize(
    "shape, kernel, strides, padding, multiplier",
    [
        ((2, 9, 8, 3), 3, (1, 1), "SAME", 1),
        ((2, 9, 8, 3), 3, (2, 2), "SAME", 1),  # SAME at stride 2: the extra row at the bottom
        ((2, 10, 10, 4), 3, (2, 2), "VALID", 2),  # depth multiplier 2
        ((1, 11, 9, 2), 5, (1, 2), ((1, 2), (2, 1)), 1),  # explicit, asymmetric padding
    ],
)
def test_shifted_depthwise_equals_the_grouped_conv(shape, kernel, strides, padding, multiplier):
    """The depthwise CPU rewrite: the same outputs, input and kernel gradients as XLA's
    ``feature_group_count`` conv (float64 to rounding)."""
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), shape, jnp.float64)
        k = jax.random.normal(jax.random.key(1), (kernel, kernel, shape[-1], multiplier), jnp.float64)

        def run(formulation):
            f = lambda x, k: layers.depthwise_conv2d(x, k, strides, padding, formulation)  # noqa: E731
            y = f(x, k)
            w = jax.random.normal(jax.random.key(2), y.shape, jnp.float64)
            return (y, *jax.grad(lambda x, k: (f(x, k) * w).sum(), argnums=(0, 1))(x, k))

        for ours, reference in zip(run("shifted"), run("xla")):
            assert ours.shape == reference.shape
            np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-12)
    assert layers.depthwise_cliff("cpu") and not layers.depthwise_cliff("gpu")

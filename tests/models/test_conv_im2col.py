"""The CPU convolution formulations (cxrjax/models/conv_cpu.py) against the plain lax conv.

Small shapes, float32: values and both gradients must match ``lax.conv_general_dilated``
up to summation order, for every (kernel, padding) pattern the models use, odd sizes
(the last row block is padded), and blocks of 1 row and of more rows than the output.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cxrjax.models import conv_cpu, layers

_DIMS = ("NHWC", "HWIO", "NHWC")


def _reference(x, kernel, padding):
    pad = [(padding, padding), (padding, padding)]
    return lax.conv_general_dilated(x, kernel, (1, 1), pad, dimension_numbers=_DIMS, precision=lax.Precision.HIGHEST)


def _data(n, size, cin, cout, k, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, size, size, cin)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(k, k, cin, cout)) * 0.1, jnp.float32)
    return x, kernel


def _value_and_grads(f, x, kernel):
    y, vjp = jax.vjp(f, x, kernel)
    dy = jnp.asarray(np.random.default_rng(7).normal(size=y.shape), y.dtype)
    return (y, *vjp(dy))


# (batch, size, cin, cout, kernel, padding): S4 exp2 (k10/p0, k6/p2, k3/p2), S4 exp1 (k8/p2,
# k4/p2), VGG (k3/p1), S0 (k3/p0), LeNet (k5/p0), with odd sizes.
CASES = [
    (2, 13, 3, 4, 10, 0),
    (2, 11, 5, 6, 6, 2),
    (3, 9, 4, 5, 3, 2),
    (2, 12, 3, 4, 8, 2),
    (2, 10, 4, 3, 4, 2),
    (2, 9, 6, 7, 3, 1),
    (2, 10, 3, 8, 3, 0),
    (2, 12, 1, 6, 5, 0),
    (2, 10, 8, 5, 3, 0),  # >= 8 channels, no padding: the asymmetric-padding forward
    (1, 12, 16, 4, 6, 2),
]


@pytest.mark.parametrize("formulation", ["im2col", "im2col_dw", "chunked_dw"])
@pytest.mark.parametrize("n,size,cin,cout,k,p", CASES)
def test_formulation_matches_lax(formulation, n, size, cin, cout, k, p):
    x, kernel = _data(n, size, cin, cout, k)
    ref = _value_and_grads(lambda x, w: _reference(x, w, p), x, kernel)
    got = jax.jit(lambda x, w: _value_and_grads(lambda x, w: layers.conv2d(x, w, p, formulation), x, w))(x, kernel)
    for name, r, g in zip(("y", "dx", "dw"), ref, got):
        assert g.shape == r.shape and g.dtype == r.dtype, name
        np.testing.assert_allclose(
            np.asarray(g),
            np.asarray(r),
            rtol=2e-5,
            atol=2e-5 * float(jnp.max(jnp.abs(r))),
            err_msg=f"{formulation} {name}",
        )


@pytest.mark.parametrize("chunk", [2, 3, conv_cpu.DW_BATCH_CHUNK])
@pytest.mark.parametrize("k,p", [(10, 0), (3, 2), (5, 0)])
def test_chunked_dw_sums_every_chunk(monkeypatch, chunk, k, p):
    """Batch 7 in chunks of 2 / 3 (a short last chunk) / 16 (one chunk): same values and grads."""
    monkeypatch.setattr(conv_cpu, "DW_BATCH_CHUNK", chunk)
    x, kernel = _data(7, 12, 3, 4, k, seed=5)
    ref = _value_and_grads(lambda x, w: _reference(x, w, p), x, kernel)
    got = _value_and_grads(lambda x, w: layers.conv2d(x, w, p, "chunked_dw"), x, kernel)
    for name, r, g in zip(("y", "dx", "dw"), ref, got):
        np.testing.assert_allclose(
            np.asarray(g),
            np.asarray(r),
            rtol=2e-5,
            atol=2e-5 * float(jnp.max(jnp.abs(r))),
            err_msg=f"chunk {chunk} {name}",
        )


@pytest.mark.parametrize("rows", [1, 2, 3, 100])
def test_row_blocks_cover_every_row(rows):
    x, kernel = _data(2, 11, 3, 4, 4)
    y = conv_cpu.conv_valid_rows(x, kernel, rows=rows)
    dy = jnp.asarray(np.random.default_rng(3).normal(size=y.shape), jnp.float32)
    np.testing.assert_allclose(y, _reference(x, kernel, 0), rtol=2e-5, atol=2e-5)
    dw_ref = jax.vjp(lambda w: _reference(x, w, 0), kernel)[1](dy)[0]
    np.testing.assert_allclose(conv_cpu.conv_valid_rows_dw(x, dy, 4, rows=rows), dw_ref, rtol=2e-5, atol=1e-4)


def test_bfloat16_runs_and_is_close():
    x, kernel = _data(2, 10, 4, 5, 3)
    f = lambda fm: _value_and_grads(  # noqa: E731
        lambda x, w: layers.conv2d(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), 1, fm), x, kernel
    )
    for r, g in zip(f("xla"), f("im2col")):
        assert g.dtype == r.dtype
        np.testing.assert_allclose(
            np.asarray(g, np.float32),
            np.asarray(r, np.float32),
            rtol=0.05,
            atol=0.05 * float(jnp.max(jnp.abs(r.astype(jnp.float32)))),
        )


def test_auto_is_plain_lax_off_cpu():
    for k, p, c in [(10, 0, 3), (6, 2, 16), (3, 2, 32), (3, 1, 64), (3, 0, 32), (5, 0, 6)]:
        for batch in (None, 8, 128):
            assert layers.resolve_conv_formulation(k, p, c, 118, backend="gpu", batch=batch) == "xla"
            assert layers.resolve_conv_formulation(k, p, c, 118, backend="tpu", batch=batch) == "xla"


def test_auto_rule_on_cpu():
    rule = lambda k, p, c, out: layers.resolve_conv_formulation(k, p, c, out, backend="cpu")  # noqa: E731
    assert rule(10, 0, 3, 119) == "xla"  # S4 conv1: wide kernel over RGB
    assert rule(6, 2, 16, 118) == "im2col_dw"  # S4 conv2
    assert rule(3, 2, 32, 61) == "im2col_dw"  # S4 conv3 (forward / dx: pad + VALID)
    assert rule(3, 0, 3, 148) == "im2col_dw"  # S0 conv1
    assert rule(3, 1, 64, 224) == "im2col_dw"  # VGG conv2
    assert rule(3, 1, 512, 14) == "xla"  # VGG block 5: small map
    assert rule(3, 1, 1, 224) == "xla"  # VGG conv1: one channel
    assert rule(5, 0, 6, 10) == "xla"  # LeNet conv2
    assert rule(6, 2, 16, 22) == "im2col_dw"  # S4 conv2 at 32 px (the ablation's input)
    assert rule(3, 2, 32, 13) == "pad_valid"  # S4 conv3 at 32 px: small map, padding cliff
    # Past 16 examples per device, the convs left on XLA get the batch-chunked weight gradient.
    batched = lambda k, p, c, out, b: layers.resolve_conv_formulation(  # noqa: E731
        k, p, c, out, backend="cpu", batch=b
    )
    assert batched(10, 0, 3, 119, 16) == "xla"  # S4 conv1 at batch 16: still fast
    assert batched(10, 0, 3, 119, 17) == "chunked_dw"  # ... and at 32: 638 -> 101 ms
    assert batched(5, 0, 1, 28, 128) == "chunked_dw"  # LeNet conv1 at batch 128
    assert batched(3, 2, 32, 13, 32) == "chunked_dw"  # forward / dx keep pad + VALID
    assert batched(6, 2, 16, 118, 32) == "im2col_dw"  # row blocks already loop per image


def test_whole_model_auto_equals_plain_lax(monkeypatch):
    """S0 at 28x28 (conv1's output is 26x26 over 3 channels: im2col weight gradient)."""
    from cxrjax.models import testing

    model = testing.create_tiny("s0_a", num_classes=3)
    shape = (2, 28, 28, 3)
    variables = testing.numpy_variables(model, shape, seed=3)
    x = jnp.asarray(np.random.default_rng(4).normal(size=shape), jnp.float32)

    def loss(params, x):
        logits = model.apply({**variables, "params": params}, x, train=False)
        return jnp.sum(jnp.sin(logits))

    def run():
        fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        return fn(variables["params"], x), str(jax.make_jaxpr(fn)(variables["params"], x))

    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    got, jaxpr_got = run()
    monkeypatch.setattr(layers, "dw_cliff", lambda *a, **k: False)
    ref, jaxpr_ref = run()
    loop = lambda j: "while[" in j or "scan[" in j  # noqa: E731  (the im2col row-block loop)
    assert loop(jaxpr_got) and not loop(jaxpr_ref)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))

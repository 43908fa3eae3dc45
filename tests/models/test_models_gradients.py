"""Finite-difference gradient checks in float64 on tiny instances of every family.

Train mode (BatchNorm on batch statistics, dropout with a fixed rng, so the function is
deterministic), float64 parameters and computation, inside ``jax.enable_x64`` so other
tests keep float32. Central differences along random directions of (params, input) are
compared with ``<grad, direction>``; relative error must be below 1e-5. Each model is
compiled once (``value_and_grad``); the finite differences reuse the same executable.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxrjax.models import testing

# One case per family; S4's is Exp8 (BatchNorm + Dropout) on Exp1's layout, whose convs
# include both CPU-rewritten shapes (k4/p2 and k3/p2; Exp2 has k3/p2 only).
CASES = {"s0_b": {}, "lenet5": {}, "vgg16_bn": {}, "s4_exp8": {"layout": "exp1"}}
EPS = 1e-7  # small enough not to cross ReLU / max-pool kinks; float64 roundoff stays ~1e-9
N_DIRECTIONS = 2


@pytest.mark.parametrize("name", CASES)
def test_finite_differences_float64(name):
    with jax.enable_x64(True):
        model = testing.create_tiny(name, num_classes=3, dtype=jnp.float64, **CASES[name])
        size = testing.tiny_image_size(name)
        shape = (3, size, size, model.channels)
        variables = testing.numpy_variables(model, shape, seed=1, dtype=jnp.float64)
        rng = np.random.default_rng(0)
        x = rng.normal(size=shape)
        weights = rng.normal(size=(3, 3))  # a generic linear functional of the logits
        key = jax.random.key(7, impl="rbg")  # compiles much faster than threefry on CPU

        @jax.jit
        def value_and_grad(params, x):
            def loss(params, x):
                logits, _ = model.apply(
                    {**variables, "params": params}, x, train=True, mutable=["batch_stats"], rngs={"dropout": key}
                )
                assert logits.dtype == jnp.float64
                return jnp.sum(logits * weights)

            return jax.value_and_grad(loss, argnums=(0, 1))(params, x)

        # Host-side (numpy) arithmetic: no eager jax ops, so nothing else gets compiled.
        params = jax.tree.map(np.asarray, variables["params"])
        _, (g_params, g_x) = jax.tree.map(np.asarray, value_and_grad(params, x))
        for _ in range(N_DIRECTIONS):
            d_params = jax.tree.map(lambda a: rng.normal(size=a.shape), params)
            d_x = rng.normal(size=shape)
            plus, _ = value_and_grad(jax.tree.map(lambda p, d: p + EPS * d, params, d_params), x + EPS * d_x)
            minus, _ = value_and_grad(jax.tree.map(lambda p, d: p - EPS * d, params, d_params), x - EPS * d_x)
            fd = (float(plus) - float(minus)) / (2 * EPS)
            ad = sum(float(np.vdot(g, d)) for g, d in zip(jax.tree.leaves(g_params), jax.tree.leaves(d_params)))
            ad += float(np.vdot(g_x, d_x))
            assert abs(fd - ad) <= 1e-5 * max(abs(fd), abs(ad)), (name, fd, ad)
        # Every parameter and the input get a gradient (nothing is disconnected).
        for path, g in jax.tree_util.tree_leaves_with_path(g_params):
            assert np.max(np.abs(g)) > 0, f"{name}: zero gradient for {jax.tree_util.keystr(path)}"
        assert np.max(np.abs(g_x)) > 0

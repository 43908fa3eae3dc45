"""Cross-replica BatchNorm: statistics over the global batch inside a data-parallel step.

With ``axis_name`` set, BatchNorm inside ``jit(shard_map)`` over 4 devices (forced CPU
devices, tests/conftest.py) must give exactly the statistics, running-stat updates and
train-mode logits that one device computes on the concatenated global batch.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cxrjax.models import testing


def test_batch_stats_equal_those_of_the_global_batch():
    assert jax.device_count() == 4
    mesh = jax.make_mesh((4,), ("batch",))
    size = testing.tiny_image_size("s4_exp4")
    shape = (8, size, size, 3)  # 2 examples per device
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
    replicated = testing.create_tiny("s4_exp4", num_classes=3, axis_name="batch")
    single = testing.create_tiny("s4_exp4", num_classes=3)
    variables = testing.numpy_variables(single, shape, seed=0)

    def per_device(v, x):
        return replicated.apply(v, x, train=True, mutable=["batch_stats"])

    step = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("batch")), out_specs=(P("batch"), P())))
    x_sharded = jax.device_put(x, NamedSharding(mesh, P("batch")))
    v_replicated = jax.device_put(variables, NamedSharding(mesh, P()))
    logits_dp, stats_dp = step(v_replicated, x_sharded)

    logits_1, stats_1 = jax.jit(lambda v, x: single.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    np.testing.assert_allclose(np.asarray(logits_dp), np.asarray(logits_1), rtol=1e-4, atol=1e-5)
    for a, b in zip(jax.tree.leaves(stats_dp), jax.tree.leaves(stats_1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)

    # The test can fail: one device's 2 examples have other statistics than all 8, so a
    # BatchNorm that ignored axis_name would disagree with the global-batch statistics.
    per_device_means = np.asarray(x).reshape(4, 2, -1, 3).mean(axis=(1, 2))
    assert np.ptp(per_device_means, axis=0).min() > 1e-3

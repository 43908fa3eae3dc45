"""Schedules and optimisers built from the config (values at known steps).

Everything is evaluated through one jitted call per test: op-by-op (eager) evaluation
would compile every primitive separately, which is slow on CPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cxrjax.train.config import TrainConfig
from cxrjax.train.optim import make_optimizer, make_schedule


def _values(schedule, steps):
    return [float(v) for v in jax.jit(jax.vmap(schedule))(jnp.asarray(steps))]


def test_step_schedule_decays_every_n_epochs():
    s = make_schedule(TrainConfig(lr=0.1, schedule="step", step_every_epochs=2, step_gamma=0.5), steps_per_epoch=10)
    assert _values(s, [0, 19, 20, 39, 40]) == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def test_warmup_cosine_reaches_peak_then_min_lr():
    config = TrainConfig(lr=0.1, schedule="warmup_cosine", warmup_epochs=1, min_lr=0.001, epochs=4)
    s = make_schedule(config, steps_per_epoch=10)
    assert _values(s, [0, 10, 40]) == pytest.approx([0.0, 0.1, 0.001])


def test_keras_time_decay_divides_the_schedule():
    s = make_schedule(TrainConfig(lr=0.01, decay=1e-2), steps_per_epoch=5)
    assert _values(s, [0, 100]) == pytest.approx([0.01, 0.01 / (1 + 1e-2 * 100)])


def test_adam_with_l2_and_clipping_matches_a_hand_built_chain():
    config = TrainConfig(optimizer="adam", lr=0.01, weight_decay=0.1, grad_clip_norm=1.0)
    tx, _ = make_optimizer(config, steps_per_epoch=1)
    reference = optax.chain(optax.clip_by_global_norm(1.0), optax.add_decayed_weights(0.1), optax.adam(0.01))
    params = {"w": jnp.array([1.0, -2.0])}
    grads = {"w": jnp.array([3.0, 4.0])}  # norm 5: clipped to 1

    @jax.jit
    def both(params, grads):
        ours, _ = tx.update(grads, tx.init(params), params)
        theirs, _ = reference.update(grads, reference.init(params), params)
        return ours, theirs

    ours, theirs = both(params, grads)
    np.testing.assert_allclose(ours["w"], theirs["w"], rtol=1e-6)


def test_sgd_nesterov_momentum_first_two_updates():
    tx, _ = make_optimizer(TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True), steps_per_epoch=1)

    @jax.jit
    def two_updates(params, g):
        state = tx.init(params)
        u1, state = tx.update(g, state, params)
        u2, state = tx.update(g, state, params)
        return u1, u2

    u1, u2 = two_updates({"w": jnp.zeros(1)}, {"w": jnp.ones(1)})
    # optax nesterov: t = g + m * t_prev; update = -lr * (g + m * t)
    assert float(u1["w"][0]) == pytest.approx(-0.1 * (1 + 0.9 * 1))
    assert float(u2["w"][0]) == pytest.approx(-0.1 * (1 + 0.9 * 1.9))

"""The data-parallel step: N devices == 1 device on the same global batch; pmap == shard_map;
the non-finite guard leaves the state untouched and counts the skip.

N is 4 under tests/conftest.py's forced CPU devices; on an accelerator (benchmarks/gpu_check.sh
runs this file with JAX_PLATFORMS=cuda) it is as many as there are, up to 4, so on one GPU the
same tests compare 1 with 1 device (and pmap with shard_map) on the real backend."""

import functools

import jax
import numpy as np
import optax
import pytest

from cxrjax.train.parallel import make_engine
from cxrjax.train.state import create_train_state
from cxrjax.train.steps import AXIS, LossConfig, eval_step, train_step
from tests.train.support import TinyBN

GLOBAL_BATCH = 8
N = min(4, jax.device_count())
LR = 1.0  # plain SGD with lr 1: params_before - params_after == the gradient


@pytest.fixture(scope="module")
def setup():
    model = TinyBN(axis_name=AXIS)
    tx = optax.sgd(LR, momentum=0.0)  # trace with decay 0: opt_state has leaves, update == -lr * grad
    state = create_train_state(model, tx, seed=0, input_shape=(8, 8, 1))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(GLOBAL_BATCH, 8, 8, 1)).astype(np.float32),
        "label": rng.integers(0, 3, GLOBAL_BATCH).astype(np.int32),
    }
    train_fn = functools.partial(
        train_step,
        model=model,
        tx=tx,
        schedule=optax.constant_schedule(LR),
        loss=LossConfig(num_classes=3, label_smoothing=0.1),
    )
    eval_fn = functools.partial(eval_step, model=model)
    engines = {
        ("shard_map", 1): make_engine("shard_map", train_fn, eval_fn, jax.devices()[:1]),
        ("shard_map", N): make_engine("shard_map", train_fn, eval_fn, jax.devices()[:N]),
        ("pmap", N): make_engine("pmap", train_fn, eval_fn, jax.devices()[:N]),
    }
    outputs = {}
    for key, engine in engines.items():
        new_state, metrics = engine.train_step(engine.put_state(state), engine.put_batch(batch))
        outputs[key] = (engine.host_state(new_state), engine.host_metrics(metrics))
    return state, batch, engines, outputs


def _grads(before, after):
    return jax.tree.map(lambda b, a: (np.asarray(b) - np.asarray(a)) / LR, before.params, after.params)


def _assert_trees_close(a, b, atol):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=atol)


@pytest.mark.parametrize("other", [("shard_map", N), ("pmap", N)])
def test_multi_device_step_equals_single_device_step(setup, other):
    state, _, _, outputs = setup
    ref_state, ref_metrics = outputs[("shard_map", 1)]
    new_state, metrics = outputs[other]
    assert float(metrics["loss"]) == pytest.approx(float(ref_metrics["loss"]), rel=1e-6)
    assert float(metrics["accuracy"]) == float(ref_metrics["accuracy"])
    assert float(metrics["grad_norm"]) == pytest.approx(float(ref_metrics["grad_norm"]), rel=1e-5)
    grads, ref_grads = _grads(state, new_state), _grads(state, ref_state)
    assert max(float(np.abs(g).max()) for g in jax.tree.leaves(ref_grads)) > 1e-3  # a real update
    _assert_trees_close(grads, ref_grads, atol=1e-6)
    # Cross-replica BatchNorm: the running statistics equal the global batch's.
    _assert_trees_close(new_state.batch_stats, ref_state.batch_stats, atol=1e-6)
    assert not np.allclose(jax.tree.leaves(ref_state.batch_stats)[0], jax.tree.leaves(state.batch_stats)[0])
    assert int(new_state.step) == int(ref_state.step) == 1


def test_eval_outputs_agree_and_keep_example_order(setup):
    state, batch, engines, _ = setup
    logp = {
        key: e.host_outputs(e.eval_step(e.put_state(state), e.put_batch({"image": batch["image"]})))
        for key, e in engines.items()
        if key[1] == N
    }
    direct = jax.nn.log_softmax(TinyBN().apply(state.variables, batch["image"], train=False))
    for out in logp.values():
        assert out.shape == (GLOBAL_BATCH, 3)
        np.testing.assert_allclose(out, np.asarray(direct), rtol=1e-5, atol=1e-6)


def test_nonfinite_batch_is_skipped_and_counted(setup):
    state, batch, engines, _ = setup
    engine = engines[("shard_map", N)]
    bad = dict(batch, image=batch["image"].copy())
    bad["image"][5, 3, 3, 0] = np.nan  # one pixel of one example (on replica 2 of 4)
    new_state, metrics = engine.train_step(engine.put_state(state), engine.put_batch(bad))
    new_state, metrics = engine.host_state(new_state), engine.host_metrics(metrics)
    assert not bool(metrics["finite"]) and np.isnan(metrics["loss"])
    for field in ("params", "batch_stats", "opt_state"):
        _assert_trees_close(getattr(new_state, field), getattr(state, field), atol=0)
    assert (int(new_state.step), int(new_state.skipped_steps), int(new_state.first_nonfinite_step)) == (1, 1, 0)

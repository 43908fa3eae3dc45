"""Mixup (TrainConfig.mixup, cxrjax/train/steps.py): each image mixed with its neighbour by
a Beta-distributed weight, the loss the same mix of the two labels' losses, and N devices
mixing exactly as one does (N is 4 under tests/conftest.py's forced CPU devices)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cxrjax.train import TrainConfig, recipes, steps
from cxrjax.train.parallel import make_engine
from cxrjax.train.state import create_train_state, random_config
from cxrjax.train.steps import AXIS, LossConfig, eval_step, mixup_batch, per_example_loss, train_step
from tests.train.support import TinyBN

GLOBAL_BATCH = 8
N = min(4, jax.device_count())
ALPHA = 0.4


def test_each_image_is_mixed_with_its_neighbour_by_a_beta_weight_drawn_per_global_position():
    x = np.random.default_rng(0).normal(size=(6, 5, 5, 1)).astype(np.float32)
    key = jax.random.key(3)
    mixed, lam = (np.asarray(v) for v in mixup_batch(jnp.asarray(x), ALPHA, key, jnp.asarray(0)))
    expected_lam = [float(jax.random.beta(jax.random.fold_in(key, i), ALPHA, ALPHA)) for i in range(6)]
    np.testing.assert_allclose(lam, expected_lam, rtol=1e-6)
    assert np.all((lam > 0) & (lam < 1)) and np.ptp(lam) > 0.1
    for i in range(6):
        np.testing.assert_allclose(mixed[i], lam[i] * x[i] + (1 - lam[i]) * x[i ^ 1], rtol=1e-5, atol=1e-6)
    # The second half of the batch as its own slice (a second replica) draws the same weights.
    _, lam_tail = mixup_batch(jnp.asarray(x[2:]), ALPHA, key, jnp.asarray(2))
    np.testing.assert_allclose(np.asarray(lam_tail), lam[2:], rtol=1e-6)


@pytest.fixture(scope="module")
def outputs():
    model = TinyBN(axis_name=AXIS)
    tx = optax.sgd(1.0)
    state = create_train_state(model, tx, seed=0, input_shape=(8, 8, 1))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(GLOBAL_BATCH, 8, 8, 1)).astype(np.float32),
        "label": np.array([0, 1, 2, 2, 1, 0, 0, 2], np.int32),
    }
    loss = LossConfig(num_classes=3, label_smoothing=0.1, class_weights=(1.0, 2.0, 0.5), mixup=ALPHA)
    train_fn = functools.partial(train_step, model=model, tx=tx, schedule=optax.constant_schedule(1.0), loss=loss)
    eval_fn = functools.partial(eval_step, model=model)
    out = {}
    for n in (1, N):
        engine = make_engine("shard_map", train_fn, eval_fn, jax.devices()[:n])
        new_state, metrics = engine.train_step(engine.put_state(state), engine.put_batch(batch))
        out[n] = (engine.host_state(new_state), engine.host_metrics(metrics))
    return state, batch, loss, out


def test_the_step_loss_is_the_mixed_images_loss_of_both_labels(outputs):
    state, batch, loss, out = outputs
    key = jax.random.fold_in(jax.random.fold_in(state.rng, 0), steps._MIXUP_STREAM)
    with random_config():  # the stream the engine traces its steps under
        mixed, lam = mixup_batch(jnp.asarray(batch["image"]), ALPHA, key, jnp.asarray(0))
    logits, _ = TinyBN().apply(state.variables, mixed, train=True, mutable=["batch_stats"])
    labels = jnp.asarray(batch["label"])
    partner = labels[jnp.arange(GLOBAL_BATCH) ^ 1]
    expected = jnp.mean(
        lam * per_example_loss(logits, labels, loss) + (1 - lam) * per_example_loss(logits, partner, loss)
    )
    plain = jnp.mean(
        per_example_loss(
            TinyBN().apply(state.variables, jnp.asarray(batch["image"]), train=True, mutable=["batch_stats"])[0],
            labels,
            loss,
        )
    )
    assert float(out[1][1]["loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert abs(float(expected) - float(plain)) > 1e-3  # mixing changed the loss


def test_mixup_on_n_devices_equals_one_device(outputs):
    state, _, _, out = outputs
    (one, one_metrics), (many, many_metrics) = out[1], out[N]
    assert float(many_metrics["loss"]) == pytest.approx(float(one_metrics["loss"]), rel=1e-6)
    for a, b, before in zip(jax.tree.leaves(many.params), jax.tree.leaves(one.params), jax.tree.leaves(state.params)):
        assert not np.allclose(np.asarray(b), np.asarray(before))  # a real update
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_mixup_needs_an_even_per_device_batch_and_is_an_ingredient_outside_cxr():
    assert TrainConfig(mixup=0.2, per_device_batch_size=8).mixup == 0.2
    with pytest.raises(
        ValueError, match=r"mixup=0.2 .*even per_device_batch_size \(got 7\).*--per-device-batch-size 8"
    ):
        TrainConfig(mixup=0.2, per_device_batch_size=7)
    with pytest.raises(ValueError, match="mixup"):
        TrainConfig(mixup=-0.1)
    assert recipes.resolve(TrainConfig(), {"recipe": "cxr+mixup"}).mixup == recipes.INGREDIENTS["mixup"]["mixup"] > 0
    assert "mixup" not in recipes.RECIPES["cxr"]


def test_a_run_with_mixup_never_reuses_the_compiled_engine_of_one_without():
    # The engine memo (run_setup.build_engine) once keyed on a list of fields that lacked
    # mixup: a cxr+mixup run after a cxr run in one process trained without mixup.
    from cxrjax.train.run_setup import build_engine

    devices = jax.devices()[:1]

    def engine(**changes):
        config = TrainConfig(model="lenet5", channels=1, image_size=32, per_device_batch_size=8, **changes)
        return build_engine(config, 2, (32, 32, 1), 10, None, devices)[2]

    assert engine(mixup=0.2) is engine(mixup=0.2)
    assert engine(mixup=0.2) is not engine() and engine(mixup=0.4) is not engine(mixup=0.2)
    assert engine(label_smoothing=0.1) is not engine()

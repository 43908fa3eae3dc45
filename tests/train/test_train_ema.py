"""The exponential moving average of the weights (cxrjax/train/ema.py): its arithmetic on a
hand-computed sequence, the one update inside the real train step (4 devices, shard_map and
pmap), and a run trained with it evaluating and loading its averaged weights."""

import functools

import jax
import numpy as np
import optax
import pytest

from cxrjax.inference import checkpoint_variables, load_run
from cxrjax.train import ema
from cxrjax.train.evaluation import predict_split
from cxrjax.train.parallel import make_engine
from cxrjax.train.state import TrainState, create_train_state
from cxrjax.train.steps import AXIS, LossConfig, eval_step, train_step
from cxrjax.train.trainer import train_and_evaluate
from tests.train.support import TinyBN, history


def _state(params, batch_stats, step=0, ema_entry=None):
    return TrainState(
        step=np.int32(step),
        params=params,
        batch_stats=batch_stats,
        opt_state=(),
        rng=np.zeros(2, np.uint32),
        lr_scale=np.float32(1),
        skipped_steps=np.int32(0),
        first_nonfinite_step=np.int32(-1),
        ema=ema_entry if ema_entry is not None else {},
    )


def test_decay_warms_up_then_caps():
    assert float(ema.decay_at(0.999, 0)) == pytest.approx(1 / 10)
    assert float(ema.decay_at(0.999, 2)) == pytest.approx(3 / 12)
    assert float(ema.decay_at(0.5, 100)) == pytest.approx(0.5)  # (101/110 > 0.5)


def test_three_updates_match_the_hand_computed_sequence():
    # weights 0 initially; the steps' new weights 1, 2, 4; decays 1/10, 2/11, 3/12:
    #   0.1 * 0   + 0.9  * 1 = 0.9
    #   2/11 * 0.9 + 9/11 * 2 = 1.8
    #   0.25 * 1.8 + 0.75 * 4 = 3.45
    # The BatchNorm statistics follow the same rule (here 10, 20, 40 from 0 -> 9, 18, 34.5).
    state = _state({"w": np.zeros(2, np.float32)}, {"m": np.zeros(1, np.float32)})
    state = state.replace(ema=ema.initial(state.params, state.batch_stats, 0.9))
    expected = [0.9, 1.8, 3.45]
    for t, (value, want) in enumerate(zip([1.0, 2.0, 4.0], expected)):
        new = state.replace(
            step=np.int32(t + 1),
            params={"w": np.full(2, value, np.float32)},
            batch_stats={"m": np.full(1, 10 * value, np.float32)},
        )
        state = ema.update(new, np.int32(t))
        np.testing.assert_allclose(np.asarray(state.ema["params"]["w"]), [want, want], rtol=1e-6)
        np.testing.assert_allclose(np.asarray(state.ema["batch_stats"]["m"]), [10 * want], rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(state.params["w"]), [value, value])  # live weights untouched
    # Evaluation applies the averaged weights.
    np.testing.assert_allclose(np.asarray(state.variables["params"]["w"]), [3.45, 3.45], rtol=1e-6)


def test_without_an_average_update_is_the_identity_and_variables_are_live():
    state = _state({"w": np.ones(2, np.float32)}, {})
    assert ema.update(state, np.int32(0)) is state
    assert state.variables == {"params": state.params}
    assert ema.attach(lambda seed: state, 0.0)(0) is state


@pytest.mark.parametrize("kind", ["shard_map", "pmap"])
def test_the_train_step_averages_its_new_weights(kind):
    model, tx = TinyBN(axis_name=AXIS), optax.sgd(0.5)
    init = ema.attach(functools.partial(create_train_state, model, tx, input_shape=(8, 8, 1)), 0.9)
    state = init(0)
    rng = np.random.default_rng(1)
    batch = {
        "image": rng.normal(size=(8, 8, 8, 1)).astype(np.float32),
        "label": rng.integers(0, 3, 8).astype(np.int32),
    }
    train_fn = functools.partial(
        train_step, model=model, tx=tx, schedule=optax.constant_schedule(0.5), loss=LossConfig(num_classes=3)
    )
    engine = make_engine(kind, train_fn, functools.partial(eval_step, model=model), jax.devices()[:4])
    device_state = engine.put_state(state)
    expected_params, expected_stats = state.ema["params"], state.ema["batch_stats"]
    for t in range(2):
        device_state, _ = engine.train_step(device_state, engine.put_batch(batch))
        new = engine.host_state(device_state)
        d = float(ema.decay_at(0.9, t))
        mix = lambda e, n: d * np.asarray(e, np.float64) + (1 - d) * np.asarray(n, np.float64)  # noqa: E731
        expected_params = jax.tree.map(mix, expected_params, new.params)
        expected_stats = jax.tree.map(mix, expected_stats, new.batch_stats)
        for got, want in zip(
            jax.tree.leaves(new.ema),
            jax.tree.leaves({"decay": 0.9, "params": expected_params, "batch_stats": expected_stats}),
        ):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-7)
    # A real update: the average differs from the live weights.
    assert not np.allclose(jax.tree.leaves(new.ema["params"])[0], jax.tree.leaves(new.params)[0])


def test_a_run_with_ema_evaluates_and_loads_the_average(base_config, tmp_path):
    config = base_config.replace(epochs=2, ema_decay=0.9)
    results = train_and_evaluate(config, tmp_path / "run")
    assert results["evaluated_weights"] == "ema"
    # Per-epoch validation (early stopping, the best checkpoint) used the same averaged
    # weights as the final evaluation: the best epoch's val_loss is the final one.
    best = history(tmp_path / "run")[results["best_epoch"] - 1]
    assert results["validation"]["loss"] == pytest.approx(best["val_loss"], rel=1e-6)
    run = load_run(tmp_path / "run")
    assert run.weights == "ema"
    live = load_run(tmp_path / "run", weights="live")
    assert live.weights == "live" and live.step == run.step
    assert not np.allclose(jax.tree.leaves(run.variables)[0], jax.tree.leaves(live.variables)[0])
    # The checkpoint holds the average next to the live weights...
    from cxrjax.data import load

    ds = load(config.dataset, data_dir=config.data_dir, options=config.dataset_options)
    preds = predict_split(run, ds, "test", 8)
    # ...and evaluation after training (load_run's default) reproduces the trainer's test numbers.
    assert float((preds.predictions == preds.labels).mean()) == pytest.approx(results["test"]["accuracy"])
    from cxrjax.reporting.metrics import classification_report

    report = classification_report(preds.labels, preds.probs, ds.class_names)
    assert report["loss"] == pytest.approx(results["test"]["loss"], rel=1e-5)


def test_asking_for_the_average_of_a_run_without_one_is_an_error(base_config, tmp_path):
    from cxrjax.inference import EvaluationInputError

    tree = {"params": {"w": np.ones(1)}, "batch_stats": {}, "ema": {}}
    assert checkpoint_variables(tree, base_config, None, tmp_path)[0] == "live"
    with pytest.raises(EvaluationInputError, match="no moving average"):
        checkpoint_variables(tree, base_config, "ema", tmp_path)


def test_decay_must_lie_in_zero_one(base_config):
    with pytest.raises(ValueError, match="ema_decay"):
        base_config.replace(ema_decay=1.0)
    with pytest.raises(ValueError, match="ema_decay"):
        base_config.replace(ema_decay=-0.1)
    assert base_config.ema_decay == 0.0  # off by default


def test_checkpoint_tree_holds_the_average_only_when_kept():
    from cxrjax.train.state import from_tree, to_tree

    plain = _state({"w": np.ones(2, np.float32)}, {"m": np.zeros(1, np.float32)})
    tree = to_tree(plain)
    assert "ema" not in tree  # laid out as before EMA existed: older checkpoints still restore
    assert from_tree(plain, tree).ema == {}
    kept = plain.replace(ema=ema.initial(plain.params, plain.batch_stats, 0.99))
    tree = to_tree(kept)
    assert set(tree["ema"]) == {"decay", "params", "batch_stats"}
    restored = from_tree(kept, tree)
    np.testing.assert_array_equal(restored.ema["params"]["w"], [1.0, 1.0])
    assert float(restored.ema["decay"]) == pytest.approx(0.99)

"""Nothing silent about non-finite training: an update that would overflow the state is
never applied, the skipped steps of the whole run are counted, a run that skipped too many
ends loudly, and a run that diverged is warned about.

The runs share test_train_loop_runs.py's tiny BatchNorm network (4 steps per epoch on 4
devices); a non-finite batch is injected through the trainer's data API, and a huge
learning rate (1e39 is inf in float32) makes an update overflow with a finite loss.
"""

import functools

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from cxrjax.train import trainer as trainer_module
from cxrjax.train.trainer import NonFiniteError, train_and_evaluate
from tests.train.support import history, inject_nan


# ------------------------------------------------------------------ 5a: the updated state
class _Tiny(nn.Module):
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, *, train):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train, axis_name=self.axis_name)(x)
        return nn.Dense(3)(nn.relu(x).mean(axis=(1, 2)))


def test_a_finite_loss_step_whose_update_overflows_is_not_applied():
    from cxrjax.train.parallel import make_engine
    from cxrjax.train.state import create_train_state
    from cxrjax.train.steps import AXIS, LossConfig, eval_step, train_step

    model, tx = _Tiny(axis_name=AXIS), optax.sgd(1e39)  # 1e39 is inf in float32
    state = create_train_state(model, tx, seed=0, input_shape=(8, 8, 1))
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(8, 8, 8, 1)).astype(np.float32), "label": rng.integers(0, 3, 8).astype(np.int32)}
    train_fn = functools.partial(
        train_step, model=model, tx=tx, schedule=optax.constant_schedule(1e39), loss=LossConfig(num_classes=3)
    )
    engine = make_engine("shard_map", train_fn, functools.partial(eval_step, model=model), jax.devices()[:2])
    new_state, metrics = engine.train_step(engine.put_state(state), engine.put_batch(batch))
    new_state, metrics = engine.host_state(new_state), engine.host_metrics(metrics)
    assert not bool(metrics["finite"])  # skipped...
    assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])  # ...though loss and grads were fine
    assert bool(metrics["finite_loss_and_grads"])
    for before, after in zip(jax.tree.leaves(state.variables), jax.tree.leaves(new_state.variables), strict=True):
        np.testing.assert_array_equal(np.asarray(before), np.asarray(after))  # unchanged, so finite
    assert int(new_state.skipped_steps) == 1 and int(new_state.first_nonfinite_step) == 0


def test_skip_mode_with_overflowing_updates_never_reaches_validation_with_nan_params(base_config, tmp_path):
    """Before: step 0 (finite loss) made the params inf, then validation crashed in sklearn."""
    config = base_config.replace(optimizer="sgd", lr=1e39, on_nonfinite="skip")
    with pytest.raises(NonFiniteError, match=r"4 of the run's 4 steps \(100%\) were skipped") as err:
        train_and_evaluate(config, tmp_path)  # 5b: every update skipped -> loud, no results
    assert err.value.step == 0
    assert not (tmp_path / "results.json").exists()
    from cxrjax.inference import load_run

    run = load_run(tmp_path, "latest")
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(run.variables))


def test_nonfinite_error_names_the_overflowing_update_and_the_state_is_unchanged(base_config, tmp_path):
    """14e: the first bad step is the overflowing update itself (not the NaN loss after it)."""
    with pytest.raises(NonFiniteError) as err:
        train_and_evaluate(base_config.replace(optimizer="sgd", lr=1e39), tmp_path)
    message = str(err.value)
    assert err.value.step == 0, message
    assert "the loss (" in message and "every gradient were finite" in message and "new params" in message
    assert "update was not applied" in message and "state stayed finite" in message


# ------------------------------------------------------- 5b, 5c: skipped steps of the run
def test_a_run_that_skipped_every_step_ends_loudly(base_config, tmp_path, monkeypatch):
    inject_nan(monkeypatch, {0: {0, 1, 2, 3}})
    config = base_config.replace(on_nonfinite="skip")
    with pytest.raises(NonFiniteError, match="max_skipped_fraction=0.5") as err:
        train_and_evaluate(config, tmp_path / "default")
    assert isinstance(err.value, trainer_module.TooManySkippedStepsError)
    assert not (tmp_path / "default" / "results.json").exists()
    # With the limit at 1 the same run finishes, and says what happened.
    results = train_and_evaluate(config.replace(max_skipped_fraction=1.0), tmp_path / "allowed")
    assert results["skipped_nonfinite_steps"] == 4
    assert any("4 of 4 steps were skipped" in w for w in results["warnings"])
    with pytest.raises(ValueError, match=r"max_skipped_fraction must be >= 0 and <= 1"):
        config.replace(max_skipped_fraction=1.5)


class _Killed(Exception):
    pass


def test_results_count_the_skipped_steps_of_every_session_not_the_restored_checkpoint(
    base_config, tmp_path, monkeypatch
):
    # 2 epochs, epoch 1 the best (epoch 2 cannot improve by min_delta 100), so the test
    # evaluation restores epoch 1's checkpoint, which counted 1 skip; the run skipped 3.
    inject_nan(monkeypatch, {0: {2}, 1: {1, 3}})
    config = base_config.replace(epochs=2, on_nonfinite="skip", early_stopping_min_delta=100.0)

    def kill_after_epoch_1(step):
        if step == 4:
            raise _Killed

    with pytest.raises(_Killed):  # a first session, stopped after epoch 1's checkpoint
        train_and_evaluate(config, tmp_path, on_checkpoint=kill_after_epoch_1)
    results = train_and_evaluate(config, tmp_path)  # the second session
    assert results["evaluated"]["epoch"] == 1 == results["best_epoch"]
    assert [h["skipped_nonfinite"] for h in history(tmp_path)] == [1, 2]
    assert results["skipped_nonfinite_steps"] == 3


# ------------------------------------------------------------------ 15b: divergence warned
def test_a_diverged_run_is_warned_about(base_config, tmp_path, capsys):
    results = train_and_evaluate(base_config.replace(lr=1e6), tmp_path)  # Adam at lr 1e6
    (record,) = history(tmp_path)
    assert record["train_loss"] is None or record["train_loss"] > 1e6
    (warning,) = results["warnings"]
    assert warning.startswith("the run diverged") and "train loss" in warning
    assert f"warning: {warning}" in capsys.readouterr().err.splitlines()  # with progress=False too
    train_and_evaluate(base_config.replace(lr=1e6), tmp_path)  # re-running the finished run repeats it
    assert f"warning: {warning}" in capsys.readouterr().err.splitlines()

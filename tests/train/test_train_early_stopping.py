"""Early stopping, improvement tracking (min_delta, ties, NaN) and reduce-on-plateau."""

import math

from cxrjax.train.early_stopping import EarlyStopping, ImprovementTracker, PlateauScaler


def _run(stopper, values):
    stopped_at = None
    for epoch, value in enumerate(values, start=1):
        stopper.update(value, epoch)
        if stopper.should_stop:
            stopped_at = epoch
            break
    return stopped_at


def test_patience_and_min_delta_on_loss():
    stopper = EarlyStopping(ImprovementTracker("min", min_delta=0.1), patience=2)
    # 0.95 is better but not by more than 0.1: no improvement. 0.85 improves.
    stopped = _run(stopper, [1.0, 0.95, 0.85, 0.84, 0.83, 0.1])
    assert stopped == 5
    assert stopper.tracker.best_epoch == 3 and stopper.tracker.best == 0.85


def test_accuracy_mode_ties_keep_the_earlier_epoch_and_nan_never_improves():
    tracker = ImprovementTracker("max")
    assert tracker.update(0.5, 1)
    assert not tracker.update(0.5, 2)
    assert not tracker.update(math.nan, 3)
    assert tracker.update(0.6, 4)
    assert (tracker.best_epoch, tracker.wait) == (4, 0)


def test_no_patience_never_stops_and_state_round_trips():
    stopper = EarlyStopping(ImprovementTracker("min"), patience=None)
    assert _run(stopper, [1.0] * 10) is None
    copy = EarlyStopping.from_dict(stopper.to_dict())
    assert copy == stopper and copy.tracker.wait == 9


def test_plateau_scaler_reduces_after_patience_and_respects_min_lr():
    plateau = PlateauScaler(ImprovementTracker("min"), factor=0.5, patience=1, base_lr=1e-4, min_lr=5e-5)
    scales = [plateau.update(v, e) for e, v in enumerate([1.0, 1.0, 1.0, 1.0], start=1)]
    # S1: 1e-4 reduced on plateau to 5e-5 and no lower.
    assert scales == [1.0, 0.5, 0.5, 0.5]
    assert PlateauScaler.from_dict(plateau.to_dict()) == plateau

"""results.json["timings"]: the per-phase wall time of a session, and ``plots=False``
(no per-run PNGs; result-irrelevant, so a finished run is still read back with it on)."""

import pytest

from cxrjax.train.timings import PHASES, PhaseTimings
from cxrjax.train.trainer import train_and_evaluate


def test_phase_timings_accumulate_nest_once_and_fill_other():
    t = PhaseTimings()
    t.add("train", 1.5)
    t.add("train", 0.5)
    with t.phase("checkpoints"):
        with t.phase("checkpoints"):  # nested in itself: not counted twice
            pass
    inner = t.seconds["checkpoints"]
    out = t.report(total=10.0)
    assert set(out) == {*PHASES, "other", "total"}
    assert out["train"] == 2.0 and out["checkpoints"] == inner and out["plots"] == 0.0
    assert out["other"] == pytest.approx(10.0 - 2.0 - inner) and out["total"] == 10.0
    assert PhaseTimings().report(total=0.0)["other"] == 0.0


def test_run_records_its_phases_and_draws_no_plots_when_off(base_config, tmp_path):
    config = base_config.replace(epochs=2, plots=False)
    results = train_and_evaluate(config, tmp_path)
    timings = results["timings"]
    assert set(timings) == {*PHASES, "other", "total"}
    assert all(v >= 0 for v in timings.values())
    for phase in ("dataset_open", "setup", "compile_first_epoch", "train", "validation", "checkpoints", "test"):
        assert timings[phase] > 0, phase
    assert timings["plots"] == 0.0
    assert sum(v for k, v in timings.items() if k != "total") == pytest.approx(timings["total"])
    assert timings["total"] <= results["session_wall_seconds"] + timings["plots"] + timings["results"] + 1.0
    # the epochs' train and validation seconds are those of metrics.jsonl
    from cxrjax.train.workdir import read_history

    first, second = read_history(tmp_path)
    assert timings["compile_first_epoch"] == pytest.approx(first["train_seconds"])
    assert timings["train"] == pytest.approx(second["train_seconds"])
    assert timings["validation"] == pytest.approx(first["eval_seconds"] + second["eval_seconds"])
    assert not list(tmp_path.glob("*.png"))
    # plots is result-irrelevant: the finished run is read back, not refused or retrained
    assert train_and_evaluate(config.replace(plots=True), tmp_path) == results
    assert not list(tmp_path.glob("*.png"))

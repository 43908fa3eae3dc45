"""experiments.grid logs each finished run's varied hyper-parameters and test metrics for
TensorBoard's HParams view (read back with TensorBoard's EventAccumulator)."""

import dataclasses

import pytest
from tensorboard.backend.event_processing import event_accumulator

from experiments import grid


@dataclasses.dataclass(frozen=True)
class FakeConfig:
    seed: int
    lr: float = 0.1
    epochs: int = 2
    model_options: dict = dataclasses.field(default_factory=dict)
    data_dir: str = "/data"


def fake_run(config, workdir):
    if config.lr < 0:
        raise FloatingPointError("diverged")
    return {"test": {"accuracy": 0.5 + config.lr, "macro_f1": 0.4, "loss": 1.0}, "epochs_run": 2}


def _session(run_dir):
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = event_accumulator.EventAccumulator(str(run_dir / "tensorboard" / "hparams"))
    acc.Reload()
    raw = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(raw).session_start_info
    values = {name: getattr(v, v.WhichOneof("kind")) for name, v in start.hparams.items()}
    return values, {tag: acc.Scalars(tag)[0].value for tag in acc.Tags()["scalars"]}


def test_grid_runs_log_varied_hparams_and_test_metrics(tmp_path):
    specs = [
        grid.RunSpec("small", 0, FakeConfig(0, lr=0.1, model_options={"features": [4]})),
        grid.RunSpec("big", 0, FakeConfig(0, lr=0.2, model_options={"features": [8]}, data_dir="/elsewhere")),
        grid.RunSpec("bad", 0, FakeConfig(0, lr=-1.0)),
    ]
    records = grid.run_grid(specs, tmp_path, fake_run, progress=False)
    assert [r.ok for r in records] == [True, True, False]
    values, metrics = _session(records[1].run_dir)
    # seed and epochs are the same in every run: seed is still logged, epochs is not;
    # data_dir cannot change results (config.RESULT_IRRELEVANT_FIELDS), so it is not logged.
    assert values == {"cell": "big", "lr": 0.2, "model_options.features": "[8]", "seed": 0.0}
    assert metrics == pytest.approx({"test_accuracy": 0.7, "test_macro_f1": 0.4, "test_loss": 1.0})
    assert _session(records[0].run_dir)[0]["lr"] == 0.1
    assert not (records[2].run_dir / "tensorboard").exists()  # a failed run logs nothing

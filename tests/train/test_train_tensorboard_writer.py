"""cxrjax.train.tensorboard (tensorboardX) read back with TensorBoard's own reader,
EventAccumulator: scalars' tags, steps and values; the HParams plugin's session data."""

from tensorboard.backend.event_processing import event_accumulator

from cxrjax.train.tensorboard import (
    ScalarWriter,
    varied_hparams,
    write_hparams,
    write_run_hparams,
)


def _accumulator(logdir):
    acc = event_accumulator.EventAccumulator(str(logdir))
    acc.Reload()
    return acc


def _hparams_session(logdir):
    """(hparam values by name, experiment's hparam names, experiment's metric tags)."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = _accumulator(logdir).PluginTagToContent("hparams")
    assert set(content) == {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}
    data = {tag: plugin_data_pb2.HParamsPluginData.FromString(raw) for tag, raw in content.items()}
    start = data["_hparams_/session_start_info"].session_start_info
    values = {name: getattr(v, v.WhichOneof("kind")) for name, v in start.hparams.items()}
    experiment = data["_hparams_/experiment"].experiment
    return values, {h.name for h in experiment.hparam_infos}, {m.name.tag for m in experiment.metric_infos}


def test_scalars_read_back_by_tag_step_and_value(tmp_path):
    with ScalarWriter(tmp_path) as writer:
        writer.scalars(7, {"train_loss": 0.25, "val_accuracy": 0.5, "missing": None})
        writer.scalars(300, {"train_loss": 0.125})
    with ScalarWriter(tmp_path) as writer:  # a resumed session: a second file, same folder
        writer.scalars(301, {"train_loss": 0.0625})
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    acc = _accumulator(tmp_path)
    assert sorted(acc.Tags()["scalars"]) == ["train_loss", "val_accuracy"]
    assert [(e.step, e.value) for e in acc.Scalars("train_loss")] == [(7, 0.25), (300, 0.125), (301, 0.0625)]
    assert [(e.step, e.value) for e in acc.Scalars("val_accuracy")] == [(7, 0.5)]


def test_hparams_plugin_data_read_back(tmp_path):
    hparams = {
        "lr": 0.003,
        "model": "s4_exp8",
        "hflip": True,
        "seed": 2,
        "model_options.features": [4, 8],
        "dropout": None,
    }
    session = write_hparams(tmp_path, hparams, {"test_accuracy": 0.75, "test_loss": float("nan")})
    assert session == tmp_path / "hparams"
    assert not list(tmp_path.glob("events.out.tfevents.*"))  # nothing beside the session folder
    values, names, metrics = _hparams_session(session)
    assert values == {"lr": 0.003, "model": "s4_exp8", "hflip": True, "seed": 2.0, "model_options.features": "[4, 8]"}
    assert names == set(values) and metrics == {"test_accuracy"}  # None and non-finite left out
    assert [(e.step, e.value) for e in _accumulator(session).Scalars("test_accuracy")] == [(0, 0.75)]
    # Writing again replaces the session rather than adding a second one.
    write_hparams(tmp_path, {"lr": 0.1}, {"test_accuracy": 0.5})
    assert len(list(session.glob("events.out.tfevents.*"))) == 1
    assert _hparams_session(session)[0] == {"lr": 0.1}


def test_run_hparams_take_the_test_metrics_of_results(tmp_path):
    results = {"test": {"accuracy": 0.5, "macro_f1": 0.4, "loss": 1.25, "confusion_matrix": [[1]]}, "best_epoch": 1}
    session = write_run_hparams(tmp_path, {"cell": "a", "seed": 0}, results)
    assert session == tmp_path / "tensorboard" / "hparams"
    values, _, metrics = _hparams_session(session)
    assert values == {"cell": "a", "seed": 0.0}
    assert metrics == {"test_accuracy", "test_macro_f1", "test_loss"}
    assert write_run_hparams(tmp_path / "none", {"cell": "a"}, {"best_epoch": 1}) is None
    assert not (tmp_path / "none").exists()


def test_varied_hparams_keeps_only_what_differs_with_one_type_per_field():
    configs = [
        {
            "model": "a",
            "lr": 0.1,
            "seed": 0,
            "patience": None,
            "model_options": {"features": [4], "head": 8},
            "data_dir": "/x",
        },
        {
            "model": "a",
            "lr": 0.2,
            "seed": 1,
            "patience": 3,
            "model_options": {"features": [8], "head": 8, "bn": "all"},
            "data_dir": "/y",
        },
    ]
    assert varied_hparams(configs, ignore=["data_dir"]) == [
        {"lr": 0.1, "model_options.bn": "null", "model_options.features": "[4]", "patience": "null", "seed": 0},
        {"lr": 0.2, "model_options.bn": "all", "model_options.features": "[8]", "patience": "3", "seed": 1},
    ]
    assert varied_hparams(configs[:1]) == [{}]

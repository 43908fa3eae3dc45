"""TrainConfig JSON round trip, presets, CLI precedence, and the workdir config check."""

import pytest

from cxrjax.train.cli import build_parser, config_from_args
from cxrjax.train.config import TrainConfig
from cxrjax.train.presets import PRESETS, describe
from cxrjax.train.workdir import ConfigMismatchError, check_or_write_config


def test_every_preset_round_trips_and_names_a_registered_model_and_dataset():
    from cxrjax import models
    from cxrjax.data import DATASETS

    assert len(PRESETS) >= 30
    for name, config in PRESETS.items():
        assert TrainConfig.from_dict(config.to_dict()) == config
        assert config.model in models.MODELS, name
        assert config.dataset in DATASETS, name
        doc = describe(name)
        assert f"--preset {name}" in doc and "Expected" in doc, name
    assert PRESETS["s4_exp5"].early_stopping_patience == 3 and PRESETS["s4_exp5"].restore_best
    assert PRESETS["s4_exp4"].early_stopping_patience is None and not PRESETS["s4_exp4"].restore_best


def test_unknown_and_invalid_fields_are_refused():
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")


def test_cli_explicit_flags_override_the_preset():
    args = build_parser().parse_args(
        [
            "--preset",
            "s4_exp4_phantoms",
            "--epochs",
            "3",
            "--lr",
            "0.001",
            "--dataset-option",
            "num_train=64",
            "--set",
            "zoom=[1, 1.2]",
            "--no-progress",
        ]
    )
    config = config_from_args(args)
    base = PRESETS["s4_exp4_phantoms"]
    assert (config.epochs, config.lr, config.model, config.per_device_batch_size) == (
        3,
        0.001,
        base.model,
        base.per_device_batch_size,
    )
    assert config.dataset_options == {**base.dataset_options, "num_train": 64}
    assert config.zoom == (1, 1.2) and config.progress is False


def test_a_different_config_in_an_existing_workdir_is_refused(tmp_path):
    config = TrainConfig(epochs=2)
    assert check_or_write_config(tmp_path, config) is False
    # Nothing trained yet (no checkpoint): the folder is simply reused.
    assert check_or_write_config(tmp_path, config.replace(lr=0.5)) is True
    assert check_or_write_config(tmp_path, config) is True
    (tmp_path / "checkpoints" / "4").mkdir(parents=True)  # now it holds a checkpoint
    # Fields that cannot change the results are not a mismatch.
    assert check_or_write_config(tmp_path, config.replace(progress=False, data_dir="/elsewhere")) is True
    with pytest.raises(ConfigMismatchError) as err:
        check_or_write_config(tmp_path, config.replace(lr=0.1, seed=3))
    message = str(err.value)
    assert "lr: saved 0.001, now 0.1" in message and "seed: saved 0, now 3" in message
    assert "another --workdir" in message


# Every named flag the CLI had before the flags were built from TrainConfig's field
# declarations (--batch-size now under its new name; the old spelling is tested below),
# with a value and the field it sets: the spellings keep working.
OLD_FLAGS = [
    ("--model", "vgg16", "model", "vgg16"),
    ("--dataset", "image_folder", "dataset", "image_folder"),
    ("--data-dir", "/d", "data_dir", "/d"),
    ("--manual-dir", "/m", "manual_dir", "/m"),
    ("--image-size", "20", "image_size", 20),
    ("--channels", "3", "channels", 3),
    ("--epochs", "3", "epochs", 3),
    ("--lr", "0.01", "lr", 0.01),
    ("--optimizer", "sgd", "optimizer", "sgd"),
    ("--schedule", "step", "schedule", "step"),
    ("--seed", "5", "seed", 5),
    ("--early-stopping-patience", "2", "early_stopping_patience", 2),
    ("--early-stopping-min-delta", "0.01", "early_stopping_min_delta", 0.01),
    ("--monitor", "val_accuracy", "monitor", "val_accuracy"),
    ("--parallel", "pmap", "parallel", "pmap"),
    ("--num-devices", "2", "num_devices", 2),
    ("--label-smoothing", "0.1", "label_smoothing", 0.1),
    ("--weight-decay", "0.001", "weight_decay", 0.001),
    ("--grad-clip-norm", "1.5", "grad_clip_norm", 1.5),
    ("--on-nonfinite", "skip", "on_nonfinite", "skip"),
    ("--checkpoint-every-steps", "7", "checkpoint_every_steps", 7),
    ("--compilation-cache", "/c", "compilation_cache_dir", "/c"),
    ("--dtype", "bfloat16", "dtype", "bfloat16"),
    ("--classes", "COVID,Normal", "classes", ("COVID", "Normal")),
    ("--per-device-batch-size", "4", "per_device_batch_size", 4),
]


@pytest.mark.parametrize("flag, value, name, expected", OLD_FLAGS, ids=[f[0] for f in OLD_FLAGS])
def test_every_named_flag_sets_its_field(flag, value, name, expected):
    config = config_from_args(build_parser().parse_args([flag, value]))
    assert getattr(config, name) == expected
    assert getattr(TrainConfig(), name) != expected  # the flag changed something


def test_bool_flags_and_classes_all():
    parse = build_parser().parse_args
    assert config_from_args(parse(["--no-progress", "--tensorboard"])).progress is False
    assert config_from_args(parse(["--tensorboard"])).tensorboard is True
    assert config_from_args(parse([])) == TrainConfig()  # nothing given, nothing changed
    preset = config_from_args(parse(["--preset", "s0_e_phantoms"]))
    assert preset.classes == ("COVID", "Normal")
    every = config_from_args(parse(["--preset", "s0_e_phantoms", "--classes", "all"]))
    assert every.classes is None and "classes" not in every.dataset_options


def test_choices_are_declared_once_on_the_fields():
    import dataclasses

    from cxrjax.train import config as config_module

    choices = {f.name: f.metadata["choices"] for f in dataclasses.fields(TrainConfig) if f.metadata.get("choices")}
    assert choices["optimizer"] is config_module.OPTIMIZERS and choices["dtype"] is config_module.DTYPES
    assert choices["monitor"] is choices["plateau_monitor"] is config_module.MONITORS
    actions = {a.dest: a for a in build_parser()._actions}
    for name, allowed in choices.items():
        if name in actions:
            assert tuple(actions[name].choices) == allowed, name


def test_deprecated_batch_size_flag_and_set_still_work(capsys):
    config = config_from_args(build_parser().parse_args(["--batch-size", "8"]))
    assert config.per_device_batch_size == 8
    assert "--batch-size is deprecated; use --per-device-batch-size" in capsys.readouterr().err
    config = config_from_args(build_parser().parse_args(["--set", "batch_size=6", "--set", "eval_batch_size=3"]))
    assert (config.per_device_batch_size, config.per_device_eval_batch_size) == (6, 3)
    err = capsys.readouterr().err
    assert "--set batch_size=... is deprecated; use --set per_device_batch_size=..." in err
    assert "per_device_eval_batch_size" in err


def test_old_config_json_with_batch_size_is_read_and_resumed(tmp_path):
    import json

    config = TrainConfig(epochs=2, per_device_batch_size=8, per_device_eval_batch_size=4)
    old = config.to_dict()
    old["batch_size"] = old.pop("per_device_batch_size")  # what an older cxrjax wrote
    old["eval_batch_size"] = old.pop("per_device_eval_batch_size")
    assert TrainConfig.from_dict(old) == config
    (tmp_path / "config.json").write_text(json.dumps(old))
    (tmp_path / "checkpoints" / "4").mkdir(parents=True)  # the old run has trained
    with pytest.raises(ConfigMismatchError, match="per_device_batch_size: saved 8, now 16"):
        check_or_write_config(tmp_path, config.replace(per_device_batch_size=16))
    assert check_or_write_config(tmp_path, config) is True  # same config: resumed, not refused
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["per_device_batch_size"] == 8 and "batch_size" not in saved  # rewritten with the new name
    with pytest.raises(ValueError, match="keep only per_device_batch_size"):
        TrainConfig.from_dict({"batch_size": 8, "per_device_batch_size": 16})


def test_read_history_drops_only_a_torn_last_line(tmp_path):
    from cxrjax.train.workdir import METRICS_FILE, append_history, read_history

    assert read_history(tmp_path) == []
    append_history(tmp_path, {"epoch": 1})
    append_history(tmp_path, {"epoch": 2})
    path = tmp_path / METRICS_FILE
    path.write_text(path.read_text() + '{"epoch": 3, "lo')  # killed mid-append
    assert read_history(tmp_path) == [{"epoch": 1}, {"epoch": 2}]
    path.write_text('{"epoch": 1}\n{"ep\n{"epoch": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_history(tmp_path)


def _fake_results(tmp_path):
    """results.json's dict for a 2-class test split of 4 examples (3 right), with the
    calibration keys, and the files the trainer writes next to it."""
    import numpy as np

    from cxrjax.reporting.calibration import split_calibration_report
    from cxrjax.reporting.metrics import classification_report

    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
    test = classification_report(labels, probs, ["A", "B"])
    test.update(
        split_calibration_report(
            labels, probs, ["A", "B"], temperature=2.0, thresholds={"A": 0.4, "B": 0.6}, resamples=50
        )
    )
    for name in ("results.json", "calibration.json", "reliability_test.png"):
        (tmp_path / name).write_text("{}")
    return {
        "test": test,
        "evaluated": {"checkpoint": "best", "epoch": 1},
        "best_epoch": 1,
        "epochs_run": 1,
        "stopped_early": False,
        "train_images_per_second": 10.0,
        "num_devices": 1,
        "jax_backend": "cpu",
    }


@pytest.mark.parametrize("progress", [False, True])
def test_cli_prints_intervals_calibration_and_operating_points_once(tmp_path, monkeypatch, capsys, progress):
    """With --no-progress the trainer prints nothing, so the CLI's final summary carries the
    intervals, calibration and operating points; with progress the trainer printed them."""
    from cxrjax.train import cli, trainer

    monkeypatch.setattr(trainer, "train_and_evaluate", lambda config, workdir: _fake_results(tmp_path))
    flag = "--progress" if progress else "--no-progress"
    assert cli.main(["--preset", "s4_exp4_phantoms", flag, "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    summary = ["test: accuracy 0.750 [", "test: calibration: ECE", "after temperature 2: ECE"]
    # A: the positives' p_A 0.9, 0.4 reach 0.4, the negatives' 0.2, 0.3 do not
    summary.append("A p >= 0.4: sensitivity 1.000, specificity 1.000")
    assert all((line in out) != progress for line in summary), out
    assert "results.json, metrics.jsonl, calibration.json, reliability_test.png" in out

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
    args = build_parser().parse_args([
        "--preset", "s4_exp4_phantoms", "--epochs", "3", "--lr", "0.001",
        "--dataset-option", "num_train=64", "--set", "zoom=[1, 1.2]", "--no-progress",
    ])
    config = config_from_args(args)
    base = PRESETS["s4_exp4_phantoms"]
    assert (config.epochs, config.lr, config.model, config.batch_size) == (3, 0.001, base.model, base.batch_size)
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

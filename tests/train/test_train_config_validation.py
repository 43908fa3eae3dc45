"""TrainConfig refuses values that would train something else than asked, or crash later:
non-finite floats, out-of-range numbers, non-integers for integer fields; the train CLI
and the experiments turn the refusal into one ``error: ...`` line and exit status 2,
before anything is written or trained."""

import dataclasses
import math

import numpy as np
import pytest

from cxrjax.train.cli import main
from cxrjax.train.config import TrainConfig, scalar_kinds

FLOAT_FIELDS = [name for name, (kind, _) in scalar_kinds().items() if kind is float]
INT_FIELDS = [name for name, (kind, _) in scalar_kinds().items() if kind is int]


def _refused(argv, capsys, *words):
    assert main([*argv, "--print-config"]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.strip().splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err  # one line, no traceback
    assert captured.out == ""  # no config printed
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def test_there_are_float_and_int_fields_to_check():
    assert {"lr", "early_stopping_min_delta", "grad_clip_norm", "rotate_degrees"} <= set(FLOAT_FIELDS)
    assert {"epochs", "per_device_batch_size", "seed", "num_workers"} <= set(INT_FIELDS)


@pytest.mark.parametrize("name", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_every_float_field_must_be_finite(name, value):
    with pytest.raises(ValueError, match=rf"TrainConfig\.{name} must be a finite number"):
        TrainConfig(**{name: value})


@pytest.mark.parametrize(
    "argv, field",
    [
        (["--lr", "nan"], "lr"),
        (["--early-stopping-min-delta", "nan"], "early_stopping_min_delta"),
        (["--set", "lr=NaN"], "lr"),
        (["--set", "class_weights=[1, NaN, 1, 1]"], "class_weights"),
        (["--set", "zoom=[1, Infinity]"], "zoom"),
    ],
)
def test_cli_refuses_non_finite_values(argv, field, capsys):
    _refused(argv, capsys, f"TrainConfig.{field}")


@pytest.mark.parametrize("weights", [[1, -1, 1, 1], [0, 0, 0, 0], [], "uniform"])
def test_class_weights_must_be_balanced_or_finite_non_negative(weights):
    with pytest.raises(ValueError, match="class_weights"):
        TrainConfig(class_weights=weights)
    assert TrainConfig(class_weights=[1, 0, 2, 1]).class_weights == (1.0, 0.0, 2.0, 1.0)
    assert TrainConfig(class_weights="balanced").class_weights == "balanced"


@pytest.mark.parametrize("value", ["-1", "0"])
def test_grad_clip_norm_must_be_positive_or_none(value, capsys):
    # -1 would train by gradient ascent (optax scales by norm / clip), 0 would freeze.
    _refused(["--grad-clip-norm", value], capsys, "grad_clip_norm must be > 0 or None")
    assert TrainConfig(grad_clip_norm=None).grad_clip_norm is None
    assert TrainConfig(grad_clip_norm=1).grad_clip_norm == 1.0


@pytest.mark.parametrize(
    "name, value",
    [
        ("momentum", -0.1),
        ("momentum", 1.0),
        ("adam_b1", 1.0),
        ("adam_b2", -0.5),
        ("adam_eps", 0.0),
        ("weight_decay", -1e-4),
        ("decay", -1.0),
        ("step_gamma", 0.0),
        ("warmup_epochs", -1.0),
        ("min_lr", -1.0),
        ("plateau_factor", 1.0),
        ("plateau_factor", 0.0),
        ("plateau_min_delta", -1.0),
        ("plateau_min_lr", -1.0),
        ("label_smoothing", 1.0),
        ("early_stopping_min_delta", -0.1),
        ("rotate_degrees", -5.0),
        ("lr", 0.0),
        ("plateau_patience", -1),
        ("num_workers", -1),
        ("early_stopping_patience", -1),
        ("epochs", 0),
    ],
)
def test_numbers_out_of_range_are_refused(name, value):
    with pytest.raises(ValueError, match=rf"TrainConfig\.{name} must be "):
        TrainConfig(**{name: value})


@pytest.mark.parametrize(
    "argv, field",
    [
        (["--set", "epochs=1.5"], "epochs"),  # trained 2 epochs
        (["--set", "epochs=2.0"], "epochs"),  # integral floats are refused too: write 2
        (["--set", 'epochs="two"'], "epochs"),  # "'<' not supported"
        (["--set", "epochs=true"], "epochs"),  # bool is not an int
        (["--set", "per_device_batch_size=8.5"], "per_device_batch_size"),  # "cannot schedule new futures"
        (["--set", "batch_size=8.5"], "per_device_batch_size"),  # the old name, mapped
        (["--set", "seed=0.5"], "seed"),
        (["--set", "image_size=20.5"], "image_size"),
        (["--set", "hflip=1"], "hflip"),
        (["--set", 'lr="0.1"'], "lr"),
        (["--set", "optimizer=3"], "optimizer"),
        (["--dataset-option", "classes=5"], "dataset_options['classes']"),
    ],
)
def test_cli_refuses_wrong_types_naming_the_field_and_the_fix(argv, field, capsys):
    line = _refused(argv, capsys, f"TrainConfig.{field} must be", "--set")
    assert "not supported" not in line


def test_integers_and_floats_from_numpy_or_json_are_normalised():
    config = TrainConfig(epochs=np.int64(3), lr=1, zoom=[1, 1.2], rotate_degrees=np.float32(5))
    assert type(config.epochs) is int and config.epochs == 3
    assert type(config.lr) is float and config.lr == 1.0
    assert config.zoom == (1.0, 1.2) and type(config.rotate_degrees) is float
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_every_int_field_refuses_a_fractional_float():
    for name in INT_FIELDS:
        value = getattr(TrainConfig(), name)
        with pytest.raises(ValueError, match=rf"TrainConfig\.{name} must be an integer"):
            TrainConfig(**{name: float(value if value is not None else 4) + 0.5})


def test_a_refused_config_writes_nothing(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert main(["--lr", "nan", "--workdir", str(workdir), "--no-progress"]) == 2
    assert not workdir.exists()
    assert capsys.readouterr().err.startswith("error: invalid configuration: TrainConfig.lr")


def test_the_experiments_refuse_with_one_error_line(tmp_path, capsys):
    from experiments import reproduce_s3

    calls = []
    argv = [
        "--workdir",
        str(tmp_path / "s3"),
        "--seeds",
        "1",
        "--no-progress",
        "--compilation-cache",
        "",
        "--jobs",
        "1",
        "--set",
        "epochs=1.5",
    ]
    assert reproduce_s3.main(argv, run_fn=lambda config, workdir: calls.append(workdir)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: invalid training option: TrainConfig.epochs"), err
    assert calls == [] and not (tmp_path / "s3").exists()
    assert reproduce_s3.main([*argv[:-1], "nope=1"], run_fn=lambda c, w: {}) == 2
    assert "TrainConfig has no field 'nope'" in capsys.readouterr().err
    # A finished grid asked to run with another learning rate: the engine's refusal, one line.
    assert reproduce_s3.main(argv[:-2], run_fn=lambda c, w: {"test": {"accuracy": 0.5}}) == 0
    capsys.readouterr()
    assert reproduce_s3.main([*argv[:-2], "--lr", "0.1"], run_fn=lambda c, w: calls.append(w)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "lr: saved 0.001, now 0.1" in err and calls == []


def test_every_field_is_declared_with_help():
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help"), f.name


NEW_INPUT_FLAGS = [
    "--translate", "0.1", "--contrast", "0.8,1.2", "--gamma", "0.9,1.1", "--random-erasing", "0.5",
    "--border-erase", "0.1", "--crop-box", "0.15,0.90,0.15,0.85", "--normalization", "per_image",
]  # fmt: skip


def test_new_input_options_from_flags_reach_config_json_and_are_result_relevant():
    from cxrjax.train.cli import build_parser, config_from_args
    from cxrjax.train.config import RESULT_IRRELEVANT_FIELDS, result_relevant_differences
    from cxrjax.train.run_setup import input_config_fields

    config = config_from_args(build_parser().parse_args(NEW_INPUT_FLAGS))
    assert (config.translate, config.contrast, config.gamma) == (0.1, (0.8, 1.2), (0.9, 1.1))
    assert (config.random_erasing, config.border_erase) == (0.5, 0.1)
    assert config.crop_box == (0.15, 0.90, 0.15, 0.85) and config.normalization == "per_image"
    saved = config.to_dict()
    assert saved["crop_box"] == [0.15, 0.90, 0.15, 0.85] and saved["contrast"] == [0.8, 1.2]
    assert TrainConfig.from_dict(saved) == config  # config.json round trip
    fields = input_config_fields(config)  # what checkpoints store and load_run evaluates with
    assert {k: fields[k] for k in ("translate", "crop_box", "normalization")} == {
        "translate": 0.1,
        "crop_box": (0.15, 0.90, 0.15, 0.85),
        "normalization": "per_image",
    }
    default = TrainConfig().to_dict()
    old_config_json = {k: v for k, v in default.items() if k not in fields or k in ("normalization",)}
    assert result_relevant_differences(old_config_json, default) == {}  # runs from before still resume
    for name in ("translate", "contrast", "gamma", "random_erasing", "border_erase", "crop_box", "normalization"):
        assert name not in RESULT_IRRELEVANT_FIELDS
        assert name in result_relevant_differences(default, saved), name
    assert config_from_args(build_parser().parse_args(["--crop-box", "none", "--contrast", "none"])).crop_box is None


def test_the_base_augmentations_have_named_flags_equal_to_their_set_spelling_and_beating_the_recipe():
    from cxrjax.train.cli import build_parser, config_from_args

    def config(*argv):
        return config_from_args(build_parser().parse_args(list(argv)))

    flags = config(
        "--recipe", "cxr", "--hflip", "--rotate-degrees", "10", "--zoom", "0.8,1.25", "--brightness", "0.9,1.1"
    )
    sets = config(
        "--recipe", "cxr", "--set", "hflip=true", "--set", "rotate_degrees=10", "--set", "zoom=[0.8,1.25]",
        "--set", "brightness=[0.9,1.1]",
    )  # fmt: skip
    recipe = config("--recipe", "cxr")
    assert (flags.hflip, flags.rotate_degrees, flags.zoom, flags.brightness) == (True, 10.0, (0.8, 1.25), (0.9, 1.1))
    assert flags == sets and flags.to_dict()["zoom"] == [0.8, 1.25]
    # explicit options win over the recipe (cxr: no flip, 7 degrees, zoom 0.9-1.1); the rest is the recipe's
    assert (recipe.hflip, recipe.rotate_degrees, recipe.zoom) == (False, 7.0, (0.9, 1.1))
    assert flags.translate == recipe.translate and flags.crop_box == recipe.crop_box
    assert config("--recipe", "cxr", "--zoom", "none", "--no-hflip").zoom is None


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--contrast", "1.2,0.8"], ["TrainConfig.contrast", "0 < lo <= hi"]),
        (["--zoom", "1.2,0.8"], ["TrainConfig.zoom", "0 < lo <= hi"]),
        (["--rotate-degrees", "-5"], ["TrainConfig.rotate_degrees must be >= 0"]),
        (["--set", "gamma=[0, 1]"], ["TrainConfig.gamma"]),
        (["--translate", "0.7"], ["TrainConfig.translate must be >= 0 and <= 0.5"]),
        (["--random-erasing", "1.5"], ["TrainConfig.random_erasing must be >= 0 and <= 1"]),
        (["--border-erase", "0.5"], ["TrainConfig.border_erase must be >= 0 and < 0.5"]),
        (["--crop-box", "0.9,0.1,0,1"], ["TrainConfig.crop_box", "--crop-box 0.15,0.90,0.15,0.85"]),
        (["--set", "crop_box=[0, 1, 0]"], ["TrainConfig.crop_box"]),
    ],
)
def test_bad_new_input_options_are_one_error_line(argv, words, capsys):
    _refused(argv, capsys, *words)


def test_unparsable_box_or_range_flags_are_argparse_errors_naming_the_format(capsys):
    for argv, words in ((["--crop-box", "0.1,0.9"], "TOP,BOTTOM,LEFT,RIGHT"), (["--gamma", "low,high"], "LO,HI")):
        with pytest.raises(SystemExit) as exit_:
            main([*argv, "--print-config"])
        assert exit_.value.code == 2 and words in capsys.readouterr().err

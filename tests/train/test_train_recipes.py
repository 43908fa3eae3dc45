"""Recipes: preset < recipe < explicit options, recorded in the config (config.json), on the
train CLI and the experiments' command lines; unknown recipes refused with the list."""

import json

import pytest

from cxrjax.train import recipes
from cxrjax.train.cli import build_parser, config_from_args
from cxrjax.train.cli import main as train_main
from cxrjax.train.config import TrainConfig
from cxrjax.train.presets import PRESETS
from cxrjax.train.workdir import check_or_write_config


def test_every_recipe_names_valid_fields_and_values():
    recipes.check_recipes()
    assert "cxr" in recipes.RECIPES
    assert "PROVISIONAL" in recipes.__doc__


def test_recipe_overrides_the_preset_and_explicit_options_override_the_recipe():
    cxr = recipes.RECIPES["cxr"]
    preset = PRESETS["s3_lenet5"]
    args = build_parser().parse_args(["--preset", "s3_lenet5", "--recipe", "cxr", "--lr", "0.0003"])
    config = config_from_args(args)
    assert config.recipe == "cxr"
    assert config.lr == 0.0003 != cxr["lr"]  # explicit wins over the recipe
    assert config.optimizer == cxr["optimizer"] == "adamw" and preset.optimizer == "adam"
    assert config.monitor == "val_macro_f1" != preset.monitor  # recipe wins over the preset
    assert config.early_stopping_patience == cxr["early_stopping_patience"] != preset.early_stopping_patience
    assert config.zoom == cxr["zoom"] and config.hflip is False and preset.hflip is True
    # what the recipe does not name stays the preset's
    assert config.model == "lenet5" and config.image_size == preset.image_size == 32
    assert config.per_device_batch_size == preset.per_device_batch_size
    # --set counts as explicit too
    args = build_parser().parse_args(["--recipe", "cxr", "--set", "label_smoothing=0.0", "--set", "zoom=[1,1.2]"])
    config = config_from_args(args)
    assert config.label_smoothing == 0.0 and config.zoom == (1.0, 1.2) and config.lr == cxr["lr"]


def test_without_recipe_nothing_changes_and_none_clears():
    args = build_parser().parse_args(["--preset", "s4_exp4_phantoms"])
    assert config_from_args(args) == PRESETS["s4_exp4_phantoms"]
    args = build_parser().parse_args(["--preset", "s4_exp4_phantoms", "--recipe", "none"])
    assert config_from_args(args) == PRESETS["s4_exp4_phantoms"]
    assert recipes.apply_recipe(TrainConfig(), "none").recipe is None


def test_resolved_values_are_what_config_json_records(tmp_path):
    config = recipes.resolve(TrainConfig(), {"recipe": "cxr", "epochs": 2})
    check_or_write_config(tmp_path, config)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["recipe"] == "cxr" and saved["epochs"] == 2
    for field, value in recipes.RECIPES["cxr"].items():
        if field != "epochs":
            assert saved[field] == (list(value) if isinstance(value, tuple) else value), field
    # the file is a complete config: reading it back gives the same run, without re-applying
    assert TrainConfig.from_dict(saved) == config


def test_unknown_recipe_is_one_error_line_listing_the_known_ones(capsys):
    assert train_main(["--recipe", "fast", "--print-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "'fast'" in err[0] and "cxr" in err[0]
    with pytest.raises(ValueError, match="known recipes: cxr"):
        TrainConfig(recipe="fast")
    with pytest.raises(ValueError, match="known recipes"):
        recipes.apply_recipe(TrainConfig(), "fast")


def test_experiments_pass_the_recipe_through():
    from experiments import reproduce_s3, train_options

    args = reproduce_s3.build_parser().parse_args(["--recipe", "cxr", "--early-stopping-patience", "2"])
    changes = train_options.train_changes(args)
    assert changes["recipe"] == "cxr"
    config = train_options.apply_changes(PRESETS["s3_lenet5"], changes)
    assert config.recipe == "cxr" and config.optimizer == "adamw"
    assert config.early_stopping_patience == 2  # explicit wins

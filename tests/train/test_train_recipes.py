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
    assert config.epochs == cxr["epochs"] != preset.epochs  # recipe wins over the preset
    s4 = config_from_args(build_parser().parse_args(["--preset", "s4_exp4", "--recipe", "cxr"]))
    assert s4.monitor == cxr["monitor"] == "val_loss" != PRESETS["s4_exp4"].monitor  # and over S4's val_accuracy
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


# ------------------------------------------------------------------ ingredients and expressions

CXR_TODAY = {  # RECIPES["cxr"], by hand: its ingredients' union must be exactly this
    "normalization": "dataset",
    "hflip": False,
    "rotate_degrees": 7.0,
    "zoom": (0.9, 1.1),
    "brightness": (0.85, 1.15),
    "translate": 0.06,
    "contrast": (0.8, 1.2),
    "gamma": (0.8, 1.25),
    "optimizer": "adamw",
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "schedule": "warmup_cosine",
    "warmup_epochs": 1.0,
    "min_lr": 0.0,
    "grad_clip_norm": 1.0,
    "label_smoothing": 0.1,
    "class_weights": "balanced",
    "monitor": "val_loss",
    "early_stopping_patience": 30,
    "restore_best": True,
    "epochs": 120,
    "crop_box": (0.15, 0.90, 0.15, 0.85),
}


def test_cxr_is_the_union_of_its_ingredients_with_the_same_values():
    assert recipes.RECIPES["cxr"] == CXR_TODAY
    merged = {}
    for name in recipes.RECIPE_INGREDIENTS["cxr"]:
        assert not set(merged) & set(recipes.INGREDIENTS[name]), name  # ingredients do not overlap
        merged.update(recipes.INGREDIENTS[name])
    assert merged == CXR_TODAY
    assert recipes.recipe_values("cxr") == CXR_TODAY
    assert set(recipes.INGREDIENT_WHY) == set(recipes.INGREDIENTS)


def test_leave_one_out_removes_exactly_that_ingredients_fields():
    defaults = TrainConfig()
    for expression in recipes.leave_one_out("cxr"):
        removed = expression.split("-", 1)[1]
        config = recipes.resolve(TrainConfig(), {"recipe": expression})
        assert config.recipe == expression
        for field, value in CXR_TODAY.items():
            expected = getattr(defaults, field) if field in recipes.INGREDIENTS[removed] else value
            assert getattr(config, field) == expected, (expression, field)
    assert len(recipes.leave_one_out("cxr")) == len(recipes.RECIPE_INGREDIENTS["cxr"]) == 10


def test_none_plus_one_ingredient_keeps_the_preset_but_that_ingredient():
    preset = PRESETS["s3_lenet5"]
    config = recipes.resolve(preset, {"recipe": "none+augment"})
    assert config.recipe == "none+augment"
    assert (config.rotate_degrees, config.zoom, config.brightness) == (7.0, (0.9, 1.1), (0.85, 1.15))
    assert config.replace(rotate_degrees=preset.rotate_degrees, zoom=preset.zoom, brightness=preset.brightness) == (
        preset.replace(recipe="none+augment")
    )
    assert preset.hflip is True and config.hflip is True  # no_hflip is another ingredient
    assert recipes.resolve(preset, {"recipe": "none+no_hflip"}).hflip is False
    # add-one lists every ingredient the base lacks, including those outside cxr
    assert recipes.add_one("none") == [f"none+{name}" for name in recipes.INGREDIENTS]
    not_in_cxr = [name for name in recipes.INGREDIENTS if name not in recipes.RECIPE_INGREDIENTS["cxr"]]
    assert "ema" in not_in_cxr and "border_erase" in not_in_cxr and "thorax_crop" not in not_in_cxr
    assert recipes.add_one("cxr") == [f"cxr+{name}" for name in not_in_cxr]


def test_expressions_apply_left_to_right_are_canonical_and_explicit_options_still_win():
    config = recipes.resolve(TrainConfig(), {"recipe": " cxr - label_smoothing + ema ", "ema_decay": 0.9})
    assert config.recipe == "cxr-label_smoothing+ema"  # spaces dropped: what config.json records
    assert config.label_smoothing == 0.0 and config.ema_decay == 0.9 and config.optimizer == "adamw"
    parsed = recipes.parse_recipe("cxr-normalization-augment+normalization")
    assert (
        parsed.base == "cxr" and parsed.added == ("normalization",) and parsed.removed == ("normalization", "augment")
    )
    assert parsed.ingredients == (
        "no_hflip",
        "shift",
        "contrast_gamma",
        "adamw_cosine",
        "label_smoothing",
        "class_weights",
        "early_stopping",
        "thorax_crop",
        "normalization",
    )
    assert parsed.text == "cxr-augment"  # the canonical text names the result, not the steps
    assert recipes.parse_recipe("none+ema+label_smoothing-ema").text == "none+label_smoothing"
    assert recipes.parse_recipe("cxr+ema-augment").text == "cxr-augment+ema"
    assert recipes.parse_recipe("NONE").is_none and not recipes.parse_recipe("none+ema").is_none
    args = build_parser().parse_args(["--preset", "s3_lenet5", "--recipe", "cxr-class_weights+balanced_sampling"])
    config = config_from_args(args)
    assert config.class_weights is PRESETS["s3_lenet5"].class_weights and config.balanced_sampling is True


def test_expression_and_resolved_values_are_what_config_json_records(tmp_path):
    config = recipes.resolve(TrainConfig(), {"recipe": "cxr-label_smoothing+ema"})
    check_or_write_config(tmp_path, config)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["recipe"] == "cxr-label_smoothing+ema"
    assert saved["label_smoothing"] == 0.0 and saved["ema_decay"] == 0.99 and saved["optimizer"] == "adamw"
    assert TrainConfig.from_dict(saved) == config


@pytest.mark.parametrize(
    "expression, needle",
    [
        ("cxr-foo", "unknown ingredient 'foo'"),
        ("none+augmentation", "unknown ingredient 'augmentation'"),
        ("cxr+augment", "'augment' is already in it"),
        ("none-augment", "'augment' is not in it"),
        ("augment", "is an ingredient, not a recipe"),
        ("cxr-", "must be followed by an ingredient"),
        ("+ema", "must start with a recipe name"),
    ],
)
def test_refused_expressions_name_the_problem_and_the_known_names(expression, needle, capsys):
    with pytest.raises(ValueError, match=needle):
        recipes.parse_recipe(expression)
    with pytest.raises(ValueError, match="TrainConfig.recipe"):
        TrainConfig(recipe=expression)
    assert train_main(["--recipe", expression, "--print-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0]
    if "unknown" in needle:
        assert all(name in err[0] for name in recipes.INGREDIENTS)  # the known ingredients are listed


def test_two_ingredients_setting_one_field_differently_are_refused(monkeypatch):
    monkeypatch.setitem(recipes.INGREDIENTS, "unit_scale", {"normalization": "unit"})
    monkeypatch.setitem(recipes.INGREDIENT_WHY, "unit_scale", "test")
    with pytest.raises(ValueError, match="'normalization' and 'unit_scale' both set normalization"):
        recipes.parse_recipe("cxr+unit_scale")
    assert recipes.resolve(TrainConfig(), {"recipe": "cxr-normalization+unit_scale"}).normalization == "unit"


@pytest.mark.parametrize("name", list(recipes.INGREDIENTS))
def test_every_ingredient_alone_sets_its_values_and_validates(name):
    config = recipes.resolve(TrainConfig(), {"recipe": f"none+{name}"}).validated()
    assert config.recipe == f"none+{name}"
    for field, value in recipes.INGREDIENTS[name].items():
        assert getattr(config, field) == value, field
    others = {f: v for f, v in TrainConfig().to_dict().items() if f not in recipes.INGREDIENTS[name]}
    assert {f: v for f, v in config.to_dict().items() if f in others and f != "recipe"} == {
        f: v for f, v in others.items() if f != "recipe"
    }


@pytest.mark.parametrize(
    "values, why, needle",
    [
        ({"lr": -1.0}, "x", "ingredient 'bad'"),
        ({"no_such_field": 1}, "x", "unknown TrainConfig field"),
        ({}, "x", "sets nothing"),
        ({"lr": 0.1}, None, "without an INGREDIENT_WHY entry"),
    ],
)
def test_check_recipes_refuses_a_bad_ingredient(monkeypatch, values, why, needle):
    monkeypatch.setitem(recipes.INGREDIENTS, "bad", values)
    if why is not None:
        monkeypatch.setitem(recipes.INGREDIENT_WHY, "bad", why)
    with pytest.raises(ValueError, match=needle):
        recipes.check_recipes()

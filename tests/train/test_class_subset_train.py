"""TrainConfig.classes end to end: S0-E's COVID-vs-Normal preset, shrunk, trains one epoch
on tiny phantoms and its results, checkpoint and reloaded run are 2-class; plus the
config/CLI plumbing of the option."""

import json

import pytest

from cxrjax.models.testing import TINY_IMAGE_SIZE, TINY_OVERRIDES
from cxrjax.train.cli import build_parser, config_from_args
from cxrjax.train.config import TrainConfig
from cxrjax.train.presets import PRESETS


def test_s0_e_presets_train_covid_vs_normal_only():
    for name in ("s0_e", "s0_e_phantoms"):
        config = PRESETS[name]
        assert config.classes == ("COVID", "Normal")
        assert config.dataset_options["classes"] == ["COVID", "Normal"]
    assert PRESETS["s0_c_phantoms"].classes is None
    assert "classes" not in PRESETS["s0_c_phantoms"].dataset_options


def test_classes_field_and_dataset_options_stay_in_step():
    config = TrainConfig(classes=["COVID", "Normal"])
    assert config.classes == ("COVID", "Normal")
    assert config.dataset_options == {"classes": ["COVID", "Normal"]}
    assert TrainConfig.from_dict(json.loads(config.to_json())) == config
    assert TrainConfig(dataset_options={"classes": ["Normal", "COVID"]}).classes == ("Normal", "COVID")
    assert TrainConfig(classes="COVID, Normal").classes == ("COVID", "Normal")
    swapped = config.replace(classes=("Normal", "COVID"))
    assert swapped.dataset_options == {"classes": ["Normal", "COVID"]}
    removed = config.replace(classes=None)
    assert removed.classes is None and removed.dataset_options == {}
    kept = config.replace(dataset_options={"num_train": 8})  # options replaced, subset kept
    assert kept.dataset_options == {"num_train": 8, "classes": ["COVID", "Normal"]}
    with pytest.raises(ValueError, match="set the class subset once"):
        TrainConfig(classes=("COVID",), dataset_options={"classes": ["Normal"]})
    with pytest.raises(ValueError, match="more than once"):
        TrainConfig(classes=("COVID", "COVID"))


def test_cli_classes_flag():
    parse = lambda *argv: config_from_args(build_parser().parse_args(list(argv)))  # noqa: E731
    assert parse("--classes", "COVID,Normal").classes == ("COVID", "Normal")
    assert parse("--preset", "s0_e_phantoms", "--classes", "all").classes is None
    config = parse("--preset", "s0_e_phantoms", "--classes", "Normal,COVID", "--dataset-option", "num_train=40")
    assert config.classes == ("Normal", "COVID")
    assert config.dataset_options["classes"] == ["Normal", "COVID"]
    assert config.dataset_options["num_train"] == 40


def test_one_epoch_on_two_of_four_phantom_classes_writes_two_class_results(tmp_path):
    from cxrjax.inference import load_run
    from cxrjax.train.trainer import train_and_evaluate

    size = TINY_IMAGE_SIZE["s0"]
    config = PRESETS["s0_e_phantoms"].replace(
        model_options={**TINY_OVERRIDES["s0"], "head_dropout": 0.0},
        data_dir=str(tmp_path / "data"),
        dataset_options={"num_train": 32, "num_validation": 8, "num_test": 8, "image_size": 32},
        image_size=size,
        epochs=1,
        per_device_batch_size=2,  # x 4 devices = 8 -> 2 steps on the 16 COVID + Normal phantoms
        progress=False,
    )
    assert config.classes == ("COVID", "Normal")
    workdir = tmp_path / "run"
    results = train_and_evaluate(config, workdir)
    saved = json.loads((workdir / "results.json").read_text())
    for r in (results, saved):
        assert r["class_names"] == ["COVID", "Normal"]
        assert r["dataset_info"]["num_classes"] == 2
        assert r["dataset_info"]["split_sizes"] == {"train": 16, "validation": 4, "test": 4}
        for split in ("validation", "test"):
            matrix = r[split]["confusion_matrix"]
            assert len(matrix) == 2 and all(len(row) == 2 for row in matrix)
            assert sum(map(sum, matrix)) == 4
    assert saved["steps_per_epoch"] == 2
    run = load_run(workdir)
    assert run.class_names == ["COVID", "Normal"] and run.num_classes == 2
    assert run.config.classes == ("COVID", "Normal")
    # cxrjax.evaluate reopens the run's dataset from its options: the same 2-class subset,
    # the same test predictions as the run's own evaluation.
    from cxrjax.evaluate import EvalOptions, evaluate

    report = evaluate(
        EvalOptions(workdirs=(str(workdir),), checkpoint="evaluated", probes=False, pointing_game=False, progress=False)
    )["members"][0]
    assert report["class_names"] == ["COVID", "Normal"]
    assert report["metrics"]["confusion_matrix"] == saved["test"]["confusion_matrix"]

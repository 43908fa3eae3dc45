"""evaluate, predict and explain on a class-subset run (``classes=("COVID", "Normal")``).

The subset is mirrored into the run's ``dataset_options["classes"]``, but it is a view,
not a preparation option: every tool that reopens or re-derives the run's dataset
(predict's preparation size, the phantom marker box of explain and of the pointing game)
must drop it before asking the builder for its options. Before, all three crashed with
``unknown option(s) ['classes'] for cxr_phantoms``.
"""

import json

import numpy as np
import pytest
from PIL import Image

DATASET_OPTIONS = {"image_size": 32, "num_train": 32, "num_validation": 8, "num_test": 8}


@pytest.fixture(scope="module")
def subset_run(tmp_path_factory):
    from cxrjax.train import TrainConfig, train_and_evaluate

    root = tmp_path_factory.mktemp("subset_tools")
    config = TrainConfig(
        model="s4_exp4",
        dataset="cxr_phantoms",
        data_dir=str(root / "data"),
        dataset_options=DATASET_OPTIONS,
        classes=("COVID", "Normal"),
        model_options={"features": [3, 4, 5, 6], "head_width": 7},
        image_size=20,
        channels=1,
        epochs=1,
        per_device_batch_size=4,
        num_devices=1,
        progress=False,
    )
    results = train_and_evaluate(config, str(root / "run"))
    return root / "run", results


def test_evaluate_with_probes_and_pointing_game(subset_run, capsys):
    from cxrjax.evaluate.__main__ import main

    run_dir, results = subset_run
    assert main(["--workdir", str(run_dir), "--batch-size", "4", "--no-progress"]) == 0
    report = json.loads((run_dir / "eval_cxr_phantoms_test.json").read_text())
    assert report["class_names"] == ["COVID", "Normal"]
    assert report["metrics"]["confusion_matrix"] == results["test"]["confusion_matrix"]
    assert report["lung_mask_probe"]["num_examples"] == 4
    assert set(report["pointing_game"]) == {"gradcam", "layercam"}
    assert report["pointing_game"]["gradcam"]["marker_drawn"] is False


def test_predict_on_a_file(subset_run, tmp_path, capsys):
    from cxrjax.data import load
    from cxrjax.predict import main

    run_dir, _ = subset_run
    ds = load(
        "cxr_phantoms", data_dir=str(run_dir.parent / "data"), options=DATASET_OPTIONS, classes=("COVID", "Normal")
    )
    path = tmp_path / "x.png"
    Image.fromarray(ds.splits["test"][0]["image"][..., 0]).save(path)
    capsys.readouterr()
    assert main(["--workdir", str(run_dir), str(path), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["predictions"][0]
    assert list(row["probabilities"]) == ["COVID", "Normal"]
    assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_explain_grids(subset_run, tmp_path):
    from cxrjax.explain.__main__ import main

    run_dir, _ = subset_run
    assert (
        main(
            [
                "--workdir",
                str(run_dir),
                "--out",
                str(tmp_path / "cams"),
                "--n",
                "2",
                "--batch-size",
                "4",
                "--no-progress",
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "cams" / "explain.json").read_text())
    assert sorted(summary["grids"]) == ["COVID", "Normal"]
    assert np.isfinite(summary["accuracy"])
    assert (tmp_path / "cams" / "pointing_game.json").is_file()

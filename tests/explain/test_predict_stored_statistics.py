"""normalization="dataset" runs store their statistics: predict / evaluate without the training data.

A tiny run (tiny s4_exp4, tiny phantoms) trained with dataset normalisation writes
normalization.json; with the prepared data moved away, predict on image files still
gives the probabilities evaluate gave before, and the data folder is not re-created.
Without the file (a run from before issue 7), predict falls back to the training data.
"""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

DATASET_OPTIONS = {"image_size": 32, "num_train": 16, "num_validation": 4, "num_test": 4}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from cxrjax.train import TrainConfig, train_and_evaluate

    root = tmp_path_factory.mktemp("stored_stats")
    config = TrainConfig(
        model="s4_exp4",
        dataset="cxr_phantoms",
        data_dir=str(root / "data"),
        dataset_options=DATASET_OPTIONS,
        normalization="dataset",
        model_options={"features": [3, 4, 5, 6], "head_width": 7},
        image_size=20,
        channels=1,
        epochs=1,
        per_device_batch_size=8,
        num_devices=1,
        progress=False,
    )
    train_and_evaluate(config, str(root / "run"))
    return root


def test_predict_without_the_training_data(trained, capsys):
    from cxrjax import data
    from cxrjax.evaluate.__main__ import main as evaluate_main
    from cxrjax.predict import main as predict_main

    run_dir, data_dir = trained / "run", trained / "data"
    ds = data.load("cxr_phantoms", data_dir=str(data_dir), options=DATASET_OPTIONS)
    stored = json.loads((run_dir / "normalization.json").read_text())
    stats = data.dataset_statistics(ds)
    assert stored["normalization"] == "dataset"
    assert stored["mean"] == pytest.approx(stats.mean, rel=1e-12)
    assert stored["std"] == pytest.approx(stats.std, rel=1e-12)
    assert 0.0 < stored["mean"] < 1.0 and stored["std"] > 0.0

    files = []
    for i in range(3):
        path = trained / f"test{i}.png"
        Image.fromarray(ds.splits["test"][i]["image"][..., 0]).save(path)
        files.append(str(path))
    assert (
        evaluate_main(
            ["--workdir", str(run_dir), "--batch-size", "8", "--no-progress", "--no-probes", "--no-pointing-game"]
        )
        == 0
    )
    expected = np.asarray(json.loads((run_dir / "eval_cxr_phantoms_test.json").read_text())["predictions"]["probs"])

    moved = trained / "data_moved_away"
    shutil.move(str(data_dir), str(moved))
    try:
        capsys.readouterr()
        assert predict_main(["--workdir", str(run_dir), *files, "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)["predictions"]
        assert not data_dir.exists()  # nothing was prepared again
        got = np.asarray([list(r["raw_probabilities"].values()) for r in rows])
        np.testing.assert_allclose(got, expected[:3], rtol=1e-5, atol=1e-6)

        # Older runs (no normalization.json) still need, and use, the training data.
        (run_dir / "normalization.json").rename(run_dir / "normalization.json.bak")
        shutil.move(str(moved), str(data_dir))
        capsys.readouterr()
        assert predict_main(["--workdir", str(run_dir), *files, "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)["predictions"]
        old = np.asarray([list(r["raw_probabilities"].values()) for r in rows])
        np.testing.assert_allclose(old, expected[:3], rtol=1e-5, atol=1e-6)
    finally:
        if moved.exists():
            shutil.move(str(moved), str(data_dir))
        if (run_dir / "normalization.json.bak").exists():
            (run_dir / "normalization.json.bak").rename(run_dir / "normalization.json")

"""evaluate / predict / explain say when a run is not finished (no results.json): a
``run_status`` field in their JSON and a printed note, for a run stopped by a non-finite
step (here) as for one killed or still training (tests/train/test_train_workdir_lock.py)."""

import json
import types

import numpy as np
import pytest
from PIL import Image

from cxrjax import inference
from cxrjax.train import trainer as trainer_module
from cxrjax.train.trainer import NonFiniteError

DATASET_OPTIONS = {"image_size": 32, "num_train": 32, "num_validation": 8, "num_test": 8}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished run and a run stopped by NaN in its second epoch (checkpoint of epoch 1)."""
    from cxrjax.train import TrainConfig, train_and_evaluate

    root = tmp_path_factory.mktemp("run_status")
    config = TrainConfig(
        model="s4_exp4",
        dataset="cxr_phantoms",
        data_dir=str(root / "data"),
        dataset_options=DATASET_OPTIONS,
        model_options={"features": [3, 4, 5, 6], "head_width": 7},
        image_size=20,
        channels=1,
        epochs=2,
        per_device_batch_size=8,
        num_devices=1,
        progress=False,
        data_placement="host",  # the NaN below is put into the host path's batches
    )
    train_and_evaluate(config.replace(epochs=1), root / "finished")
    real = trainer_module.data_api()

    def train_batches(*args, **kwargs):
        batches = real.train_batches(*args, **kwargs)
        if kwargs["epoch"] != 1:
            return batches
        return batches.map(lambda b: dict(b, image=np.full_like(np.asarray(b["image"]), np.nan)))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            trainer_module, "data_api", lambda: types.SimpleNamespace(**{**vars(real), "train_batches": train_batches})
        )
        with pytest.raises(NonFiniteError):
            train_and_evaluate(config, root / "stopped")
    assert not (root / "stopped" / "results.json").exists()
    image = root / "image.png"
    from cxrjax import data

    ds = data.load("cxr_phantoms", data_dir=str(root / "data"), options=DATASET_OPTIONS)
    Image.fromarray(np.asarray(ds.splits["test"][0]["image"])[..., 0]).save(image)
    return root / "finished", root / "stopped", image


def test_evaluate_says_a_stopped_run_is_unfinished(runs, capsys):
    from cxrjax.evaluate.__main__ import main

    finished, stopped, _ = runs
    assert (
        main(["--workdir", str(stopped), "--batch-size", "8", "--no-progress", "--no-probes", "--no-pointing-game"])
        == 0
    )
    out = capsys.readouterr().out
    report = json.loads((stopped / "eval_cxr_phantoms_test.json").read_text())
    assert report["run_status"] == "unfinished" and "no results.json" in report["run_status_note"]
    assert f"note: {report['run_status_note']}" in out.splitlines()
    assert (
        main(["--workdir", str(finished), "--batch-size", "8", "--no-progress", "--no-probes", "--no-pointing-game"])
        == 0
    )
    assert "note:" not in capsys.readouterr().out
    report = json.loads((finished / "eval_cxr_phantoms_test.json").read_text())
    assert (report["run_status"], report["run_status_note"]) == ("finished", None)


def test_predict_says_a_stopped_run_is_unfinished(runs, capsys):
    from cxrjax.predict import main

    _, stopped, image = runs
    assert main(["--workdir", str(stopped), str(image), "--json"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed["run_status"] == "unfinished" and printed["run_status_note"]
    assert f"note: {printed['run_status_note']}" in captured.err.splitlines()
    run = inference.load_run(stopped)
    assert (run.run_status, run.results, run.epoch) == ("unfinished", None, 1)

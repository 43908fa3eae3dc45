"""Relative --data-dir / --manual-dir are stored as absolute paths (issue 14, defect 15):
config.json says where the data is, so evaluate run from another directory reads the
same prepared data instead of preparing it anew there."""

import json
import os

from cxrjax.train import TrainConfig, train_and_evaluate


def test_relative_data_dir_is_stored_absolute_and_evaluate_works_elsewhere(tmp_path, monkeypatch):
    from cxrjax.evaluate import EvalOptions, evaluate

    (tmp_path / "project").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    config = TrainConfig(
        model="lenet5",
        data_dir="data",
        image_size=32,
        epochs=1,
        per_device_batch_size=4,
        num_devices=1,
        progress=False,
        dataset_options={"num_train": 16, "num_validation": 8, "num_test": 8, "image_size": 32},
    )
    results = train_and_evaluate(config, "run")
    saved = json.loads((tmp_path / "project" / "run" / "config.json").read_text())
    assert saved["data_dir"] == str(tmp_path / "project" / "data")
    assert saved["manual_dir"] is None
    # The same relative command resumes the finished run (paths compare resolved).
    assert train_and_evaluate(config, "run") == results
    monkeypatch.chdir(tmp_path / "elsewhere")
    report = evaluate(
        EvalOptions(workdirs=(str(tmp_path / "project" / "run"),), probes=False, pointing_game=False, progress=False)
    )["members"][0]
    assert report["metrics"]["confusion_matrix"] == results["test"]["confusion_matrix"]
    assert not (tmp_path / "elsewhere" / "data").exists()  # nothing prepared here
    assert os.listdir(tmp_path / "elsewhere") == []

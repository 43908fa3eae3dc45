"""Relative --data-dir / --manual-dir / --pretrained are stored as absolute paths (issue
14, defect 15): config.json says where the data and the weights are, so evaluate run from
another directory reads the same prepared data instead of preparing it anew there; the
result-relevant ``pretrained`` compares by the weights it names (config.same_pretrained).
A run resumed with a relative --pretrained: tests/train/test_train_transfer.py."""

import json
import os

import pytest

from cxrjax.train import TrainConfig, train_and_evaluate
from cxrjax.train.config import same_pretrained
from cxrjax.train.workdir import ConfigMismatchError, check_or_write_config


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


def test_pretrained_compares_by_the_weights_it_names(tmp_path, monkeypatch):
    for folder, content in (("a", b"weights"), ("b", b"weights"), ("c", b"other weights")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "w.h5").write_bytes(content)
    a, b, c = (str(tmp_path / f / "w.h5") for f in "abc")
    assert same_pretrained(None, None) and same_pretrained(a, a)
    assert same_pretrained(a, b)  # a copy: equal sha256
    assert not same_pretrained(a, c) and not same_pretrained(a, None) and not same_pretrained(None, a)
    assert not same_pretrained(a, str(tmp_path / "missing.h5"))  # unreadable: different
    monkeypatch.chdir(tmp_path / "c")
    assert same_pretrained("w.h5", c) and not same_pretrained("w.h5", a)  # relative: against the cwd
    os.symlink(a, tmp_path / "link.h5")
    assert same_pretrained(str(tmp_path / "link.h5"), a)
    # import-weights folders: their meta.json but for the paths in it
    meta = {"model": "mobilenet", "weights_file": "x.h5", "sha256": "ab", "variant": "keras", "checkpoint": "v"}
    moved = {"weights_file": "/y/x.h5", "checkpoint": "/y/v"}
    for folder, changes in (("i1", {}), ("i2", moved), ("i3", {"sha256": "cd"})):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "meta.json").write_text(json.dumps({**meta, **changes}))
    i1, i2, i3 = (str(tmp_path / f) for f in ("i1", "i2", "i3"))
    assert same_pretrained(i1, i2) and not same_pretrained(i1, i3) and not same_pretrained(i1, a)


def test_a_run_with_trained_state_checks_pretrained_by_content(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "w.h5").write_bytes(b"weights")
    (tmp_path / "b" / "w.h5").write_bytes(b"weights")
    run = tmp_path / "run"
    run.mkdir()
    config = TrainConfig(model="mobilenet", head="s2", pretrained=str(tmp_path / "a" / "w.h5"))
    check_or_write_config(run, config)
    (run / "checkpoints" / "4").mkdir(parents=True)
    # A copy elsewhere: resumed, and config.json now says where the file is.
    assert check_or_write_config(run, config.replace(pretrained=str(tmp_path / "b" / "w.h5"))) is True
    assert json.loads((run / "config.json").read_text())["pretrained"] == str(tmp_path / "b" / "w.h5")
    (tmp_path / "b" / "w.h5").write_bytes(b"other weights")
    with pytest.raises(ConfigMismatchError, match=r"pretrained: saved '.*/b/w\.h5', now '.*/a/w\.h5'") as err:
        check_or_write_config(run, config)
    assert "(pretrained compares by the weights it names, the same file or equal sha256: they hold different" in (
        str(err.value)
    )
    missing = str(tmp_path / "c" / "w.h5")
    with pytest.raises(ConfigMismatchError, match=f"equal sha256: '{missing}' not found\\)"):
        check_or_write_config(run, config.replace(pretrained=missing))

"""A killed run resumed on other data is refused (issue 14, defect 3).

``--manual-dir`` and ``--data-dir`` are where files live, so they may change between
sessions (a moved folder resumes); but the prepared data's fingerprint, stored with
every checkpoint, must be the same: before, epoch 1 trained on one folder and epochs
2-4 on another, silently."""

import pytest

from cxrjax.train import TrainConfig, train_and_evaluate
from tests.data.fixtures import make_class_folders


class _Killed(Exception):
    pass


def _kill_after_first_checkpoint(step):
    raise _Killed


def test_resume_on_another_folder_is_refused_and_a_moved_copy_resumes(tmp_path):
    first = make_class_folders(tmp_path / "first", classes=("a", "b"), per_class=12)
    other = make_class_folders(tmp_path / "other", classes=("a", "b"), per_class=12, seed=99)
    options = {"validation_fraction": 0.25, "test_fraction": 0.25, "image_size": 16}
    config = TrainConfig(
        model="lenet5",
        dataset="image_folder",
        manual_dir=str(first),
        data_dir=str(tmp_path / "d1"),
        dataset_options=options,
        image_size=32,
        epochs=2,
        per_device_batch_size=2,
        num_devices=1,
        progress=False,
    )
    with pytest.raises(_Killed):
        train_and_evaluate(config, tmp_path / "run", on_checkpoint=_kill_after_first_checkpoint)
    with pytest.raises(ValueError, match="trained on other data") as error:
        train_and_evaluate(config.replace(manual_dir=str(other), data_dir=str(tmp_path / "d2")), tmp_path / "run")
    assert "other files or labels" in str(error.value) and "new --workdir" in str(error.value)
    # The same images prepared into another data dir are the same data: the run resumes.
    results = train_and_evaluate(config.replace(data_dir=str(tmp_path / "d3")), tmp_path / "run")
    assert results["epochs_run"] == 2
    assert results["dataset_info"]["fingerprint"]["sha256"]

"""User mistakes end in one ``error:`` line and exit status 2, never a traceback
(issue 14, defect 13): an unknown dataset, model or class, a batch larger than the
train split, a folder too small for a validation split, a resume on other data."""

import pytest

from cxrjax.train.cli import main
from tests.data.fixtures import make_class_folders

PHANTOMS = [
    "--dataset-option",
    "num_train=16",
    "--dataset-option",
    "num_validation=8",
    "--dataset-option",
    "num_test=8",
    "--dataset-option",
    "image_size=32",
    "--image-size",
    "32",
    "--epochs",
    "1",
    "--num-devices",
    "1",
    "--no-progress",
]


def run(capsys, *argv):
    capsys.readouterr()
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dataset", "no_such_dataset"], "unknown dataset 'no_such_dataset'"),
        (["--model", "lenet6"], "unknown model 'lenet6'"),
        (["--classes", "COVID,Cats"], "unknown class name(s) ['Cats']"),
        (["--per-device-batch-size", "64"], "fewer than one global batch of 64"),
    ],
)
def test_phantom_run_mistakes_are_one_error_line(tmp_path, capsys, extra, message):
    code, err = run(capsys, "--data-dir", str(tmp_path / "data"), "--workdir", str(tmp_path / "run"), *PHANTOMS, *extra)
    assert code == 2
    assert err[-1].startswith("error: ") and message in err[-1], err
    assert not any("Traceback" in line for line in err)


def test_folder_too_small_for_a_validation_split_is_one_error_line(tmp_path, capsys):
    folder = make_class_folders(tmp_path / "tiny", classes=("a", "b"), per_class=2)
    code, err = run(
        capsys,
        "--dataset",
        "image_folder",
        "--manual-dir",
        str(folder),
        "--data-dir",
        str(tmp_path / "data"),
        "--workdir",
        str(tmp_path / "run"),
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--no-progress",
    )
    assert code == 2 and err[-1].startswith("error: ") and "split" in err[-1], err

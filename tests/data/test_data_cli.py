"""`python -m cxrjax.data` (prepare / show / info) and preparation without TensorFlow."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrjax.data.__main__ import JSON_KEYS, main
from tests.data import fixtures as fx

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Class folders with one corrupt file and one duplicate across two classes."""
    root = fx.make_class_folders(tmp_path_factory.mktemp("cli") / "download", per_class=5)
    (root / "cat_b" / "zz-broken.png").write_bytes(fx.corrupt_png(9))
    (root / "cat_c" / "copy.png").write_bytes((root / "cat_a" / "img-000.png").read_bytes())
    return root


def test_prepare_json_has_exactly_the_documented_shape(tree, tmp_path, capsys):
    argv = [
        "prepare",
        "image_folder",
        "--manual-dir",
        str(tree),
        "--data-dir",
        str(tmp_path),
        "--json",
        "--image-size",
        "16",
        "--seed",
        "2",
    ]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)  # stdout is only the JSON object
    assert list(report) == list(JSON_KEYS)
    assert report["dataset"] == "image_folder"
    assert report["class_names"] == ["cat_a", "cat_b", "cat_c"]
    assert set(report["splits"]) == {"train", "validation", "test"}
    for counts in report["splits"].values():
        assert list(counts) == report["class_names"]
        assert all(isinstance(n, int) for n in counts.values())
    total = sum(sum(c.values()) for c in report["splits"].values())
    assert total == 16  # 15 images + the copy; the corrupt file is skipped
    assert report["skipped"] == [{"file": "cat_b/zz-broken.png", "reason": report["skipped"][0]["reason"]}]
    assert "not a readable image" in report["skipped"][0]["reason"]
    assert report["duplicate_groups"] == 1
    # Same options again: nothing is prepared, the saved report is printed.
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == report


def test_prepare_text_report(tree, tmp_path, capsys):
    assert (
        main(["prepare", "image_folder", "--manual-dir", str(tree), "--data-dir", str(tmp_path), "--image-size", "16"])
        == 0
    )
    out = capsys.readouterr().out
    assert "cat_a" in out and "validation" in out
    assert "skipped: 1" in out and "cat_b/zz-broken.png" in out
    assert "duplicate groups: 1" in out and "cat_a/img-000.png = cat_c/copy.png" in out
    total_line = [line for line in out.splitlines() if line.startswith("total")][0]
    assert total_line.split()[-1] == "16"


def test_cli_errors_name_the_path(tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    assert main(["prepare", "covid19_radiography", "--manual-dir", str(missing), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "kaggle" in err.lower()
    assert (
        main(
            [
                "prepare",
                "covid19_radiography",
                "--manual-dir",
                str(tmp_path),
                "--data-dir",
                str(tmp_path),
                "--num-train",
                "5",
            ]
        )
        == 2
    )
    assert "unknown option(s) ['num_train']" in capsys.readouterr().err


def test_info_lists_instructions_and_options(capsys):
    assert main(["info", "covid19_image_dataset"]) == 0
    out = capsys.readouterr().out
    assert "train/<class>" in out and "--validation-fraction: 0.2" in out


def test_show_writes_a_labelled_grid(tmp_path, capsys):
    options = ["--image-size", "32", "--num-train", "8", "--num-validation", "0", "--num-test", "4"]
    assert main(["prepare", "cxr_phantoms", "--data-dir", str(tmp_path), *options]) == 0
    capsys.readouterr()
    out = tmp_path / "grid.png"
    assert (
        main(["show", "cxr_phantoms", "--data-dir", str(tmp_path), "--out", str(out), "--per-class", "2", "--masks"])
        == 0
    )  # options found from the report
    assert "wrote" in capsys.readouterr().out
    grid = np.asarray(Image.open(out).convert("L"))
    assert grid.shape[0] > 200 and grid.shape[1] > 150 and grid.std() > 10
    assert main(["show", "cxr_phantoms", "--data-dir", str(tmp_path), "--out", str(out), "--split", "validation"]) == 2


def test_unknown_dataset_is_a_one_line_error(tmp_path, capsys):
    for argv in (
        ["prepare", "no_such_dataset", "--data-dir", str(tmp_path)],
        ["info", "no_such_dataset"],
        ["show", "no_such_dataset", "--data-dir", str(tmp_path), "--out", "x.png"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: unknown dataset 'no_such_dataset'"), err
        assert len(err.strip().splitlines()) == 1 and "cxr_phantoms" in err


_NO_TF_SCRIPT = textwrap.dedent("""
    import importlib.abc, importlib.machinery, json, sys

    class _NoTensorFlow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        # TensorFlow looks installed (find_spec succeeds) but every import fails, so
        # any code path that imports it, even lazily, breaks this run.
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                return importlib.machinery.ModuleSpec(name, self)
            return None
        def create_module(self, spec):
            raise ModuleNotFoundError(f"No module named {spec.name!r} (blocked)",
                                      name=spec.name)
        def exec_module(self, module):
            raise AssertionError("unreachable")

    sys.meta_path.insert(0, _NoTensorFlow())
    from cxrjax import data
    from cxrjax.data.__main__ import main

    data_dir, manual_dir = sys.argv[1], sys.argv[2]
    assert main(["prepare", "cxr_phantoms", "--data-dir", data_dir, "--json",
                 "--image-size", "24", "--num-train", "8", "--num-validation", "4",
                 "--num-test", "4"]) == 0
    folder = data.load("image_folder", data_dir=data_dir, manual_dir=manual_dir,
                       options={"image_size": 16})
    phantoms = data.load("cxr_phantoms", data_dir=data_dir,
                         options={"image_size": 24, "num_train": 8, "num_validation": 4,
                                  "num_test": 4})
    record = phantoms.splits["train"][3]
    print(json.dumps({
        "tensorflow_loaded": "tensorflow" in sys.modules,
        "folder_sizes": {s: len(v) for s, v in folder.splits.items()},
        "phantom_shape": list(record["image"].shape),
        "phantom_dtype": str(record["image"].dtype),
        "folder_file": folder.splits["test"][0]["file_name"],
    }))
""")


def test_prepare_and_read_with_tensorflow_unimportable(tree, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", _NO_TF_SCRIPT, str(tmp_path / "prepared"), str(tree)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    prepared = json.loads(lines[0])  # the CLI's --json line
    assert prepared["dataset"] == "cxr_phantoms"
    assert prepared["splits"]["train"] == {c: 2 for c in prepared["class_names"]}
    outcome = json.loads(lines[-1])
    assert outcome["tensorflow_loaded"] is False
    assert sum(outcome["folder_sizes"].values()) == 16
    assert outcome["phantom_shape"] == [24, 24, 1] and outcome["phantom_dtype"] == "uint8"
    assert outcome["folder_file"].startswith("cat_")

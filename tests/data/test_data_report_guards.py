"""What preparation keeps is never silent: empty splits are errors naming the split and
the fix, thin splits and duplicates with different labels are warnings, `prepare
--json` lists the duplicate groups."""

import json

import pytest

from cxrjax import data
from cxrjax.data.__main__ import main
from cxrjax.data.layouts import LayoutError
from tests.data import fixtures as fx

OPTIONS = {"image_size": 16}


def test_empty_requested_split_is_an_error_naming_it(tmp_path):
    root = fx.make_class_folders(tmp_path / "tree", per_class=2)
    with pytest.raises(LayoutError) as error:
        data.prepare("image_folder", data_dir=tmp_path / "p", manual_dir=root, options=OPTIONS)
    message = str(error.value)
    # 2 x (0.7, 0.2, 0.1) rounds to (2, 0, 0) images per class.
    assert (
        "the validation split (validation_fraction 0.2) and the test split "
        "(test_fraction 0.1) would be empty" in message
    ), message
    assert "--validation-fraction 0 --test-fraction 0" in message and str(root) in message
    with pytest.raises(LayoutError, match=r"the test split \(test_fraction 0.1\) would be"):
        data.prepare(
            "image_folder", data_dir=tmp_path / "p", manual_dir=root, options={**OPTIONS, "validation_fraction": 0.3}
        )
    # Asked for without a test split, it prepares, and says which class a split misses.
    report = data.prepare(
        "image_folder",
        data_dir=tmp_path / "p",
        manual_dir=root,
        options={**OPTIONS, "test_fraction": 0, "validation_fraction": 0.3},
    )
    assert set(report["splits"]) == {"train", "validation"}
    # 7, 5 and 5 images: test gets 1 image of cat_a only, which is worth a warning.
    uneven = fx.make_class_folders(tmp_path / "uneven", per_class=5, seed=50)
    for i in (1, 2):
        fx.write(uneven / "cat_a" / f"more-{i}.png", fx.image_bytes(7000 + i, size=(40, 40)))
    report = data.prepare("image_folder", data_dir=tmp_path / "p5", manual_dir=uneven, options=OPTIONS)
    assert report["splits"]["test"] == {"cat_a": 1, "cat_b": 0, "cat_c": 0}
    assert report["warnings"] == [
        (
            "the test split has no image of cat_b, cat_c (too few images per class for the "
            "split fractions); its metrics will not cover every class."
        )
    ]


def test_empty_given_split_is_an_error(tmp_path):
    root = fx.make_dp(tmp_path / "dp", train_per_class=10, test_per_class=1)["root"]
    for f in (root / "test").rglob("*.*"):
        f.write_bytes(fx.corrupt_png(1))
    with pytest.raises(LayoutError, match="given test split"):
        data.prepare("covid19_image_dataset", data_dir=tmp_path / "p", manual_dir=root, options=OPTIONS)


def test_prepare_json_lists_duplicate_groups_and_flags_mixed_labels(tmp_path, capsys):
    root = fx.make_class_folders(tmp_path / "tree", per_class=10)
    (root / "cat_c" / "copy.png").write_bytes((root / "cat_a" / "img-000.png").read_bytes())
    (root / "cat_b" / "same.png").write_bytes((root / "cat_b" / "img-001.png").read_bytes())
    argv = [
        "prepare",
        "image_folder",
        "--manual-dir",
        str(root),
        "--data-dir",
        str(tmp_path / "p"),
        "--image-size",
        "16",
    ]
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["duplicate_groups"] == 2
    groups = {tuple(m["file"] for m in g["members"]): g for g in report["duplicates"]}
    mixed = groups[("cat_a/img-000.png", "cat_c/copy.png")]
    same = groups[("cat_b/img-001.png", "cat_b/same.png")]
    assert [m["label"] for m in mixed["members"]] == ["cat_a", "cat_c"]
    assert mixed["mixed_labels"] is True and same["mixed_labels"] is False
    (split,) = {m["split"] for m in mixed["members"]}
    assert split in ("train", "validation", "test")
    assert any("cat_a/img-000.png" in w and "different labels" in w for w in report["warnings"])
    assert main(argv) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "cat_c/copy.png" in warnings[0], warnings

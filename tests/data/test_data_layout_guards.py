"""Layouts that are not what they seem: one D4 class folder (images/ + masks/) is not a
two-class dataset, one class folder is not a dataset, and a folder symlink's skip
message says what is and is not read."""

import pytest

from cxrjax import data
from cxrjax.data.__main__ import main
from cxrjax.data.layouts import LayoutError
from tests.data import fixtures as fx

OPTIONS = {"image_size": 16}


def test_one_d4_class_folder_is_not_read_as_classes_images_and_masks(tmp_path, capsys):
    root = tmp_path / "X"
    for i in range(4):
        fx.write(root / "COVID" / "images" / f"COVID-{i}.png", fx.image_bytes(i))
        fx.write(root / "COVID" / "masks" / f"COVID-{i}.png", fx.mask_bytes())
    for name in ("image_folder", "covid19_radiography"):
        with pytest.raises(LayoutError) as error:
            data.prepare(name, data_dir=tmp_path / "p", manual_dir=root)
        message = str(error.value)
        assert "images/ and masks/" in message and "at least 2 classes are needed" in message
        assert "COVID" in message and "Expected layout" in message
    # Already split, the same mistake inside train/.
    split = tmp_path / "S"
    for part in ("train", "test"):
        for inner in ("images", "masks"):
            fx.write(split / part / inner / "a.png", fx.image_bytes(7))
    with pytest.raises(LayoutError, match="images/ and masks/"):
        data.prepare("image_folder", data_dir=tmp_path / "p", manual_dir=split)
    assert main(["prepare", "image_folder", "--manual-dir", str(root), "--data-dir", str(tmp_path / "p")]) == 2
    assert not list((tmp_path / "p").glob("image_folder/*/*/dataset_info.json"))


def test_single_class_folder_says_two_classes_are_needed(tmp_path):
    root = tmp_path / "X"
    for i in range(3):
        fx.write(root / "COVID" / f"COVID-{i}.png", fx.image_bytes(i))
    for name in ("image_folder", "covid19_radiography"):
        with pytest.raises(LayoutError, match="at least 2 classes are needed") as error:
            data.prepare(name, data_dir=tmp_path / "p", manual_dir=root)
        assert "COVID/" in str(error.value)


def test_folder_symlink_skip_message_is_true(tmp_path):
    root = fx.make_class_folders(tmp_path / "tree", per_class=10)
    (root / "cat_a" / "more").symlink_to(root / "cat_b", target_is_directory=True)
    outside = fx.make_class_folders(tmp_path / "elsewhere", classes=("x",), per_class=3)
    (root / "cat_c" / "external").symlink_to(outside / "x", target_is_directory=True)
    report = data.prepare("image_folder", data_dir=tmp_path / "p", manual_dir=root, options=OPTIONS)
    skipped = {e["file"]: e["reason"] for e in report["skipped"]}
    inside = skipped["cat_a/more/"]
    assert "not read" not in inside and "symlink to cat_b/" in inside, inside
    assert "3 files not read" in skipped["cat_c/external/"]
    assert sum(sum(c.values()) for c in report["splits"].values()) == 30

"""The synthetic phantom generator: determinism, balance, masks, the optional shortcut."""

import numpy as np
import pytest

from cxrjax.data import phantoms
from cxrjax.data.phantoms import CLASS_NAMES, NORMAL, PhantomOptions, phantom_example, phantom_label

OPTS = PhantomOptions(image_size=64)


@pytest.fixture(scope="module")
def examples():
    """12 phantoms (3 per class), the shared material of most tests here."""
    return [phantom_example(7, i, OPTS) for i in range(12)]


def test_class_names_are_the_d4_folders():
    assert CLASS_NAMES == ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")


def test_same_seed_and_index_give_identical_phantoms_whatever_the_call_order(examples):
    again = phantom_example(7, 5, OPTS)  # after other calls, and alone
    for key in ("image", "lung_mask", "lesion_mask", "label", "file_name"):
        np.testing.assert_array_equal(again[key], examples[5][key])
    assert not np.array_equal(examples[5]["image"], examples[6]["image"])
    assert not np.array_equal(phantom_example(8, 5, OPTS)["image"], examples[5]["image"])


def test_output_types_shapes_and_file_name():
    for size in (32, 100):
        ex = phantom_example(3, 41, PhantomOptions(image_size=size))
        for key in ("image", "lung_mask", "lesion_mask"):
            assert ex[key].shape == (size, size, 1) and ex[key].dtype == np.uint8, key
        assert isinstance(ex["label"], int) and 0 <= ex["label"] < 4
        assert ex["file_name"] == "phantom-3-000041.png"
        assert ex["marker_class"] == -1
    image = phantom_example(3, 41, PhantomOptions(image_size=100))["image"]
    assert image.std() > 20  # real contrast: dark lungs and background, bright tissue


def test_every_block_of_four_holds_each_class_once():
    labels = np.array([phantom_label(11, i) for i in range(400)])
    assert all(sorted(block) == [0, 1, 2, 3] for block in labels.reshape(-1, 4))
    assert np.bincount(labels).tolist() == [100] * 4
    # the order within blocks is not a fixed pattern
    assert len({tuple(block) for block in labels.reshape(-1, 4)}) > 5
    assert [phantom_label(11, i) for i in range(8)] == [
        phantom_example(11, i, PhantomOptions(image_size=16))["label"] for i in range(8)
    ]


def test_lung_and_lesion_masks_are_consistent(examples):
    assert sorted({e["label"] for e in examples}) == [0, 1, 2, 3]
    for e in examples:
        lung, lesion = e["lung_mask"][..., 0], e["lesion_mask"][..., 0]
        assert set(np.unique(lung)) == {0, 255} and set(np.unique(lesion)) <= {0, 255}
        half = lung.shape[1] // 2
        assert (lung[:, :half] > 0).sum() > 100 and (lung[:, half:] > 0).sum() > 100  # two lungs
        assert not np.any((lesion > 0) & (lung == 0)), "lesion outside the lungs"
        if e["label"] == NORMAL:
            assert not lesion.any() and e["severity"] == 0.0
        else:
            assert lesion.any(), CLASS_NAMES[e["label"]]
        # the lungs are darker than the rest of the body (chest X-ray polarity)
        img = e["image"][..., 0].astype(float)
        assert img[lung > 0].mean() < img[img.shape[0] * 3 // 4 :, half - 4 : half + 4].mean()


def test_lesion_side_matches_the_class_pattern():
    """COVID and Viral Pneumonia are bilateral; Lung_Opacity is one focal lesion."""
    opts = PhantomOptions(image_size=64)
    seen = set()
    for i in range(16):
        e = phantom_example(2, i, opts)
        lesion = e["lesion_mask"][..., 0] > 0
        sides = (lesion[:, :32].any(), lesion[:, 32:].any())
        if CLASS_NAMES[e["label"]] in ("COVID", "Viral Pneumonia"):
            assert sides == (True, True)
        if CLASS_NAMES[e["label"]] == "Lung_Opacity":
            assert sides in ((True, False), (False, True))
        seen.add(e["label"])
    assert seen == {0, 1, 2, 3}


def test_shortcut_marker_only_when_enabled_and_only_in_its_corner():
    size = 64
    for i in range(8):
        plain = phantom_example(5, i, PhantomOptions(image_size=size))
        marked = phantom_example(5, i, PhantomOptions(image_size=size, shortcut_marker=True, shortcut_strength=1.0))
        assert plain["marker_class"] == -1
        assert marked["marker_class"] == marked["label"]  # strength 1: always the own corner
        np.testing.assert_array_equal(plain["lung_mask"], marked["lung_mask"])
        diff = np.argwhere(plain["image"][..., 0] != marked["image"][..., 0])
        assert len(diff) > 10
        row, col = divmod(marked["marker_class"], 2)  # corners: TL, TR, BL, BR by class
        assert np.all((diff[:, 0] < size // 2) == (row == 0))
        assert np.all((diff[:, 1] < size // 2) == (col == 0))
    never = [
        phantom_example(5, i, PhantomOptions(image_size=32, shortcut_marker=True, shortcut_strength=0.0))
        for i in range(8)
    ]
    assert all(e["marker_class"] not in (-1, e["label"]) for e in never)


def test_options_are_validated():
    with pytest.raises(ValueError, match="image_size"):
        PhantomOptions(image_size=8)
    with pytest.raises(ValueError, match="shortcut_strength"):
        PhantomOptions(shortcut_strength=1.5)
    with pytest.raises(ValueError, match="severity_range"):
        PhantomOptions(severity_range=(0.5, 0.2))
    assert PhantomOptions(severity_range=[0, 1]).severity_range == (0.0, 1.0)


def test_phantom_file_names_round_trip():
    name = phantoms.phantom_file_name(7, 123)
    assert phantoms.parse_phantom_file_name(name) == (7, 123)
    assert phantoms.parse_phantom_file_name(f"/data/train/Normal/{name}") == (7, 123)
    with pytest.raises(ValueError, match="not a cxr_phantoms file name"):
        phantoms.parse_phantom_file_name("Normal-12.png")

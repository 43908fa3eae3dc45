"""The mask-free shortcut probe: regions by hand, the verdict rule, and trained phantom models.

The trained check is the one the probe exists for: a model trained on phantoms whose
class-coded corner marker is a perfect label leak (``shortcut_marker=True``, strength
1.0; the markers sit outside the thorax box) must be flagged, and a model trained on
clean phantoms, significantly above chance, must not.
"""

import json

import numpy as np
import pytest
from scipy.stats import binomtest

from cxrjax.explain import mask_free, probes

CLASS_NAMES = ("COVID", "Normal")


def test_region_masks_by_hand_on_a_non_square_image():
    keep = mask_free.region_keep_masks(20, 10)  # default box 15-90% x 15-85%, border 8%
    center = np.zeros((20, 10), bool)
    center[3:18, 2:8] = True  # rows round(3.0)..round(18.0), cols round(1.5)=2..round(8.5)=8
    strip = np.zeros((20, 10), bool)
    strip[:2], strip[-2:], strip[:, :1], strip[:, -1:] = True, True, True, True  # round(1.6)=2 rows, 1 col
    np.testing.assert_array_equal(keep[mask_free.CENTER_ONLY], center)
    np.testing.assert_array_equal(keep[mask_free.CENTER_BLANKED], ~center)
    np.testing.assert_array_equal(keep[mask_free.BORDER_ONLY], strip)
    custom = mask_free.region_keep_masks(10, 10, (0.0, 0.5, 0.5, 1.0), 0.25)
    np.testing.assert_array_equal(np.argwhere(custom[mask_free.CENTER_ONLY]).min(0), [0, 5])
    np.testing.assert_array_equal(np.argwhere(custom[mask_free.CENTER_ONLY]).max(0), [4, 9])
    assert custom[mask_free.BORDER_ONLY].sum() == 100 - 6 * 6  # rows/cols 0-1 and 8-9 (round(2.5) = 2)


def test_apply_region_fills_with_the_mean_of_the_kept_pixels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 20, 1), dtype=np.uint8)
    keep = mask_free.region_keep_masks(20, 20)
    for mode in mask_free.REGION_MODES:
        out = mask_free.apply_region(image, mode)
        assert out.dtype == np.uint8 and out.shape == image.shape
        kept = keep[mode]
        np.testing.assert_array_equal(out[..., 0][kept], image[..., 0][kept])
        assert (out[..., 0][~kept] == np.round(image[..., 0][kept].mean())).all()
    source = [{"image": image, "label": 1, "file_name": "a.png"}]
    wrapped = mask_free.RegionMaskedSource(source, mask_free.BORDER_ONLY)
    record = wrapped[0]
    assert len(wrapped) == 1 and record["label"] == 1 and record["file_name"] == "a.png"
    np.testing.assert_array_equal(record["image"], mask_free.apply_region(image, mask_free.BORDER_ONLY))
    np.testing.assert_array_equal(source[0]["image"], image)  # the wrapped record is not changed
    with pytest.raises(ValueError, match="center_blanked"):
        mask_free.apply_region(image, "lungs_only")


@pytest.mark.parametrize(
    "box, border, message",
    [((0.9, 0.1, 0.1, 0.9), 0.08, "top < bottom"), ((0.1, 0.9, 0.1), 0.08, "4 fractions"), (None, 0.5, "border")],
)
def test_bad_regions_are_refused(box, border, message):
    with pytest.raises(ValueError, match=message):
        mask_free.check_region(box or mask_free.DEFAULT_THORAX_BOX, border)


def predictions(labels, correct):
    """Predicted labels that are right for the first ``correct`` examples and wrong after."""
    labels = np.asarray(labels)
    return np.where(np.arange(labels.size) < correct, labels, 1 - labels)


def report_for(full, blanked, only, border, n=200):
    labels = np.arange(n) % 2  # balanced: majority rate 0.5
    preds = {
        mask_free.FULL: predictions(labels, full),
        mask_free.CENTER_BLANKED: predictions(labels, blanked),
        mask_free.CENTER_ONLY: predictions(labels, only),
        mask_free.BORDER_ONLY: predictions(labels, border),
    }
    return mask_free.mask_free_report(labels, preds, CLASS_NAMES)


def test_report_on_the_issues_d4_numbers_is_flagged():
    # The issue's held-back D4 measurement: 0.895 / 0.77 / 0.695 / 0.655 at n = 200.
    r = report_for(179, 154, 139, 131)
    assert (r["full"], r["center_blanked"], r["center_only"], r["border_only"]) == (0.895, 0.77, 0.695, 0.655)
    assert r["majority_rate"] == 0.5 and r["num_examples"] == 200
    assert r["pvalue_vs_majority"]["center_blanked"] == pytest.approx(
        binomtest(154, 200, 0.5, alternative="greater").pvalue
    )
    assert r["retained"]["center_blanked"] == pytest.approx((0.77 - 0.5) / (0.895 - 0.5))
    assert r["finding"] == "shortcut" and r["flagged"] is True
    assert r["verdict"].startswith("FLAGGED") and "68.4%" in r["verdict"] and "border strip" in r["verdict"]
    assert "\n" not in r["verdict"]
    lines = mask_free.format_mask_free(r).splitlines()
    assert len(lines) == 2 and "center blanked 0.7700" in lines[0] and lines[1].endswith(r["verdict"])


@pytest.mark.parametrize(
    "counts, finding",
    [
        ((180, 104, 176, 100), "reads_lungs"),  # blanked at chance, the box alone keeps 95%
        ((180, 104, 150, 100), "unconfirmed"),  # blanked at chance, the box alone keeps 62.5%
        ((180, 120, 170, 100), "partial_shortcut"),  # blanked keeps 25% (p < 0.01)
        ((105, 104, 104, 104), "inconclusive"),  # the model itself is at chance
        ((180, 112, 176, 150), "reads_lungs"),  # 56% blanked: p = 0.05, not significant
    ],
)
def test_verdict_rule(counts, finding):
    r = report_for(*counts)
    assert r["finding"] == finding and r["flagged"] is False
    if finding == "reads_lungs":
        assert r["verdict"].startswith("reads the lungs")


def test_evaluate_refuses_a_bad_thorax_box_on_the_command_line(capsys):
    from cxrjax.evaluate.__main__ import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--workdir", "RUN", "--thorax-box", "0.9,0.1,0.15,0.85"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument --thorax-box" in err and "top < bottom" in err
    with pytest.raises(SystemExit):
        parse_args(["--workdir", "RUN", "--border", "0.6"])
    assert "error: argument --border" in capsys.readouterr().err
    options = parse_args(["--workdir", "RUN", "--thorax-box", "0.1,0.8,0.2,0.7", "--border", "0.1"])
    assert options.thorax_box == (0.1, 0.8, 0.2, 0.7) and options.border == 0.1 and options.mask_free_probe
    assert parse_args(["--workdir", "RUN", "--no-mask-free-probe"]).mask_free_probe is False


def test_default_box_holds_the_phantoms_lungs_and_not_their_markers():
    """The default's reason (module docstring), checked on 64 px phantoms."""
    from cxrjax.data import phantoms

    size, n = 64, 32
    keep = mask_free.region_keep_masks(size, size)[mask_free.CENTER_ONLY]
    lungs_in, marker_in = [], []
    for i in range(n):
        record = phantoms.phantom_example(0, i, phantoms.PhantomOptions(image_size=size))
        lungs = probes.binary_mask(record["lung_mask"])
        lungs_in.append((lungs & keep).sum() / lungs.sum())
        marker = phantoms.marker_box_mask(0, i, record["label"], size, 1.0)
        marker_in.append((marker & keep).sum() / marker.sum())
    assert np.mean(lungs_in) > 0.8  # the box holds most of the lung fields
    assert np.max(marker_in) < 0.2  # and at most a sliver of any marker's label box
    boxes = mask_free.lung_mask_bounding_boxes([np.zeros((4, 4), np.uint8), np.pad(np.ones((2, 2)), 1) * 255])
    assert np.isnan(boxes[0]).all() and boxes[1].tolist() == [0.25, 0.75, 0.25, 0.75]


# Two classes (Lung_Opacity's focal consolidation vs Normal) with visible findings, so
# the clean model learns them in a few epochs; stored at 64 px, where the markers sit
# outside the thorax box (at 32 px a 3-4 glyph label spans half the width), and seen
# by the model at 32 px. The two runs differ only in the marker.
PHANTOMS = {"image_size": 64, "num_train": 512, "num_validation": 8, "num_test": 96, "severity_range": [0.5, 1.0]}
STRONGER = {
    "classes": ("Lung_Opacity", "Normal"),
    "model_options": {"features": [4, 8, 8, 8], "head_width": 16},
    "image_size": 32,
    "epochs": 10,
    "per_device_batch_size": 16,
    "lr": 3e-3,
}


@pytest.fixture(scope="module")
def phantom_runs(tmp_path_factory):
    from tests.train.support import train_phantom_run

    root = tmp_path_factory.mktemp("mask_free")
    marked = {**PHANTOMS, "shortcut_marker": True, "shortcut_strength": 1.0}
    return {
        "marker": train_phantom_run(root, marked, name="marker", **STRONGER),
        "clean": train_phantom_run(root, PHANTOMS, name="clean", **STRONGER),
    }


def evaluate_probe(run_dir, capsys):
    from cxrjax.evaluate.__main__ import main

    capsys.readouterr()
    assert main(["--workdir", str(run_dir), "--no-probes", "--no-pointing-game", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((run_dir / "eval_cxr_phantoms_test.json").read_text())
    return report["mask_free_probe"], printed


def test_probe_flags_the_marker_phantom_model_and_not_the_clean_one(phantom_runs, capsys):
    marker, printed = evaluate_probe(phantom_runs["marker"], capsys)
    assert marker["majority_rate"] == 0.5 and marker["num_examples"] == 48
    assert marker["pvalue_vs_majority"]["full"] < probes.SIGNIFICANCE
    assert marker["finding"] == "shortcut" and marker["flagged"] is True
    assert marker["center_blanked"] > marker["center_only"]  # the marker is outside the box
    assert f"mask-free probe verdict: {marker['verdict']}" in printed and "FLAGGED" in printed
    assert f"center blanked {marker['center_blanked']:.4f}" in printed

    clean, printed = evaluate_probe(phantom_runs["clean"], capsys)
    assert clean["pvalue_vs_majority"]["full"] < probes.SIGNIFICANCE  # it learnt the findings...
    assert clean["finding"] not in ("shortcut", "inconclusive") and clean["flagged"] is False  # ...in the box
    assert clean["center_only"] > clean["center_blanked"]
    assert "FLAGGED" not in printed

    # --no-mask-free-probe skips it
    from cxrjax.evaluate.__main__ import main

    run = phantom_runs["clean"]
    assert main(["--workdir", str(run), "--no-probes", "--no-pointing-game", "--no-mask-free-probe"]) == 0
    assert json.loads((run / "eval_cxr_phantoms_test.json").read_text())["mask_free_probe"] is None
    assert "mask-free probe" not in capsys.readouterr().out

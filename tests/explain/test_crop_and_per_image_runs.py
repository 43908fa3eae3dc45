"""Runs trained with crop_box and normalization="per_image" (and the new augmentations) are
evaluated, predicted and explained the way they were trained.

Two tiny s4_exp4 runs on tiny phantoms, one with the host pipeline and one with the
device-resident input: evaluate reproduces results.json's test numbers, predict on image
files gives evaluate's probabilities, the crop is really applied (the same model without
it predicts otherwise), the mask-free probe says what it means for a cropped model (its
center_only images ARE the full images when the crop is the thorax box) and the pointing
game's masks are cut to the crop like the heatmaps' images.
"""

import json

import numpy as np
import pytest
from PIL import Image

from tests.train.support import train_phantom_run

DATASET_OPTIONS = {"image_size": 32, "num_train": 16, "num_validation": 4, "num_test": 8}
THORAX_BOX = (0.15, 0.90, 0.15, 0.85)  # cxrjax.explain.mask_free.DEFAULT_THORAX_BOX
TRAINED_WITH = dict(
    crop_box=THORAX_BOX,
    normalization="per_image",
    translate=0.1,
    contrast=(0.8, 1.2),
    gamma=(0.8, 1.25),
    random_erasing=0.5,
    border_erase=0.1,
    epochs=2,
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("crop_per_image")
    host = train_phantom_run(root, DATASET_OPTIONS, name="host", **TRAINED_WITH)
    device = train_phantom_run(root, DATASET_OPTIONS, name="device", data_placement="device", **TRAINED_WITH)
    return root, host, device


@pytest.mark.parametrize("which", ["host", "device"])
def test_evaluate_reproduces_results_json_and_applies_crop_and_per_image(runs, which):
    from cxrjax.evaluate.__main__ import main as evaluate_main

    run_dir = runs[1] if which == "host" else runs[2]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["input_config"]["crop_box"] == list(THORAX_BOX)
    assert results["input_config"]["normalization"] == "per_image"
    assert evaluate_main(["--workdir", str(run_dir), "--batch-size", "4", "--no-progress"]) == 0
    report = json.loads((run_dir / "eval_cxr_phantoms_test.json").read_text())
    assert report["input_config"]["crop_box"] == list(THORAX_BOX)
    assert report["input_config"]["normalization"] == "per_image"
    for key in ("accuracy", "macro_f1", "roc_auc_ovr"):
        assert report["metrics"][key] == pytest.approx(results["test"][key], abs=1e-9), key
    # The mask-free probe of a model cropped to the thorax box: center_only is the full input.
    probe = report["mask_free_probe"]
    assert probe["crop_box"] == list(THORAX_BOX) and "by construction" in probe["crop_note"]
    assert probe["center_only"] == probe["full"]
    # The pointing game ran on masks cut to the crop (phantoms carry lesion masks).
    assert report["pointing_game"] is not None


def test_predict_on_files_equals_evaluate_and_the_crop_is_really_applied(runs, capsys):
    import dataclasses

    from cxrjax import data
    from cxrjax.inference import dataset_request, evaluation_view, load_run, open_dataset
    from cxrjax.predict import main as predict_main
    from cxrjax.train.evaluation import predict_split

    root, run_dir, _ = runs
    run = load_run(run_dir)
    assert run.input_config.crop_box == THORAX_BOX and run.input_config.normalization == "per_image"
    request = dataset_request(run)
    ds = open_dataset(request)
    view, mapping = evaluation_view(run, ds, request, "test")
    preds = predict_split(run, view, "test", 4, mapping=mapping)
    files = []
    for i in range(3):
        path = root / f"test{i}.png"
        Image.fromarray(ds.splits["test"][i]["image"][..., 0]).save(path)
        files.append(str(path))
    capsys.readouterr()
    assert predict_main(["--workdir", str(run_dir), *files, "--json", "--raw"]) == 0
    rows = json.loads(capsys.readouterr().out)["predictions"]
    got = np.asarray([list(r["raw_probabilities"].values()) for r in rows])
    np.testing.assert_allclose(got, preds.probs[:3], rtol=1e-5, atol=1e-6)
    # The same weights fed the whole image (no crop_box): other inputs, other outputs.
    fields = {**run.input_config_fields, "crop_box": None}
    uncropped = dataclasses.replace(run, input_config_fields=fields)
    other = predict_split(uncropped, view, "test", 4, mapping=mapping)
    assert not np.allclose(other.probs, preds.probs, atol=1e-4)
    # Evaluation images are each standardised by their own mean and std.
    batch = next(iter(data.eval_batches(view, "test", run.input_config, global_batch_size=4)))
    np.testing.assert_allclose(batch["image"].mean(axis=(1, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(batch["image"].std(axis=(1, 2, 3)), 1.0, atol=1e-3)


def test_pointing_game_masks_are_cut_to_the_crop(runs, monkeypatch):
    from cxrjax.explain import probes, split
    from cxrjax.inference import dataset_request, evaluation_view, load_run, open_dataset

    run = load_run(runs[1])
    request = dataset_request(run)
    ds = open_dataset(request)
    view, _ = evaluation_view(run, ds, request, "test")
    seen = {}
    real = probes.pointing_rows

    def spy(heatmaps, lesions, labels, lungs=None, markers=None):
        seen.update(heatmaps=heatmaps, lesions=lesions, lungs=lungs, markers=markers)
        return real(heatmaps, lesions, labels, lungs, markers)

    monkeypatch.setattr(probes, "pointing_rows", spy)
    labels = np.asarray([ds.splits["test"][i]["label"] for i in range(len(ds.splits["test"]))])
    split.pointing_game_split(run, view, "test", labels, request=request)
    stored = ds.splits["test"][0]["lesion_mask"]
    r0, r1, c0, c1 = round(0.15 * 32), round(0.90 * 32), round(0.15 * 32), round(0.85 * 32)
    np.testing.assert_array_equal(seen["lesions"][0], stored[r0:r1, c0:c1])
    np.testing.assert_array_equal(seen["lungs"][0], ds.splits["test"][0]["lung_mask"][r0:r1, c0:c1])
    assert seen["markers"][0].shape[:2] == (r1 - r0, c1 - c0)

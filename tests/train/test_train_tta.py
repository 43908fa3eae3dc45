"""Test-time augmentation (cxrjax/train/tta.py): the TTA prediction is the mean of the base
predictor's probabilities on the separately transformed images (views checked against an
independent np.flip / np.pad reference), identity-only TTA is the plain prediction, and a
trained run reports TTA beside its plain test metrics, reproduced by evaluate's path."""

import types

import numpy as np
import pytest

from cxrjax.train import tta
from cxrjax.train.config import TTA_MODES


class AsymmetricPredictor:
    """softmax of three image statistics that flips and shifts change (left-half mass,
    top-rows mass, a pixel near the corner): a stand-in model with a known function."""

    num_classes = 3

    def __init__(self, image_size):
        self.input_config = types.SimpleNamespace(image_size=image_size)
        self.calls = 0

    def probabilities(self, images):
        self.calls += 1
        s = images.shape[1]
        z = np.stack([images[:, :, : s // 2].mean((1, 2, 3)), images[:, :3].mean((1, 2, 3)), images[:, 1, 2, 0]], 1)
        e = np.exp(z - z.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True)).astype(np.float32)

    def to_host(self, outputs):
        return np.asarray(outputs, np.float32)


def _reference_views(images, mode):
    """The views by np.flip / np.pad(mode="edge"), independent of tta.shifted."""
    d = max(1, round(images.shape[1] / 32))
    out = [images]
    if mode in ("flip", "flip_shift"):
        out.append(np.flip(images, axis=2))
    if mode in ("shift", "flip_shift"):
        h = images.shape[1]
        pad = lambda a, axis, before, after: np.pad(  # noqa: E731
            a, [(before, after) if i == axis else (0, 0) for i in range(4)], mode="edge"
        )
        out += [
            pad(images, 1, 0, d)[:, d:],  # up: content moves up, the bottom row repeats
            pad(images, 1, d, 0)[:, :h],  # down
            pad(images, 2, 0, d)[:, :, d:],  # left
            pad(images, 2, d, 0)[:, :, :h],  # right
        ]
    return out


@pytest.mark.parametrize("mode", [m for m in TTA_MODES if m != "none"])
def test_tta_is_the_mean_of_the_transformed_predictions(mode):
    images = np.random.default_rng(0).normal(size=(5, 64, 64, 1)).astype(np.float32)
    base = AsymmetricPredictor(64)
    predictor = tta.TTAPredictor(base, mode)
    got = predictor.to_host(predictor.probabilities(images))
    views = _reference_views(images, mode)
    assert len(predictor.view_names) == len(views) == {"flip": 2, "shift": 5, "flip_shift": 6}[mode]
    expected = np.mean([base.probabilities(v) for v in views], axis=0)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert not np.allclose(got, base.probabilities(images), atol=1e-4)  # the views do change the prediction
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-6)


def test_identity_only_tta_equals_the_plain_prediction():
    images = np.random.default_rng(1).normal(size=(3, 16, 16, 1)).astype(np.float32)
    base = AsymmetricPredictor(16)
    predictor = tta.TTAPredictor(base, "none")
    assert predictor.view_names == ["identity"]
    np.testing.assert_array_equal(predictor.to_host(predictor.probabilities(images)), base.probabilities(images))


def test_shift_is_a_few_percent_of_the_side_and_replicates_edges():
    assert [tta.shift_pixels(s) for s in (16, 64, 224)] == [1, 2, 7]
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    down = tta.shifted(x, 1, 0)[0, :, :, 0]
    np.testing.assert_array_equal(down[0], [0, 1, 2, 3])  # the top row repeated
    np.testing.assert_array_equal(down[1:], x[0, :3, :, 0])
    with pytest.raises(ValueError, match="choose one of"):
        tta.views("rotate", 16)


def test_a_run_reports_tta_beside_the_plain_evaluation(base_config, tmp_path):
    from cxrjax.data import load
    from cxrjax.evaluate.report import EvalOptions, evaluate_member
    from cxrjax.inference import dataset_request, load_run
    from cxrjax.train.evaluation import predict_split
    from cxrjax.train.trainer import train_and_evaluate

    config = base_config.replace(tta="flip_shift")
    results = train_and_evaluate(config, tmp_path / "run")
    for split in ("validation", "test"):
        report = results[split]
        assert report["tta"]["mode"] == "flip_shift" and len(report["tta"]["views"]) == 6
        assert set(report) > {"accuracy", "macro_f1", "tta"}  # the plain numbers stay
    run = load_run(tmp_path / "run")
    ds = load(config.dataset, data_dir=config.data_dir, options=config.dataset_options)
    plain = predict_split(run, ds, "test", 8)
    augmented = predict_split(tta.TTAPredictor(run, "flip_shift"), ds, "test", 8)
    assert results["test"]["accuracy"] == pytest.approx(float((plain.predictions == plain.labels).mean()))
    assert results["test"]["tta"]["accuracy"] == pytest.approx(
        float((augmented.predictions == augmented.labels).mean())
    )
    # evaluate: both, the run's tta by default, --tta overriding it.
    request = dataset_request(run)
    options = EvalOptions(workdirs=(str(tmp_path / "run"),), probes=False, pointing_game=False, progress=False)
    member = evaluate_member(run, ds, request, options, write=False)
    assert member.report["metrics"]["tta"]["accuracy"] == pytest.approx(results["test"]["tta"]["accuracy"])
    assert member.report["metrics"]["accuracy"] == pytest.approx(results["test"]["accuracy"])
    off = EvalOptions(workdirs=options.workdirs, probes=False, pointing_game=False, progress=False, tta="none")
    assert "tta" not in evaluate_member(run, ds, request, off, write=False).report["metrics"]

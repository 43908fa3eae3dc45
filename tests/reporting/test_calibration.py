"""cxrjax.reporting.calibration against values computed by hand, and temperature scaling
on a synthetic, deliberately over-confident model."""

import math

import numpy as np
import pytest

from cxrjax.reporting import calibration as cal

# Four examples, two classes. Top-label confidences 0.9 (right), 0.6 (wrong), 0.8 (right),
# 0.55 (right).
LABELS = np.array([0, 1, 1, 0])
PROBS = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.55, 0.45]])


def test_ece_mce_brier_nll_hand_computed():
    # 15 equal-width bins of width 1/15: 0.55 and 0.6 fall in bin 8 ((8/15, 9/15] =
    # (0.533, 0.6]), 0.8 in bin 11, 0.9 in bin 13.
    # bin 8: accuracy 1/2, confidence 0.575 -> gap 0.075, weight 2/4
    # bin 11: accuracy 1, confidence 0.8 -> gap 0.2; bin 13: accuracy 1, 0.9 -> gap 0.1
    ece = (2 * 0.075 + 0.2 + 0.1) / 4
    assert cal.expected_calibration_error(LABELS, PROBS) == pytest.approx(ece)
    assert cal.maximum_calibration_error(LABELS, PROBS) == pytest.approx(0.2)
    # Equal mass, 2 bins of 2 by confidence: {0.55 right, 0.6 wrong}, {0.8, 0.9 both right}
    # gaps |0.5 - 0.575| = 0.075 and |1 - 0.85| = 0.15 -> (2 * 0.075 + 2 * 0.15) / 4
    assert cal.expected_calibration_error(LABELS, PROBS, n_bins=2, equal_mass=True) == pytest.approx(0.1125)
    # Brier: sum_k (p_k - y_k)^2 per example: 0.02, 0.72, 0.08, 0.405 -> mean
    assert cal.brier_score(LABELS, PROBS) == pytest.approx((0.02 + 0.72 + 0.08 + 0.405) / 4)
    nll = -(math.log(0.9) + math.log(0.4) + math.log(0.8) + math.log(0.55)) / 4
    metrics = cal.calibration_metrics(LABELS, PROBS)
    assert metrics["nll"] == pytest.approx(nll)
    assert metrics["ece"] == pytest.approx(ece) and metrics["mce"] == pytest.approx(0.2)
    # Equal-mass with more bins than examples: one example per bin, ECE = mean |correct - confidence|
    per_example = np.mean([0.1, 0.6, 0.2, 0.45])
    assert metrics["ece_equal_mass"] == pytest.approx(per_example)


def test_confidence_exactly_on_a_bin_edge_goes_to_the_lower_bin():
    bins = cal.equal_width_bins(np.array([0.0, 1 / 3, 0.5, 1.0]), n_bins=3)
    assert [b.tolist() for b in bins] == [[0, 1], [2], [3]]


def test_perfectly_calibrated_bins_have_zero_ece():
    # confidence 0.75 in every row, 3 of 4 right
    probs = np.array([[0.75, 0.25]] * 4)
    assert cal.expected_calibration_error(np.array([0, 0, 0, 1]), probs) == pytest.approx(0.0)


def _overconfident(rng, n=600, k=3, sharpen=3.0):
    """True probabilities from random logits; the 'model' reports them sharpened (T=1/3)."""
    logits = rng.normal(0, 1.5, size=(n, k))
    true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(k, p=p) for p in true])
    reported = np.exp(sharpen * logits)
    return labels, reported / reported.sum(1, keepdims=True)


def test_temperature_scaling_recovers_the_temperature_and_lowers_nll():
    rng = np.random.default_rng(0)
    val_labels, val_probs = _overconfident(rng)
    test_labels, test_probs = _overconfident(rng)
    t = cal.fit_temperature(val_labels, val_probs)
    assert 2.2 < t < 4.0  # the sharpening was 3
    before = cal.calibration_metrics(test_labels, test_probs)
    scaled = cal.apply_temperature(test_probs, t)
    after = cal.calibration_metrics(test_labels, scaled)
    assert after["nll"] < before["nll"] - 0.1
    assert after["ece"] < before["ece"]
    np.testing.assert_array_equal(scaled.argmax(1), test_probs.argmax(1))  # accuracy unchanged
    np.testing.assert_allclose(scaled.sum(1), 1.0)
    # The fit is a minimum: nearby temperatures are no better on the fitted split.
    nll = lambda temp: cal.cross_entropy(val_labels, cal.apply_temperature(val_probs, temp))
    assert nll(t) <= min(nll(t * 1.05), nll(t / 1.05))


def test_apply_temperature_one_is_identity_and_refuses_bad_values():
    np.testing.assert_allclose(cal.apply_temperature(PROBS, 1.0), PROBS)
    with pytest.raises(ValueError, match="temperature"):
        cal.apply_temperature(PROBS, 0.0)


def test_sensitivity_threshold_and_operating_points_by_hand():
    # 5 positives scored 0.9 0.8 0.7 0.6 0.2: 80% sensitivity needs 4 -> threshold 0.6;
    # 95% needs all 5 -> 0.2
    positive = np.array([1, 1, 1, 1, 1, 0, 0, 0], bool)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.65, 0.1, 0.3])
    assert cal.sensitivity_threshold(positive, scores, 0.8) == pytest.approx(0.6)
    assert cal.sensitivity_threshold(positive, scores, 0.95) == pytest.approx(0.2)
    assert cal.sensitivity_threshold(np.zeros(3, bool), np.ones(3), 0.9) is None
    labels = np.where(positive, 0, 1)
    probs = np.stack([scores, 1 - scores], 1)
    thresholds = cal.operating_thresholds(labels, probs, ["COVID", "Normal"], 0.8)
    assert thresholds["COVID"] == pytest.approx(0.6)
    points = cal.operating_points(labels, probs, ["COVID", "Normal"], thresholds, 0.8)
    covid = points["COVID"]
    # at 0.6: positives flagged 4/5, negatives flagged 1/3 (0.65) -> specificity 2/3
    assert covid == {"threshold": 0.6, "target_sensitivity": 0.8, "sensitivity": 0.8, "specificity": 2 / 3}
    assert points["Normal"]["sensitivity"] >= 0.8


def test_split_calibration_report_keys():
    report = cal.split_calibration_report(
        LABELS, PROBS, ["a", "b"], temperature=2.0, thresholds={"a": 0.5, "b": None}, resamples=50, seed=1
    )
    assert set(report["calibration"]) == {"ece", "ece_equal_mass", "mce", "brier", "nll", "temperature"}
    assert report["calibrated"]["accuracy"] == pytest.approx(0.75) and report["calibrated"]["temperature"] == 2.0
    assert report["calibrated"]["nll"] != pytest.approx(report["calibration"]["nll"])
    assert set(report["ci95"]) >= {"accuracy", "macro_f1", "roc_auc_ovr"}
    assert report["operating_points"]["b"]["sensitivity"] is None
    raw = cal.split_calibration_report(LABELS, PROBS, ["a", "b"], temperature=None, thresholds=None, resamples=0)
    assert raw["calibrated"] is None and raw["ci95"] is None and raw["operating_points"] is None


def test_reliability_and_marked_curves_are_drawn(tmp_path):
    from cxrjax.reporting import plots

    rng = np.random.default_rng(1)
    labels, probs = _overconfident(rng, n=60)
    scaled = cal.apply_temperature(probs, 3.0)
    path = plots.plot_reliability(labels, probs, tmp_path / "rel.png", calibrated_probs=scaled)
    assert path.stat().st_size > 0
    names = ["a", "b", "c"]
    thresholds = cal.operating_thresholds(labels, probs, names, 0.95)
    for plot in (plots.plot_roc_curves, plots.plot_precision_recall):
        out = plot(labels, probs, names, tmp_path / f"{plot.__name__}.png", markers=thresholds, markers_note=" (val)")
        assert out.stat().st_size > 0


def test_certain_right_predictions_have_nll_plus_zero_and_print_without_a_sign():
    # p = 1 for the true class: -log 1 is -0.0 in floating point; the report must say 0.000
    labels, probs = np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]])
    nll = cal.calibration_metrics(labels, probs)["nll"]
    assert nll == 0.0 and math.copysign(1.0, nll) == 1.0
    report = cal.split_calibration_report(labels, probs, ["A", "B"], temperature=0.5, thresholds=None, resamples=0)
    line = cal.format_split_summary(report)[1]
    assert "NLL 0.000 -> after temperature 0.5: ECE 0.000, Brier 0.000, NLL 0.000" in line


def test_a_perfectly_separated_validation_split_is_flagged():
    """All validation examples right: the NLL only asks for sharper probabilities, so the
    fitted temperature and thresholds say nothing about other data -- fit_calibration warns."""
    import numpy as np

    from cxrjax.reporting.calibration import fit_calibration

    labels = np.array([0, 0, 1, 1])
    right = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]])
    fitted = fit_calibration(labels, right, ["a", "b"])
    assert fitted["temperature"] < 1.0 and len(fitted["warnings"]) == 1
    assert "all classified correctly" in fitted["warnings"][0]
    one_wrong = right.copy()
    one_wrong[1] = [0.4, 0.6]
    assert fit_calibration(labels, one_wrong, ["a", "b"])["warnings"] == []

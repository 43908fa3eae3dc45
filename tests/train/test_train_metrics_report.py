"""classification_report against values computed by hand on a small known confusion."""

import math

import numpy as np
import pytest

from cxrjax.reporting.metrics import classification_report, format_report

NAMES = ["a", "b", "c"]
LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
PREDS = np.array([0, 0, 1, 1, 2, 2, 2, 0, 2])


def _probs(preds, k=3):
    """0.6 on the predicted class, 0.2 elsewhere."""
    p = np.full((len(preds), k), 0.2)
    p[np.arange(len(preds)), preds] = 0.6
    return p


def test_report_matches_hand_computed_values():
    r = classification_report(LABELS, _probs(PREDS), NAMES)
    assert r["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 3]]
    assert r["accuracy"] == pytest.approx(6 / 9)
    expected = {"a": 2 / 3, "b": 1 / 2, "c": 3 / 4}  # precision == recall == f1 here
    for name, value in expected.items():
        c = r["per_class"][name]
        assert (c["precision"], c["recall"], c["f1"]) == pytest.approx((value, value, value))
    assert [r["per_class"][n]["support"] for n in NAMES] == [3, 2, 4]
    assert r["macro_f1"] == pytest.approx(23 / 36)
    assert r["weighted_f1"] == pytest.approx(6 / 9)
    assert r["macro_avg"]["precision"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)
    # One-vs-rest AUC by counting pairs (ties count 1/2): a 13.5/18, b 9.5/14, c 15.5/20.
    aucs = {"a": 13.5 / 18, "b": 9.5 / 14, "c": 15.5 / 20}
    for name, value in aucs.items():
        assert r["roc_auc_per_class"][name] == pytest.approx(value)
    assert r["roc_auc_ovr"] == pytest.approx(sum(aucs.values()) / 3)
    assert r["loss"] == pytest.approx(-(6 * math.log(0.6) + 3 * math.log(0.2)) / 9)
    assert r["class_names"] == NAMES
    assert "macro avg" in format_report(r)


def test_absent_class_has_no_auc_and_macro_uses_the_others():
    labels = np.array([0, 0, 1, 1])
    probs = _probs(np.array([0, 1, 1, 1]))
    r = classification_report(labels, probs, NAMES)
    assert r["roc_auc_per_class"]["c"] is None
    assert r["per_class"]["c"]["support"] == 0
    defined = [r["roc_auc_per_class"]["a"], r["roc_auc_per_class"]["b"]]
    assert r["roc_auc_ovr"] == pytest.approx(np.mean(defined))


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="shape"):
        classification_report(LABELS, _probs(PREDS)[:, :2], NAMES)

"""Per-example statistics of cxrjax.reporting.stats: the stratified bootstrap (against
scikit-learn on the resampled arrays, and its coverage on simulated data), the paired
bootstrap and the exact McNemar test (against a hand-computed table)."""

import numpy as np
import pytest
from sklearn import metrics as skm

from cxrjax.reporting import stats
from cxrjax.reporting.metrics import classification_report


def _data(rng, n=40, k=3):
    labels = rng.integers(0, k, n)
    labels[:k] = np.arange(k)  # every class present
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    probs[5] = probs[6]  # ties between examples
    return labels, probs


def test_resample_metrics_equal_sklearn_on_the_resampled_arrays():
    rng = np.random.default_rng(3)
    labels, probs = _data(rng)
    counts = next(stats.stratified_counts(labels, 5, np.random.default_rng(0)))
    np.testing.assert_array_equal(counts.sum(1), len(labels))
    for c in range(3):  # stratified: each class keeps its size
        np.testing.assert_array_equal(counts[:, labels == c].sum(1), (labels == c).sum())
    values = stats._weighted_metrics(counts, labels, probs)
    for r in range(5):
        idx = np.repeat(np.arange(len(labels)), counts[r].astype(int))
        y, p = labels[idx], probs[idx]
        assert values["accuracy"][r] == pytest.approx(skm.accuracy_score(y, p.argmax(1)))
        assert values["macro_f1"][r] == pytest.approx(
            skm.f1_score(y, p.argmax(1), labels=[0, 1, 2], average="macro", zero_division=0)
        )
        auc = np.mean([skm.roc_auc_score(y == c, p[:, c]) for c in range(3)])
        assert values["roc_auc_ovr"][r] == pytest.approx(auc)
    # The whole split: the numbers of classification_report.
    report = classification_report(labels, probs, ["a", "b", "c"])
    point = stats.split_metrics(labels, probs)
    assert point == pytest.approx({k: report[k] for k in ("accuracy", "macro_f1", "roc_auc_ovr")})


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    labels, probs = _data(np.random.default_rng(4), n=60)
    a = stats.bootstrap_ci(labels, probs, resamples=300, seed=7)
    assert a == stats.bootstrap_ci(labels, probs, resamples=300, seed=7)
    assert a != stats.bootstrap_ci(labels, probs, resamples=300, seed=8)
    point = stats.split_metrics(labels, probs)
    for name in stats.BOOTSTRAP_METRICS:
        low, high = a[name]
        assert low <= point[name] <= high and high - low > 0
    assert a["skipped_resamples"] == {"accuracy": 0, "macro_f1": 0, "roc_auc_ovr": 0}


def test_single_class_split_has_no_auc_interval_and_counts_the_skips():
    labels = np.zeros(10, np.int64)
    probs = np.tile([0.7, 0.3], (10, 1))
    ci = stats.bootstrap_ci(labels, probs, resamples=20, seed=0)
    assert ci["roc_auc_ovr"] is None and ci["skipped_resamples"]["roc_auc_ovr"] == 20
    assert ci["accuracy"] == [1.0, 1.0]


def test_bootstrap_interval_covers_the_true_accuracy_at_about_the_nominal_rate():
    # Fixed class sizes (the stratified design), each example right with its class's rate.
    rng = np.random.default_rng(11)
    sizes, rates = np.array([60, 40]), np.array([0.85, 0.65])
    true = float(sizes @ rates / sizes.sum())
    labels = np.repeat([0, 1], sizes)
    covered, sims = 0, 300
    for i in range(sims):
        correct = rng.random(len(labels)) < rates[labels]
        preds = np.where(correct, labels, 1 - labels)
        probs = np.eye(2)[preds] * 0.6 + 0.2
        low, high = stats.bootstrap_ci(labels, probs, resamples=400, seed=i)["accuracy"]
        covered += low <= true <= high
    # Nominal 95%; percentile intervals on n=100 run slightly narrow. 300 simulations:
    # binomial sd of the rate ~1.3 points.
    assert 0.90 <= covered / sims <= 0.985


def test_paired_bootstrap_of_identical_runs_is_zero_and_of_better_run_positive():
    labels, probs = _data(np.random.default_rng(5), n=80)
    same = stats.paired_bootstrap(labels, probs, probs, resamples=200, seed=0)
    assert same["accuracy"]["difference"] == 0.0 and same["accuracy"]["ci"] == [0.0, 0.0]
    worse = probs.copy()
    wrong = np.flatnonzero(probs.argmax(1) == labels)[:20]
    worse[wrong] = np.roll(worse[wrong], 1, axis=1)  # 20 right answers made wrong (maybe)
    diff = stats.paired_bootstrap(labels, probs, worse, resamples=500, seed=0)
    acc = diff["accuracy"]
    assert acc["difference"] == pytest.approx(acc["a"] - acc["b"]) and acc["difference"] > 0
    assert acc["ci"][0] > 0  # a paired comparison sees it; the runs share every other answer


def test_mcnemar_hand_computed_table():
    # A right & B wrong: 1; A wrong & B right: 6; concordant: 5.
    a = np.array([1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0], bool)
    b = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0], bool)
    m = stats.mcnemar_exact(a, b)
    assert (m.b, m.c, m.n) == (1, 6, 12)
    # two-sided exact: 2 * P(X <= 1), X ~ Binomial(7, 1/2) = 2 * (1 + 7) / 128
    assert m.p == pytest.approx(16 / 128)
    assert stats.mcnemar_exact(a, a).p == 1.0
    # b == c: p = min(1, 2 * P(X <= 3 | n=6)) = 1
    assert stats.mcnemar_exact([1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]).p == 1.0
    assert m.to_dict() == {"a_right_b_wrong": 1, "a_wrong_b_right": 6, "p": 0.125, "examples": 12}


def test_format_interval_shows_the_half_width_in_points():
    assert stats.format_interval("accuracy", 0.833, [0.742, 0.909], 66) == (
        "accuracy 0.833 [0.742, 0.909] (n=66: +-8.4 points)"
    )
    assert stats.format_interval("roc_auc", None, None) == "roc_auc n/a"
    assert stats.format_interval("accuracy", 0.5, None) == "accuracy 0.500"

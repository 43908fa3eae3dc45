"""Calibration of predicted probabilities, temperature scaling, and screening operating points.

Pure numpy/scipy functions of a split's labels and probabilities (every example, in order,
as ``cxrjax.train.evaluation.predict_split`` returns them):

- :func:`calibration_metrics`: expected calibration error with 15 equal-width bins
  (``ece``) and with equal-mass bins (``ece_equal_mass``: each bin holds the same number
  of examples, so sparse high-confidence bins do not dominate), maximum calibration error
  (``mce``, over the non-empty equal-width bins), the multi-class Brier score (mean over
  examples of ``sum_k (p_k - y_k)^2``, in [0, 2]) and the negative log-likelihood
  (``nll``, :func:`cxrjax.reporting.metrics.cross_entropy`). ECE and MCE use the top-label
  confidence (the predicted class's probability) against whether the prediction was right.
- :func:`fit_temperature` / :func:`apply_temperature`: temperature scaling (Guo et al.
  2017) on log-probabilities, ``softmax(log p / T)``, with ``T`` minimising the
  validation NLL. One scalar, so it cannot overfit a small validation split the way a
  per-class calibrator could, and it never changes the predicted class (a positive
  scaling of the logits keeps their order), so accuracy is unchanged.
- :func:`operating_thresholds` / :func:`operating_points`: per class, one-vs-rest, the
  highest threshold on that class's RAW probability that still reaches a target
  sensitivity on the validation split, and the sensitivity / specificity it gives on
  another split (for screening: COVID). Raw, not calibrated: with more than two classes
  temperature scaling can reorder one class's probabilities across examples, and the raw
  probability is what every run has.
- :func:`split_calibration_report`: what every evaluated split carries in results.json
  and evaluate's JSON (``calibration``, ``calibrated``, ``ci95``, ``operating_points``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import optimize as _opt

from cxrjax.reporting import stats
from cxrjax.reporting.metrics import cross_entropy

ECE_BINS = 15
DEFAULT_TARGET_SENSITIVITY = 0.95
# Search range of the temperature (log-uniform): far outside what a trained CNN needs.
TEMPERATURE_BOUNDS = (0.05, 20.0)
_EPS = 1e-12


def _check(labels: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or probs.shape[0] != len(labels):
        raise ValueError(f"probs must have shape [examples, classes] with {len(labels)} examples, got {probs.shape}")
    return labels, probs


def _bin_gaps(confidence: np.ndarray, correct: np.ndarray, bins: list[np.ndarray]) -> list[tuple[int, float]]:
    """(examples, |accuracy - mean confidence|) of every non-empty bin (index arrays)."""
    return [(len(b), abs(float(correct[b].mean()) - float(confidence[b].mean()))) for b in bins if len(b)]


def equal_width_bins(confidence: np.ndarray, n_bins: int = ECE_BINS) -> list[np.ndarray]:
    """Indices of each of ``n_bins`` bins ``(i/n, (i+1)/n]`` of [0, 1] (0 goes in the first)."""
    which = np.clip(np.ceil(np.asarray(confidence) * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    return [np.flatnonzero(which == i) for i in range(n_bins)]


def equal_mass_bins(confidence: np.ndarray, n_bins: int = ECE_BINS) -> list[np.ndarray]:
    """Indices of ``min(n_bins, N)`` bins of (nearly) equal size, by increasing confidence."""
    order = np.argsort(np.asarray(confidence), kind="stable")
    return [b for b in np.array_split(order, min(n_bins, max(len(order), 1))) if len(b)]


def expected_calibration_error(labels: Any, probs: Any, n_bins: int = ECE_BINS, *, equal_mass: bool = False) -> float:
    """sum over bins of (bin share of examples) x |bin accuracy - bin mean confidence|."""
    labels, probs = _check(labels, probs)
    if not len(labels):
        return float("nan")
    confidence, correct = probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(np.float64)
    bins = (equal_mass_bins if equal_mass else equal_width_bins)(confidence, n_bins)
    return float(sum(n * gap for n, gap in _bin_gaps(confidence, correct, bins)) / len(labels))


def maximum_calibration_error(labels: Any, probs: Any, n_bins: int = ECE_BINS) -> float:
    """The largest |accuracy - mean confidence| over the non-empty equal-width bins."""
    labels, probs = _check(labels, probs)
    if not len(labels):
        return float("nan")
    confidence, correct = probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(np.float64)
    return float(max(gap for _, gap in _bin_gaps(confidence, correct, equal_width_bins(confidence, n_bins))))


def brier_score(labels: Any, probs: Any) -> float:
    """Multi-class Brier score: mean over examples of sum_k (p_k - [k == label])^2."""
    labels, probs = _check(labels, probs)
    if not len(labels):
        return float("nan")
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def calibration_metrics(labels: Any, probs: Any, n_bins: int = ECE_BINS) -> dict[str, float]:
    """{ece, ece_equal_mass, mce, brier, nll} of ``probs`` (see the module doc)."""
    return {
        "ece": expected_calibration_error(labels, probs, n_bins),
        "ece_equal_mass": expected_calibration_error(labels, probs, n_bins, equal_mass=True),
        "mce": maximum_calibration_error(labels, probs, n_bins),
        "brier": brier_score(labels, probs),
        "nll": cross_entropy(labels, probs),
    }


def reliability_bins(labels: Any, probs: Any, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per equal-width bin: ``count``, ``confidence`` (mean) and ``accuracy`` (NaN when
    empty), and the bin ``edges`` (n_bins + 1): what a reliability diagram draws."""
    labels, probs = _check(labels, probs)
    confidence, correct = probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(np.float64)
    bins = equal_width_bins(confidence, n_bins)
    mean = lambda x, b: float(x[b].mean()) if len(b) else float("nan")
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1),
        "count": np.asarray([len(b) for b in bins], np.int64),
        "confidence": np.asarray([mean(confidence, b) for b in bins]),
        "accuracy": np.asarray([mean(correct, b) for b in bins]),
    }


# ------------------------------------------------------------------- temperature scaling


def apply_temperature(probs: Any, temperature: float) -> np.ndarray:
    """softmax(log p / T), row by row (T > 1 softens, T < 1 sharpens; T = 1: unchanged)."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    logits = np.log(np.clip(np.asarray(probs, np.float64), _EPS, None)) / float(temperature)
    logits -= logits.max(axis=1, keepdims=True) if logits.size else 0.0
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def fit_temperature(labels: Any, probs: Any, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature minimising the NLL of ``apply_temperature(probs, T)`` on these
    (validation) examples: bounded scalar minimisation over log T within ``bounds``.

    A split the model gets entirely right with full confidence pushes T to the lower
    bound (ever sharper is ever better there); that is what the NLL asks for.
    """
    labels, probs = _check(labels, probs)
    if not len(labels):
        raise ValueError("fit_temperature needs at least one example")
    lo, hi = (math.log(b) for b in bounds)
    result = _opt.minimize_scalar(
        lambda u: cross_entropy(labels, apply_temperature(probs, math.exp(u))),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(math.exp(result.x))


# ---------------------------------------------------------------------- operating points


def sensitivity_threshold(positive: Any, scores: Any, target: float = DEFAULT_TARGET_SENSITIVITY) -> float | None:
    """The highest threshold t with mean(scores[positive] >= t) >= ``target`` (None when
    there is no positive example): the ceil(target x positives)-th highest positive score."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target!r}")
    positive = np.asarray(positive, bool)
    pos = np.sort(np.asarray(scores, np.float64)[positive])[::-1]
    if not len(pos):
        return None
    needed = max(1, math.ceil(target * len(pos) - 1e-9))
    return float(pos[needed - 1])


def operating_thresholds(
    labels: Any, probs: Any, class_names: Sequence[str], target: float = DEFAULT_TARGET_SENSITIVITY
) -> dict[str, float | None]:
    """{class: :func:`sensitivity_threshold` of its raw probability, one-vs-rest}."""
    labels, probs = _check(labels, probs)
    return {name: sensitivity_threshold(labels == k, probs[:, k], target) for k, name in enumerate(class_names)}


def operating_points(
    labels: Any,
    probs: Any,
    class_names: Sequence[str],
    thresholds: Mapping[str, float | None],
    target: float = DEFAULT_TARGET_SENSITIVITY,
) -> dict[str, dict[str, float | None]]:
    """{class: {threshold, target_sensitivity, sensitivity, specificity}}: the thresholds
    (chosen on validation) applied to these examples; "positive" is p_class >= threshold.
    Sensitivity (specificity) is None without positive (negative) examples here."""
    labels, probs = _check(labels, probs)
    out = {}
    for k, name in enumerate(class_names):
        t = thresholds.get(name)
        positive = labels == k
        sens = spec = None
        if t is not None:
            flagged = probs[:, k] >= t
            sens = float(flagged[positive].mean()) if positive.any() else None
            spec = float((~flagged[~positive]).mean()) if (~positive).any() else None
        out[name] = {"threshold": t, "target_sensitivity": float(target), "sensitivity": sens, "specificity": spec}
    return out


# ------------------------------------------------------------ what every split reports


def split_calibration_report(
    labels: Any,
    probs: Any,
    class_names: Sequence[str],
    *,
    temperature: float | None,
    thresholds: Mapping[str, float | None] | None,
    target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY,
    resamples: int = stats.BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """The keys every evaluated split adds to its classification report:

    ``calibration``: {ece, ece_equal_mass, mce, brier, nll} of the raw probabilities and
    the fitted ``temperature`` (None: none fitted); ``calibrated``: the same metrics and
    ``accuracy`` after temperature scaling (None without a temperature); ``ci95``:
    :func:`cxrjax.reporting.stats.bootstrap_ci` (None when ``resamples`` is 0);
    ``operating_points``: :func:`operating_points` (None without thresholds).
    """
    labels, probs = _check(labels, probs)
    calibration = {**calibration_metrics(labels, probs), "temperature": temperature}
    calibrated = None
    if temperature is not None and len(labels):
        scaled = apply_temperature(probs, temperature)
        calibrated = {
            **calibration_metrics(labels, scaled),
            "temperature": temperature,
            "accuracy": float(np.mean(scaled.argmax(axis=1) == labels)),
        }
    ci95 = stats.bootstrap_ci(labels, probs, resamples=resamples, seed=seed) if resamples and len(labels) else None
    points = None
    if thresholds is not None:
        points = operating_points(labels, probs, class_names, thresholds, target_sensitivity)
    return {"calibration": calibration, "calibrated": calibrated, "ci95": ci95, "operating_points": points}


def fit_calibration(
    labels: Any, probs: Any, class_names: Sequence[str], target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY
) -> dict[str, Any]:
    """What a run stores in ``calibration.json``, fitted on its validation predictions:
    ``temperature`` (None without examples), the validation NLL before and after, and per
    class the operating threshold reaching ``target_sensitivity`` (on the raw probability)."""
    labels, probs = _check(labels, probs)
    temperature = fit_temperature(labels, probs) if len(labels) else None
    warnings = []
    if len(labels) and bool(np.all(probs.argmax(axis=1) == labels)):
        warnings.append(
            f"the {len(labels)} validation examples are all classified correctly: the temperature only sharpens "
            f"(T = {temperature:.3g}) and the operating thresholds sit at the positives' lowest scores, so "
            "calibration and operating points fitted here are unreliable on other data"
        )
    return {
        "temperature": temperature,
        "warnings": warnings,
        "fitted_on": "validation",
        "examples": int(len(labels)),
        "nll_before": cross_entropy(labels, probs),
        "nll_after": None if temperature is None else cross_entropy(labels, apply_temperature(probs, temperature)),
        "method": "temperature scaling: softmax(log p / T), T minimising the validation NLL",
        "target_sensitivity": float(target_sensitivity),
        "operating_thresholds": operating_thresholds(labels, probs, class_names, target_sensitivity),
        "thresholds_apply_to": "the raw (uncalibrated) probability of the class, one vs rest: positive if p >= t",
        "class_names": list(class_names),
    }


def format_split_summary(report: Mapping[str, Any], split: str = "") -> list[str]:
    """Printed lines for one split's report (a classification report with the keys of
    :func:`split_calibration_report`): metrics with their intervals, calibration before /
    after temperature scaling, operating points."""
    n = report.get("num_examples")
    ci = report.get("ci95") or {}
    prefix = f"{split}: " if split else ""
    lines = [
        prefix
        + " | ".join(
            stats.format_interval(label, report.get(key), ci.get(key), n)
            for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("roc_auc_ovr", "ROC-AUC"))
        )
    ]
    if ci:
        lines[0] += f"  ({ci['resamples']} stratified bootstrap resamples, 95% percentile intervals)"
    raw, scaled = report.get("calibration"), report.get("calibrated")
    if raw:
        text = f"{prefix}calibration: ECE {raw['ece']:.3f}, Brier {raw['brier']:.3f}, NLL {raw['nll']:.3f}"
        if scaled:
            text += (
                f" -> after temperature {scaled['temperature']:.3g}: ECE {scaled['ece']:.3f}, "
                f"Brier {scaled['brier']:.3f}, NLL {scaled['nll']:.3f}"
            )
        lines.append(text)
    points = report.get("operating_points") or {}
    shown = []
    for name, point in points.items():
        if point["threshold"] is None:
            continue
        sens, spec = (_fmt(point[k]) for k in ("sensitivity", "specificity"))
        shown.append(f"{name} p >= {point['threshold']:.3g}: sensitivity {sens}, specificity {spec}")
    if shown:
        target = next(iter(points.values()))["target_sensitivity"]
        lines.append(f"{prefix}operating points ({target:.0%} sensitivity on validation): " + "; ".join(shown))
    return lines


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"

"""The PNG plots of runs and evaluations (matplotlib, Agg): learning curves, confusion
matrix, ROC and precision-recall curves (optionally marking each class's operating
point), reliability diagrams.

Each function takes plain data (the metrics.jsonl records, a report dict, labels and
probabilities) and writes one file, so training, evaluation, explanation and the
experiments draw with the same code.

Why precision-recall next to ROC: with imbalanced classes (D4 has 7.6x more Normal than
Viral Pneumonia images) a ROC curve can look excellent while most of a rare class's
positive predictions are wrong; the PR curve and its average precision show that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

from cxrjax.reporting.calibration import expected_calibration_error, reliability_bins  # noqa: E402


def _values(history: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [np.nan if h.get(key) is None else float(h[key]) for h in history]


def plot_learning_curves(
    history: Sequence[dict[str, Any]],
    path: str | Path,
    *,
    best_epoch: int | None = None,
    evaluated_epoch: int | None = None,
    title: str = "",
) -> Path:
    """Train/validation loss and accuracy per epoch; dotted lines mark the best epoch and,
    if different, the epoch whose checkpoint was evaluated. The loss axis turns
    logarithmic when the losses span more than a factor of 5 (an early spike would
    otherwise flatten the rest of the curve)."""
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, _values(history, f"train_{metric}"), "o-", label=f"train {metric}")
        ax.plot(epochs, _values(history, f"val_{metric}"), "s-", label=f"validation {metric}")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="gray", linestyle=":", label=f"best epoch ({best_epoch})")
        if evaluated_epoch is not None and evaluated_epoch != best_epoch:
            ax.axvline(evaluated_epoch, color="black", linestyle="--", label=f"evaluated epoch ({evaluated_epoch})")
        if metric == "loss":
            losses = np.array(_values(history, "train_loss") + _values(history, "val_loss"))
            losses = losses[np.isfinite(losses) & (losses > 0)]
            if len(losses) and losses.max() > 5 * losses.min():
                ax.set_yscale("log")
                for axis_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
                    axis_formatter(matplotlib.ticker.FormatStrFormatter("%.2g"))
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        if metric == "accuracy":
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
        if epochs:
            ax.set_xticks(epochs if len(epochs) <= 20 else np.linspace(epochs[0], epochs[-1], 11).round())
    fig.suptitle(title or "learning curves")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_confusion_matrix(
    confusion: Sequence[Sequence[int]],
    class_names: Sequence[str],
    path: str | Path,
    *,
    title: str = "",
) -> Path:
    """Counts and row percentages (recall per true class); rows true, columns predicted."""
    cm = np.asarray(confusion, np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows > 0)
    k = len(class_names)
    size = max(4.0, 1.1 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            color = "white" if frac[i, j] > 0.5 else "black"
            ax.text(j, i, f"{cm[i, j]}\n{100 * frac[i, j]:.0f}%", ha="center", va="center", color=color)
    ax.set_xticks(range(k), class_names, rotation=30, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    return save_figure(fig, path)


def _flagged(positive: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """(sensitivity, false positive rate, precision) of ``scores >= threshold``."""
    flagged = scores >= threshold
    sens = float(flagged[positive].mean()) if positive.any() else float("nan")
    fpr = float(flagged[~positive].mean()) if (~positive).any() else float("nan")
    precision = float(positive[flagged].mean()) if flagged.any() else float("nan")
    return sens, fpr, precision


def _mark(ax: Any, x: float, y: float, color: str) -> None:
    ax.plot([x], [y], "o", markersize=8, color=color, markeredgecolor="black", label="_nolegend_", zorder=3)


def _marker_legend(ax: Any, markers: Mapping[str, float | None] | None, markers_note: str) -> None:
    """One legend entry for every class's marker (the thresholds are in the JSON reports)."""
    if markers and any(t is not None for t in markers.values()):
        ax.plot(
            [], [], "o", markersize=8, color="white", markeredgecolor="black", label=f"operating point{markers_note}"
        )


def plot_roc_curves(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    *,
    title: str = "",
    markers: Mapping[str, float | None] | None = None,
    markers_note: str = "",
) -> Path:
    """One-vs-rest ROC curve per class (classes absent from ``labels`` are listed as n/a).

    ``markers``: {class: threshold} (an operating point, e.g. chosen on validation for
    95% sensitivity) marked on the class's curve where ``p_class >= threshold``;
    ``markers_note`` is added to their legend entry (e.g. " (95% sens. on validation)").
    """
    labels = np.asarray(labels)
    probs = np.asarray(probs)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", label="chance")
    for k, name in enumerate(class_names):
        positive = labels == k
        if positive.all() or not positive.any():
            ax.plot([], [], label=f"{name} (n/a: no {'negatives' if positive.all() else 'positives'})")
            continue
        fpr, tpr, _ = skm.roc_curve(positive, probs[:, k])
        (line,) = ax.plot(fpr, tpr, label=f"{name} (AUC {skm.auc(fpr, tpr):.3f})")
        threshold = (markers or {}).get(name)
        if threshold is not None:
            sens, false_pos, _ = _flagged(positive, probs[:, k], threshold)
            _mark(ax, false_pos, sens, line.get_color())
    _marker_legend(ax, markers, markers_note)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title or "ROC curves (one-vs-rest)")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_precision_recall(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    title: str = "",
    *,
    markers: Mapping[str, float | None] | None = None,
    markers_note: str = "",
) -> Path:
    """One-vs-rest precision-recall curve per class, with average precision in the legend;
    ``markers`` as in :func:`plot_roc_curves`."""
    labels = np.asarray(labels)
    probs = np.asarray(probs)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for k, name in enumerate(class_names):
        positive = labels == k
        if not positive.any():
            ax.plot([], [], label=f"{name} (no examples)")
            continue
        precision, recall, _ = skm.precision_recall_curve(positive, probs[:, k])
        ap = skm.average_precision_score(positive, probs[:, k])
        (line,) = ax.step(
            recall, precision, where="post", label=f"{name} (AP {ap:.3f}, prevalence {positive.mean():.2f})"
        )
        threshold = (markers or {}).get(name)
        if threshold is not None:
            sens, _, prec = _flagged(positive, probs[:, k], threshold)
            _mark(ax, sens, prec, line.get_color())
    _marker_legend(ax, markers, markers_note)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title or "precision-recall (one vs rest)", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def plot_reliability(
    labels: np.ndarray,
    probs: np.ndarray,
    path: str | Path,
    *,
    calibrated_probs: np.ndarray | None = None,
    n_bins: int = 15,
    title: str = "",
) -> Path:
    """Reliability diagram: accuracy against mean top-label confidence per equal-width
    bin (the diagonal is perfect calibration), with the ECE in the legend; the calibrated
    probabilities (temperature scaling), if given, next to the raw ones. Below: how many
    examples each bin holds (a bin of two examples says little)."""
    fig, (ax, counts) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", label="perfect calibration")
    series = [("raw", probs, "o-")]
    if calibrated_probs is not None:
        series.append(("calibrated", calibrated_probs, "s-"))
    width = 1.0 / n_bins
    for i, (name, p, style) in enumerate(series):
        bins = reliability_bins(labels, p, n_bins)
        keep = bins["count"] > 0
        ece = expected_calibration_error(labels, p, n_bins)
        ax.plot(bins["confidence"][keep], bins["accuracy"][keep], style, label=f"{name} (ECE {ece:.3f})")
        offset = (i - (len(series) - 1) / 2) * width / len(series)
        counts.bar(bins["edges"][:-1] + width / 2 + offset, bins["count"], width=width / len(series), label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("accuracy")
    ax.set_title(title or "reliability diagram", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    counts.set_xlabel("confidence (probability of the predicted class)")
    counts.set_ylabel("examples")
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` (creating its folder) and close it; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path

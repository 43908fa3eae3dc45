"""Precision-recall curves (one-vs-rest per class), which cxrjax.train.plots does not draw.

Why PR next to ROC: with imbalanced classes (D4 has 7.6x more Normal than Viral
Pneumonia images) a ROC curve can look excellent while most of a rare class's positive
predictions are wrong; the PR curve and its average precision show that.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def precision_recall_png(path: str | Path, labels: np.ndarray, probs: np.ndarray,
                         class_names: Sequence[str], title: str = "") -> Path:
    """One-vs-rest precision-recall curve per class, with average precision in the legend."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from sklearn.metrics import average_precision_score, precision_recall_curve

    labels = np.asarray(labels)
    probs = np.asarray(probs)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for k, name in enumerate(class_names):
        positive = labels == k
        if not positive.any():
            ax.plot([], [], label=f"{name} (no examples)")
            continue
        precision, recall, _ = precision_recall_curve(positive, probs[:, k])
        ap = average_precision_score(positive, probs[:, k])
        ax.step(recall, precision, where="post", label=f"{name} (AP {ap:.3f}, prevalence {positive.mean():.2f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title or "precision-recall (one vs rest)", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    from cxrjax.train.plots import save_figure

    return save_figure(fig, path, dpi=110)

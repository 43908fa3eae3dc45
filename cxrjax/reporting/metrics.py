"""Classification metrics on a full split, through scikit-learn, with the dataset's class names.

:func:`classification_report` is the one function every report in cxrjax uses (training,
``cxrjax.evaluate``, experiments): give it the labels and the predicted probabilities of
EVERY example of the split, in the same order (evaluation pads the last batch and drops
the padding with its ``mask``; nothing is dropped or shuffled), and the class names in
label order (``class_names[i]`` is label ``i``).

ROC-AUC is one-vs-rest per class; a class with no positive (or no negative) example in
``labels`` has no ROC curve, gets ``None``, and the macro average ``roc_auc_ovr`` is
taken over the classes that have one (``None`` if none has), instead of failing the way
``sklearn.metrics.roc_auc_score(multi_class="ovr")`` does.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn import metrics as skm


def cross_entropy(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the true labels."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    p = np.asarray(probs, np.float64)[np.arange(len(labels)), labels]
    # 0.0 - mean, not -mean: certain predictions give 0.0, not -0.0 (printed "-0.000")
    return float(0.0 - np.mean(np.log(np.clip(p, eps, 1.0))))


def roc_auc_per_class(labels: np.ndarray, probs: np.ndarray) -> list[float | None]:
    labels = np.asarray(labels)
    out: list[float | None] = []
    for k in range(probs.shape[1]):
        positive = labels == k
        if positive.all() or not positive.any():
            out.append(None)
        else:
            out.append(float(skm.roc_auc_score(positive, probs[:, k])))
    return out


def classification_report(
    labels: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, macro and weighted averages,
    confusion matrix (rows: true class, columns: predicted), one-vs-rest ROC-AUC, and
    the mean cross-entropy ``loss``, as a JSON-ready dict keyed by class NAME.
    """
    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs, np.float64)
    names = list(class_names)
    k = len(names)
    if probs.ndim != 2 or probs.shape != (len(labels), k):
        raise ValueError(f"probs must have shape [examples, classes] = [{len(labels)}, {k}], got {probs.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(
            f"labels must be in [0, {k}) for class names {names}, got range [{labels.min()}, {labels.max()}]"
        )
    preds = probs.argmax(axis=1) if len(labels) else np.zeros(0, np.int64)
    ids = list(range(k))
    precision, recall, f1, support = skm.precision_recall_fscore_support(labels, preds, labels=ids, zero_division=0)
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(names)
    }
    averages = {}
    for average in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(labels, preds, labels=ids, average=average, zero_division=0)
        averages[average] = {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(len(labels))}
    aucs = roc_auc_per_class(labels, probs)
    defined = [a for a in aucs if a is not None]
    return {
        "num_examples": int(len(labels)),
        "accuracy": float(np.mean(preds == labels)) if len(labels) else float("nan"),
        "loss": cross_entropy(labels, probs),
        "macro_f1": averages["macro"]["f1"],
        "weighted_f1": averages["weighted"]["f1"],
        "macro_avg": averages["macro"],
        "weighted_avg": averages["weighted"],
        "per_class": per_class,
        "confusion_matrix": skm.confusion_matrix(labels, preds, labels=ids).tolist(),
        "roc_auc_ovr": float(np.mean(defined)) if defined else None,
        "roc_auc_per_class": dict(zip(names, aucs)),
        "class_names": names,
    }


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table like sklearn's, from :func:`classification_report`'s dict."""
    names = report["class_names"]
    width = max([len(n) for n in names] + [len("weighted avg")])
    lines = [f"{'':>{width}}  precision  recall  f1-score  support"]
    for name in names:
        c = report["per_class"][name]
        lines.append(f"{name:>{width}}  {c['precision']:9.3f}  {c['recall']:6.3f}  {c['f1']:8.3f}  {c['support']:7d}")
    lines.append("")
    lines.append(f"{'accuracy':>{width}}  {'':9}  {'':6}  {report['accuracy']:8.3f}  {report['num_examples']:7d}")
    for key, label in (("macro_avg", "macro avg"), ("weighted_avg", "weighted avg")):
        a = report[key]
        lines.append(f"{label:>{width}}  {a['precision']:9.3f}  {a['recall']:6.3f}  {a['f1']:8.3f}  {a['support']:7d}")
    auc = report["roc_auc_ovr"]
    lines.append(f"ROC-AUC (one-vs-rest, macro): {'n/a' if auc is None else f'{auc:.3f}'}")
    return "\n".join(lines)

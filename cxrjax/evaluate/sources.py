"""Per-source metrics and the source probe: does the model recognise where an image came from?

DeGrave et al. (Nature Machine Intelligence 2021) showed that COVID-19 classifiers
trained on datasets assembled from different collections (D4 is one) learn to tell the
collections apart: when each class comes from its own sources, recognising the source
(scanner, processing, burnt-in text) is as good as recognising the disease, and the
test accuracy of a random split measures both. Two views of this, when the evaluated
split records each image's `source` (`cxrjax.data.provenance`) and holds more than one:

- per-source metrics: accuracy, macro F1, the class counts and the confusion matrix of
  each source's examples (`cxrjax.reporting.metrics.classification_report` on each),
  so a model that only works on some collections shows it;
- the source probe: the model's penultimate features (the last conv stage,
  `model.feature_names[-1]`, global-average pooled: what the classifier head sees)
  of every example, and a logistic regression predicting the source from them,
  scored by stratified k-fold cross-validation (every prediction is for an example
  the regression did not see). Its accuracy is compared with the majority-source rate
  (one-sided binomial test), and the class-source association is reported next to
  it: Cramér's V of class and source, and the accuracy of predicting the class from the
  source alone (each source -> its most common class). High source predictability
  together with a source that predicts the class is the confound DeGrave et al.
  describe; with sources that each hold every class, a predictable source is a
  recognisable collection, not yet a shortcut.

The features are read the way Grad-CAM reads its target layer
(`cxrjax.explain.gradcam`: the models' `perturb` points), in one jitted function.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cxrjax import inference
from cxrjax.explain import gradcam
from cxrjax.explain.probes import binomial_greater_pvalue
from cxrjax.reporting.metrics import classification_report
from cxrjax.reporting.stats import cramers_v
from cxrjax.train.evaluation import SplitPredictions, iterate_eval_batches

SOURCE_FIELD = "source"
PROBE_FOLDS = 5
SIGNIFICANCE = 0.01  # one-sided binomial test of the probe's accuracy against the majority rate
CONFOUNDED = 0.9  # the source alone predicts the class at least this well: class ~ source
_COMPILED: dict[tuple[str, tuple], Any] = {}


def per_source_metrics(
    labels: Sequence[int], probs: np.ndarray, sources: Sequence[str], class_names: Sequence[str]
) -> dict[str, Any] | None:
    """{source: {"n", "accuracy", "macro_f1", "class_counts": {class: n}, "confusion_matrix"}}
    over the examples of each source, in source order; None with fewer than 2 sources."""
    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs)
    sources = np.asarray([str(s) for s in sources], dtype=object)
    if len(set(sources.tolist())) < 2:
        return None
    out = {}
    for source in sorted(set(sources.tolist())):
        rows = np.flatnonzero(sources == source)
        metrics = classification_report(labels[rows], probs[rows], class_names)
        out[source] = {
            "n": int(len(rows)),
            "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"],
            "class_counts": {name: metrics["per_class"][name]["support"] for name in class_names},
            "confusion_matrix": metrics["confusion_matrix"],
        }
    return out


def source_probe(
    features: np.ndarray,
    sources: Sequence[str],
    labels: Sequence[int],
    *,
    folds: int = PROBE_FOLDS,
    seed: int = 0,
) -> dict[str, Any] | None:
    """How well `features` [N, D] predict `sources` (see the module docstring).

    Sources with a single example cannot be cross-validated and are left out (counted
    in `left_out`). Returns None when fewer than 2 sources remain. Keys: accuracy,
    majority_rate, p_value (binomial, accuracy > majority rate), n, n_sources, folds,
    per_source_recall, class_source_cramers_v, source_predicts_class_accuracy,
    confounded, verdict.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = np.asarray(features, np.float64).reshape(len(features), -1)
    sources = np.asarray([str(s) for s in sources], dtype=object)
    labels = np.asarray(labels, np.int64)
    counts = collections.Counter(sources.tolist())
    kept = np.array([counts[s] >= 2 for s in sources.tolist()], bool)
    if len({s for s, n in counts.items() if n >= 2}) < 2:
        return None
    x, y, classes = features[kept], sources[kept], labels[kept]
    n = len(y)
    k = int(min(folds, min(collections.Counter(y.tolist()).values())))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    predicted = cross_val_predict(model, x, y, cv=splitter)
    correct = predicted == y
    accuracy = float(correct.mean())
    majority_rate = max(collections.Counter(y.tolist()).values()) / n
    by_source = collections.defaultdict(collections.Counter)
    for source, label in zip(y.tolist(), classes.tolist()):
        by_source[source][label] += 1
    source_predicts_class = sum(max(c.values()) for c in by_source.values()) / n
    v = cramers_v(classes, y)
    p_value = binomial_greater_pvalue(int(correct.sum()), n, majority_rate)
    report = {
        "accuracy": accuracy,
        "majority_rate": majority_rate,
        "p_value": p_value,
        "n": n,
        "n_sources": len(by_source),
        "left_out": int((~kept).sum()),
        "folds": k,
        "method": f"standardised features -> logistic regression, stratified {k}-fold cross-validation",
        "per_source_recall": {s: float(correct[y == s].mean()) for s in sorted(by_source)},
        "class_source_cramers_v": None if np.isnan(v) else v,
        "source_predicts_class_accuracy": source_predicts_class,
        "confounded": bool(source_predicts_class >= CONFOUNDED),
    }
    report["verdict"] = _verdict(report)
    return report


def _verdict(r: Mapping[str, Any]) -> str:
    predictable = r["p_value"] < SIGNIFICANCE
    head = (
        f"the features predict the source with accuracy {r['accuracy']:.3f} "
        f"(majority source {r['majority_rate']:.3f}, {r['n_sources']} sources, p={r['p_value']:.2g}); "
        f"the source alone predicts the class with accuracy {r['source_predicts_class_accuracy']:.3f}"
    )
    if r["class_source_cramers_v"] is not None:
        head += f" (Cramér's V {r['class_source_cramers_v']:.2f})"
    if predictable and r["confounded"]:
        return head + (
            ": the model recognises the source and the source gives the class away, so its "
            "accuracy may measure source recognition (the confound of DeGrave et al. 2021); "
            "evaluate on held-out sources (split_by='source')"
        )
    if predictable:
        return head + ": the model recognises the source, but the sources mix the classes"
    return head + ": the source is not predictable from the features above the majority rate"


def _features_fn(model: Any, variables: Mapping[str, Any], image_shape: Sequence[int], layer: str | None):
    """(jitted images -> GAP features [B, C], layer name) at `layer` (default: the model's
    last feature layer), read at the perturb point as Grad-CAM reads it."""
    import jax
    import jax.numpy as jnp

    example = jnp.zeros((1, *image_shape), jnp.float32)
    path = gradcam.resolve_layer(gradcam.perturbation_paths(model, variables, example), layer, model)
    key = (repr(model), path)
    if key not in _COMPILED:
        if len(_COMPILED) >= 16:
            _COMPILED.clear()

        def compute(variables, images):
            with gradcam._recording_perturb():
                _, state = model.apply(variables, images, train=False, mutable=[gradcam._FEATURES])
            activation = gradcam._leaf(state[gradcam._FEATURES], path).astype(jnp.float32)
            return activation.mean(axis=tuple(range(1, activation.ndim - 1)))  # global average pool

        _COMPILED[key] = jax.jit(compute)
    return _COMPILED[key], "/".join(str(p) for p in path)


def penultimate_features(
    run: Any, view: Any, split: str, *, layer: str | None = None, batch_size: int = 64, progress: bool = False
) -> tuple[np.ndarray, str]:
    """(float32 [N, C] global-average-pooled activations of every example, in split order;
    the layer's name), through the run's own eval pipeline."""
    variables = {k: v for k, v in run.variables.items() if k != "perturbations"}
    fn, name = _features_fn(run.model, variables, run.input_config.image_shape, layer)
    out = []
    for images, _, mask in iterate_eval_batches(
        view, split, run.input_config, batch_size, desc=f"features {split}", progress=progress
    ):
        out.append(np.asarray(fn(variables, images))[mask])
    return (np.concatenate(out) if out else np.zeros((0, 0), np.float32)), name


def source_report(
    run: Any,
    ds: Any,
    view: Any,
    split: str,
    preds: SplitPredictions,
    *,
    probe: bool = True,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """{"per_source": ..., "source_probe": ...} for evaluate's JSON; both None when the
    split records no sources or only one (the probe also when `probe` is False)."""
    empty = {"per_source": None, "source_probe": None}
    if not inference.has_field(ds, split, SOURCE_FIELD):
        return empty
    sources = [str(s) for s in inference.split_field(ds, split, SOURCE_FIELD)]
    per_source = per_source_metrics(preds.labels, preds.probs, sources, run.class_names)
    if per_source is None:
        return empty
    result = {"per_source": per_source, "source_probe": None}
    if probe:
        features, layer = penultimate_features(run, view, split, batch_size=batch_size, progress=progress)
        result["source_probe"] = source_probe(features, sources, preds.labels)
        if result["source_probe"] is not None:
            result["source_probe"]["layer"] = layer
    return result


def format_sources(report: Mapping[str, Any]) -> list[str]:
    """The CLI's lines: accuracy per source, and the probe's verdict."""
    lines = []
    if report.get("per_source"):
        lines.append(
            "per source: "
            + "; ".join(f"{s or '(none)'} {m['accuracy']:.3f} (n={m['n']})" for s, m in report["per_source"].items())
        )
    if report.get("source_probe"):
        lines.append("source probe: " + report["source_probe"]["verdict"])
    return lines

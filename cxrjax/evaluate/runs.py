"""A trained run meets a dataset: open it, check the classes, predict every example.

Shared by ``cxrjax.evaluate``, ``cxrjax.predict`` and ``cxrjax.explain`` so all three
see exactly the same preprocessing (the run's own eval pipeline) and the same label
alignment.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

DEFAULT_BATCH_SIZE = 64


class EvaluationInputError(ValueError):
    """Bad input to evaluate / predict / explain (dataset, split, classes); the message
    says what to change. The command-line tools print it without a traceback."""


class ClassListMismatchError(EvaluationInputError):
    """The dataset's classes are not the classes the model was trained on."""


def label_mapping(run_classes: Sequence[str], data_classes: Sequence[str], *,
                  run_name: str, data_name: str) -> np.ndarray | None:
    """How dataset label ids map to the model's output ids, or a clear error.

    None when the lists are identical. When they hold the same names in another order
    (e.g. a folder dataset sorted differently), the permutation ``perm[data_id] =
    model_id`` so every metric is computed in the model's class order. Anything else
    (different names, different number) raises, naming both lists: S0 reported class
    names in a different order from its label ids, which no one noticed.
    """
    run_classes, data_classes = list(run_classes), list(data_classes)
    if run_classes == data_classes:
        return None
    if sorted(run_classes) == sorted(data_classes) and len(set(run_classes)) == len(run_classes):
        return np.asarray([run_classes.index(c) for c in data_classes], np.int64)
    raise ClassListMismatchError(
        f"class lists do not match: the model in {run_name} was trained on {run_classes} but "
        f"dataset {data_name} has {data_classes}. Evaluate on a dataset with the same classes "
        "(same names; order may differ), or train a model on this dataset.")


def dataset_request(run: Any, *, dataset: str | None = None, data_dir: str | None = None,
                    manual_dir: str | None = None,
                    options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Arguments for ``cxrjax.data.load``: the run's training dataset unless overridden.

    For the run's own dataset, ``options`` are applied on top of the run's preparation
    options (so ``{"shortcut_marker": true}`` gives the same phantoms, now with the
    marker); for another dataset they are its options (None: its defaults).
    """
    config = run.config
    name = dataset or config.dataset
    if name == config.dataset:
        options = {**dict(config.dataset_options or {}), **dict(options or {})}
    return {"name": name, "data_dir": data_dir or config.data_dir,
            "manual_dir": manual_dir or (config.manual_dir if name == config.dataset else None),
            "options": options}


def open_dataset(request: Mapping[str, Any]) -> Any:
    from cxrjax import data

    if request["data_dir"] is None:
        raise EvaluationInputError(f"no data dir for dataset {request['name']!r}: the run's config.json has "
                         "none; pass --data-dir DIR (where prepared datasets live)")
    return data.load(request["name"], data_dir=request["data_dir"],
                     manual_dir=request["manual_dir"], options=request["options"])


@dataclass
class DatasetView:
    """A duck-typed dataset for the eval pipeline: named record sources plus class names.

    Lets one object carry extra "splits" (a lung-masked view of the test split, the
    files handed to predict) next to the train split whose pixel statistics
    ``normalization="dataset"`` needs, so those statistics are computed once, from the
    data the model was trained on.
    """

    name: str
    class_names: list[str]
    splits: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def stored_statistics(run: Any) -> tuple[float, float] | None:
    """(mean, std) a normalization="dataset" run stored at training time, or None (other
    normalisations, or runs trained before the statistics were stored)."""
    from cxrjax.train.workdir import NORMALIZATION_FILE

    path = Path(run.workdir) / NORMALIZATION_FILE
    if run.input_config.normalization != "dataset" or not path.exists():
        return None
    import json

    stored = json.loads(path.read_text())
    return float(stored["mean"]), float(stored["std"])


def eval_view(ds: Any, stats_ds: Any | None = None, statistics: tuple[float, float] | None = None,
              **extra_splits: Any) -> DatasetView:
    """``ds``'s splits, the train split of ``stats_ds`` (the run's training data), and extras.

    ``statistics`` (:func:`stored_statistics`): the (mean, std) the run was trained with;
    the view then normalises with them and never reads a train split for them.
    """
    splits = dict(ds.splits)
    if stats_ds is not None and "train" in stats_ds.splits:
        splits["train"] = stats_ds.splits["train"]
    splits.update(extra_splits)
    view = DatasetView(name=getattr(ds, "name", "dataset"), class_names=list(ds.class_names),
                       splits=splits)
    if statistics is not None:
        from cxrjax.data import set_dataset_statistics

        set_dataset_statistics(view, *statistics)
    return view


def needs_training_statistics(run: Any, request: Mapping[str, Any]) -> bool:
    """normalization="dataset" on data other than the run's own needs the run's train
    split, unless the run stored its statistics (:func:`stored_statistics`)."""
    config = run.config
    same = (request["name"] == config.dataset
            and dict(request["options"] or {}) == dict(config.dataset_options or {}))
    return run.input_config.normalization == "dataset" and not same and stored_statistics(run) is None


@dataclass
class SplitPredictions:
    """Every example of a split, in order: labels in the model's class order, probabilities."""

    labels: np.ndarray   # int64 [N]
    probs: np.ndarray    # float32 [N, K]

    @property
    def predictions(self) -> np.ndarray:
        return self.probs.argmax(axis=1) if len(self.labels) else np.zeros(0, np.int64)


def iterate_eval_batches(ds: Any, split: str, input_config: Any, batch_size: int,
                         desc: str = "", progress: bool = True):
    """(images float32 [B, S, S, C], labels [B], mask bool [B]) over a split, in order."""
    from cxrjax import data

    if split not in ds.splits:
        raise EvaluationInputError(f"dataset {ds.name!r} has no split {split!r}; its splits are {sorted(ds.splits)}")
    batches = data.eval_batches(ds, split, input_config, global_batch_size=batch_size)
    iterator = data.make_iterator(batches, num_workers=getattr(input_config, "num_workers", 0))
    for batch in tqdm(iterator, total=len(batches), desc=desc or f"eval {split}", unit="batch",
                      disable=not progress, leave=False):
        yield (np.asarray(batch["image"], np.float32), np.asarray(batch["label"]),
               np.asarray(batch["mask"], bool))


_PROBABILITY_FNS: dict[str, Any] = {}


def probability_fn(model: Any):
    """Jitted softmax(model(x)) in eval mode, one per module configuration.

    Keyed by the module's repr (its class and every field; fields loaded from JSON may
    be lists, so the module itself is not always hashable): loading the same run again,
    or another run of the same architecture, reuses the compiled function instead of
    compiling anew for every ``load_run``.
    """
    import jax

    key = repr(model)
    if key not in _PROBABILITY_FNS:
        if len(_PROBABILITY_FNS) >= 16:
            _PROBABILITY_FNS.clear()
        _PROBABILITY_FNS[key] = jax.jit(
            lambda variables, x: jax.nn.softmax(model.apply(variables, x, train=False), axis=-1))
    return _PROBABILITY_FNS[key]


def predict_split(run: Any, ds: Any, split: str, *, mapping: np.ndarray | None = None,
                  batch_size: int = DEFAULT_BATCH_SIZE, desc: str = "",
                  progress: bool = True) -> SplitPredictions:
    """Probabilities for EVERY example of ``split`` through the run's eval pipeline.

    Padding of the last batch is dropped with the pipeline's mask, so ``labels[i]`` and
    ``probs[i]`` are the i-th example of the split (S0's diagonal-ROC bug was a shuffled
    iterator compared with unshuffled labels).
    """
    apply = probability_fn(run.model)
    labels, probs = [], []
    for images, batch_labels, mask in iterate_eval_batches(ds, split, run.input_config, batch_size,
                                                           desc, progress):
        out = np.asarray(apply(run.variables, images))
        labels.append(batch_labels[mask])
        probs.append(out[mask])
    labels = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)
    probs = (np.concatenate(probs).astype(np.float32) if probs
             else np.zeros((0, run.num_classes), np.float32))
    if mapping is not None:
        labels = mapping[labels]
    return SplitPredictions(labels=labels, probs=probs)


def split_field(ds: Any, split: str, key: str) -> list[Any]:
    """One field of every record of a split, in order (file names, masks)."""
    source = ds.splits[split]
    return [source[i][key] for i in range(len(source))]


def has_field(ds: Any, split: str, key: str) -> bool:
    source = ds.splits.get(split)
    return source is not None and len(source) > 0 and key in source[0]


def run_label(run: Any) -> str:
    return str(Path(run.workdir))


class SubsetSource:
    """The records ``indices`` of a source, in that order (e.g. the examples a grid shows)."""

    def __init__(self, source: Any, indices: Sequence[int]):
        self.source, self.indices = source, [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.source[self.indices[int(index)]]

"""Class subsets: a view of a prepared dataset that keeps only some of its classes.

    ds = data.load("covid19_radiography", data_dir=DIR, classes=("COVID", "Normal"))
    ds = data.load(..., options={"classes": ["COVID", "Normal"], ...})   # the same
    ds.class_names == ["COVID", "Normal"]      # in the order given; labels 0..k-1

Examples of the other classes are dropped from every split; the kept ones are relabelled
to their position in `classes`. The prepared files are untouched: a subset is a view
(`CLASSES_OPTION` is never a preparation option, so it never changes the prepared
folder), and every subset of one preparation shares its files.

Cost: the labels of every split are read once (`RecordSource.labels`), then records are
read lazily as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cxrjax.data.errors import DataError

# The key of `options` (data.load, TrainConfig.dataset_options) that selects classes.
CLASSES_OPTION = "classes"


def normalize_classes(classes: Any) -> tuple[str, ...] | None:
    """None, or a tuple of distinct class names (a list or a "A,B" string accepted)."""
    if classes is None:
        return None
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    if not isinstance(classes, Sequence) or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"classes must be a list of class names, got {classes!r}")
    classes = tuple(classes)
    if not classes:
        raise ValueError("classes must name at least one class (or be None for all classes)")
    duplicated = sorted({c for c in classes if classes.count(c) > 1})
    if duplicated:
        raise ValueError(f"classes {list(classes)} name {duplicated} more than once")
    return classes


def split_options(options: Any, classes: Any = None) -> tuple[Any, tuple[str, ...] | None]:
    """(preparation options without `classes`, the class subset or None).

    `classes` may come from the keyword or from `options["classes"]`; both given and
    different is an error.
    """
    classes = normalize_classes(classes)
    if isinstance(options, Mapping) and CLASSES_OPTION in options:
        from_options = normalize_classes(options[CLASSES_OPTION])
        options = {k: v for k, v in options.items() if k != CLASSES_OPTION}
        if classes is not None and from_options is not None and classes != from_options:
            raise ValueError(
                f"classes={list(classes)} but options['classes']={list(from_options)}; give the class subset once"
            )
        classes = classes or from_options
    return options, classes


def label_map(class_names: Sequence[str], classes: Sequence[str], dataset: str = "the dataset") -> np.ndarray:
    """int64[len(class_names)]: old label -> new label (position in `classes`), -1 if dropped.

    Raises ValueError naming the available classes if one of `classes` is unknown.
    """
    class_names = list(class_names)
    unknown = [c for c in classes if c not in class_names]
    if unknown:
        raise DataError(f"unknown class name(s) {unknown} for {dataset}; available class names: {class_names}")
    mapping = np.full(len(class_names), -1, np.int64)
    for new, name in enumerate(classes):
        mapping[class_names.index(name)] = new
    return mapping


def checked_index(source: Any, index: Any) -> int:
    """`index` as a non-negative int < len(source) (negative counts from the end), else
    TypeError / IndexError naming the source's split."""
    if not isinstance(index, int) and hasattr(index, "__index__"):
        index = int(index)
    if not isinstance(index, int):
        raise TypeError(f"{type(source).__name__} indices must be integers, got {type(index).__name__}")
    n = len(source)
    if index < 0:
        index += n
    if not 0 <= index < n:
        raise IndexError(f"index {index} out of range for split {source.split!r} of {n} records")
    return index


class SubsetSource(Sequence):
    """The records ``indices`` of ``source``, in that order, labels optionally remapped;
    picklable. The one record view of cxrjax: class subsets (:meth:`of_classes`), the
    examples a Grad-CAM grid shows, the files handed to predict (a plain list is a source).

    ``indices[i]`` is the position in ``source`` of record i; ``mapping[old_label]`` its
    new label (None: labels kept); ``labels`` the view's labels when known (else None).
    """

    def __init__(
        self,
        source: Any,
        indices: Any,
        *,
        mapping: np.ndarray | None = None,
        split: str = "",
        labels: np.ndarray | None = None,
    ):
        self._source = source
        self._mapping = None if mapping is None else np.asarray(mapping, np.int64)
        self.split = split or getattr(source, "split", "")
        self.indices = np.asarray(indices, np.int64).reshape(-1)
        self.labels = labels

    @classmethod
    def of_classes(cls, source: Any, mapping: np.ndarray, split: str, source_labels: Any = None) -> "SubsetSource":
        """The records of ``source`` whose class is kept (``mapping[label] >= 0``), relabelled."""
        if source_labels is None:
            source_labels = source_labels_of(source)
        new = np.asarray(mapping, np.int64)[np.asarray(source_labels, np.int64)]
        indices = np.flatnonzero(new >= 0).astype(np.int64)
        return cls(source, indices, mapping=mapping, split=split, labels=new[indices])

    def __len__(self) -> int:
        return len(self.indices)

    def _relabel(self, record: dict[str, Any]) -> dict[str, Any]:
        if self._mapping is None:
            return record
        record = dict(record)
        record["label"] = np.int64(self._mapping[int(record["label"])])
        return record

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        return self._relabel(self._source[int(self.indices[checked_index(self, index)])])

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        positions = [int(self.indices[int(i)]) for i in indices]
        getitems = getattr(self._source, "__getitems__", None)
        records = getitems(positions) if getitems else [self._source[p] for p in positions]
        return [self._relabel(r) for r in records]

    def __repr__(self) -> str:
        return f"SubsetSource(split={self.split!r}, len={len(self)}, of {len(self._source)})"


def source_labels_of(source: Any) -> np.ndarray:
    """int64 labels of every record of `source`: its `labels` attribute if it has one of
    the right length, else one pass over the records."""
    labels = getattr(source, "labels", None)
    if labels is not None and len(labels) == len(source):
        return np.asarray(labels, np.int64)
    return np.fromiter((int(source[i]["label"]) for i in range(len(source))), np.int64, count=len(source))


def select_classes(ds: Any, classes: Any) -> Any:
    """`ds` (a PreparedDataset, or any dataclass with class_names and splits) restricted to
    `classes`, relabelled 0..k-1 in that order.

    None returns `ds` itself. Splits left without examples are dropped. The view's
    `report` is the preparation report with `splits` counting the kept classes only and
    `class_subset` recording the selection (kept classes, all class names, dropped
    examples per split).
    """
    classes = normalize_classes(classes)
    if classes is None:
        return ds
    mapping = label_map(ds.class_names, classes, f"dataset {getattr(ds, 'name', '?')!r}")
    splits, counts, dropped = {}, {}, {}
    for split, source in ds.splits.items():
        sub = SubsetSource.of_classes(source, mapping, split)
        dropped[split] = len(source) - len(sub)
        if len(sub):
            splits[split] = sub
            histogram = np.bincount(sub.labels, minlength=len(classes))
            counts[split] = {name: int(histogram[i]) for i, name in enumerate(classes)}
    fields = {f.name for f in dataclasses.fields(ds)}  # PreparedDataset, or a test's look-alike
    changes: dict[str, Any] = {"class_names": list(classes), "splits": splits}
    if "report" in fields:
        report = dict(ds.report or {})
        report["splits"] = counts
        report["class_names"] = list(classes)
        report["class_subset"] = {"classes": list(classes), "all_class_names": list(ds.class_names), "dropped": dropped}
        changes["report"] = report
    if "class_subset" in fields:
        changes["class_subset"] = classes
    return dataclasses.replace(ds, **changes)

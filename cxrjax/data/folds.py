"""k-fold cross-validation folds: stratified, group-respecting, seeded views of ONE
prepared dataset.

    plan = folds.plan_folds(ds, k=5, seed=0, validation_fraction=0.2)
    view = folds.fold_view(ds, plan, fold=2)  # train / validation / test of fold 2
    view.splits["test"]  # fold 2: every example is tested in exactly one fold

Why views of one preparation: small real datasets (S1's 338 images, DP's 317) give test
splits of a few dozen images, whose accuracy moves by several points with the split.
Cross-validation tests every example once. The prepared splits are pooled (sorted by file
name, so the assignment does not depend on how the preparation split them) and
re-assigned; the prepared files are untouched and every fold reads them.

Assignment (:func:`assign_folds`): ``splits.stratified_group_split`` with k equal
fractions, so folds are stratified by class (fold sizes per class within one of each
other without groups) and duplicate groups -- the preparation report's duplicate groups
joined with the records' ``group`` (a groups file's patients) -- never straddle two
folds. For fold f (:func:`fold_indices`): test = fold f; the rest is split again by the
same function into train and a validation carve-out of ``validation_fraction`` (of the
rest), groups kept whole, seeded by (seed, f).

Fingerprint: a view's ``fingerprint`` is the prepared data's with ``splits`` replaced by
the fold's (examples and a SHA-256 of its sorted "file name <TAB> label" lines) and
``folds`` saying which fold of which plan, so a run trained on one fold refuses to
resume on another (``cxrjax.train`` compares fingerprints).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cxrjax.data.splits import joined_groups, stratified_group_split
from cxrjax.data.subset import SubsetSource, source_labels_of

_CHUNK = 256


def fold_names(k: int) -> list[str]:
    """Split names for k folds; zero-padded so their sorted order is the fold order."""
    return [f"fold_{i:03d}" for i in range(k)]


def assign_folds(
    labels: Sequence[int],
    groups: Sequence[int] | None,
    k: int,
    seed: int,
    *,
    extra_groups: Sequence[Sequence[int]] = (),
) -> np.ndarray:
    """int64 fold (0..k-1) per item: stratified by label, items sharing a group id (in
    ``groups`` or any of ``extra_groups``; negative ids there: none) in one fold.

    Raises ValueError when k < 2 or some fold would be empty (fewer units than folds).
    """
    if int(k) != k or k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {k}")
    labels = np.asarray(labels, np.int64)
    names = fold_names(int(k))
    parts = stratified_group_split(labels, groups, dict.fromkeys(names, 1.0 / k), seed, extra_groups=extra_groups)
    fold_of = np.full(len(labels), -1, np.int64)
    for i, name in enumerate(names):
        fold_of[parts[name]] = i
    empty = [i for i, name in enumerate(names) if not len(parts[name])]
    if empty:
        units = len(set(joined_groups(len(labels), groups, extra_groups).tolist()))
        raise ValueError(
            f"{k} folds of {len(labels)} examples ({units} duplicate/patient groups) leave fold(s) "
            f"{empty} empty; use fewer folds"
        )
    return fold_of


def fold_indices(
    labels: Sequence[int],
    groups: Sequence[int] | None,
    fold_of: Sequence[int],
    fold: int,
    validation_fraction: float,
    seed: int,
) -> dict[str, np.ndarray]:
    """{"train", "validation", "test"}: sorted item indices of fold ``fold``'s run. test =
    the fold; validation = a stratified, group-respecting ``validation_fraction`` of the
    other folds (seeded by (seed, fold)); train = the rest."""
    labels = np.asarray(labels, np.int64)
    fold_of = np.asarray(fold_of, np.int64)
    test = np.flatnonzero(fold_of == fold)
    rest = np.flatnonzero(fold_of != fold)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups, np.int64)
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    carve = stratified_group_split(
        labels[rest],
        groups[rest],
        {"train": 1.0 - validation_fraction, "validation": validation_fraction},
        int(seed) * 1000 + int(fold),
    )
    return {"train": rest[carve["train"]], "validation": rest[carve["validation"]], "test": test}


@dataclasses.dataclass(frozen=True)
class PooledExamples:
    """Every example of a prepared dataset, in one list sorted by file name.

    ``positions[i]`` = (split, index in that split) of item i; ``groups``: one id per
    item joining duplicates (preparation report) and records sharing a ``group``."""

    file_names: list[str]
    labels: np.ndarray
    groups: np.ndarray
    positions: list[tuple[str, int]]


def pool_examples(ds: Any) -> PooledExamples:
    """Every split of ``ds`` pooled (one pass reading file names and groups)."""
    entries = []
    for split, source in ds.splits.items():
        labels = source_labels_of(source)
        for start in range(0, len(source), _CHUNK):
            stop = min(start + _CHUNK, len(source))
            getitems = getattr(source, "__getitems__", None)
            records = getitems(list(range(start, stop))) if getitems else [source[i] for i in range(start, stop)]
            for offset, record in enumerate(records):
                index = start + offset
                entries.append(
                    (str(record["file_name"]), int(labels[index]), str(record.get("group", "")), split, index)
                )
    entries.sort(key=lambda e: (e[0], e[3]))
    names = [e[0] for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"dataset {getattr(ds, 'name', '?')!r} has records with the same file name in two splits")
    item_of = {name: i for i, name in enumerate(names)}
    duplicate_ids = np.full(len(names), -1, np.int64)
    for group_id, group in enumerate(((getattr(ds, "report", None) or {}).get("duplicates")) or []):
        for member in group.get("files") or []:
            if member in item_of:
                duplicate_ids[item_of[member]] = group_id
    patient_index: dict[str, int] = {}
    patient_ids = np.asarray([-1 if not e[2] else patient_index.setdefault(e[2], len(patient_index)) for e in entries])
    groups = joined_groups(len(names), None, [duplicate_ids, patient_ids.astype(np.int64)])
    return PooledExamples(
        file_names=names,
        labels=np.asarray([e[1] for e in entries], np.int64),
        groups=groups,
        positions=[(e[3], e[4]) for e in entries],
    )


@dataclasses.dataclass(frozen=True)
class FoldPlan:
    """k folds of one dataset: which fold each pooled example is in, and how each fold's
    validation is carved. ``to_json()`` is what a cross-validation records (folds.json)."""

    k: int
    seed: int
    validation_fraction: float
    pooled: PooledExamples
    fold_of: np.ndarray
    class_names: list[str]
    base_fingerprint: Mapping[str, Any] | None

    def indices(self, fold: int) -> dict[str, np.ndarray]:
        """{"train", "validation", "test"} item indices (into the pooled list) of fold ``fold``."""
        p = self.pooled
        return fold_indices(p.labels, p.groups, self.fold_of, fold, self.validation_fraction, self.seed)

    def to_json(self) -> dict[str, Any]:
        names = self.pooled.file_names
        return {
            "k": self.k,
            "fold_seed": self.seed,
            "validation_fraction": self.validation_fraction,
            "class_names": list(self.class_names),
            "data_sha256": (self.base_fingerprint or {}).get("sha256"),
            "examples": len(names),
            "folds": [
                {
                    "fold": f,
                    **{split: [names[i] for i in idx] for split, idx in self.indices(f).items()},
                }
                for f in range(self.k)
            ],
        }


def plan_folds(ds: Any, k: int, seed: int, validation_fraction: float) -> FoldPlan:
    """The :class:`FoldPlan` of ``ds`` (see the module docstring)."""
    pooled = pool_examples(ds)
    fold_of = assign_folds(pooled.labels, pooled.groups, k, seed)
    plan = FoldPlan(
        k=int(k),
        seed=int(seed),
        validation_fraction=float(validation_fraction),
        pooled=pooled,
        fold_of=fold_of,
        class_names=list(ds.class_names),
        base_fingerprint=getattr(ds, "fingerprint", None),
    )
    for fold in range(plan.k):
        parts = plan.indices(fold)
        if not len(parts["train"]) or not len(parts["validation"]):
            raise ValueError(
                f"fold {fold}: validation_fraction {validation_fraction} of {len(parts['train'])} + "
                f"{len(parts['validation'])} examples leaves the train or validation split empty"
            )
    return plan


def dataset_validation_share(ds: Any, default: float = 0.2) -> float:
    """The share of ``ds``'s examples in its validation split (``default`` without one)."""
    total = sum(len(s) for s in ds.splits.values())
    n_val = len(ds.splits.get("validation", ()))
    return n_val / total if total and n_val else default


@dataclasses.dataclass(frozen=True)
class FoldDataset:
    """One fold of a :class:`FoldPlan` as a dataset (what ``cxrjax.train`` and the eval
    pipeline read: name, class_names, splits, report, fingerprint)."""

    name: str
    class_names: list[str]
    splits: dict[str, SubsetSource]
    report: dict[str, Any]
    fingerprint: dict[str, Any]
    class_subset: tuple[str, ...] | None = None
    fold: int = 0
    file_names: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def fold_view(ds: Any, plan: FoldPlan, fold: int) -> FoldDataset:
    """Fold ``fold`` of ``plan`` over ``ds`` (the dataset the plan was made from)."""
    if list(ds.class_names) != list(plan.class_names):
        raise ValueError(f"the fold plan is for classes {plan.class_names}, the dataset has {list(ds.class_names)}")
    pooled = plan.pooled
    records = _Pooled(ds.splits, pooled.positions)
    parts = plan.indices(fold)
    splits = {
        split: SubsetSource(records, items, split=split, labels=pooled.labels[items]) for split, items in parts.items()
    }
    names = {split: [pooled.file_names[i] for i in items] for split, items in parts.items()}
    described = {
        split: {
            "examples": len(items),
            "sha256": hashlib.sha256(
                "\n".join(sorted(f"{pooled.file_names[i]}\t{int(pooled.labels[i])}" for i in items)).encode()
            ).hexdigest(),
        }
        for split, items in parts.items()
    }
    base = dict(plan.base_fingerprint or {})
    body = {k: v for k, v in base.items() if k != "sha256"}
    body.update(
        splits=described,
        folds={
            "k": plan.k,
            "fold": int(fold),
            "fold_seed": plan.seed,
            "validation_fraction": plan.validation_fraction,
            "base_sha256": base.get("sha256"),
        },
    )
    body["sha256"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    report = dict(getattr(ds, "report", None) or {})
    report["folds"] = body["folds"]
    report.pop("split_sources", None)  # the prepared split's sources do not describe a fold
    return FoldDataset(
        name=getattr(ds, "name", "dataset"),
        class_names=list(ds.class_names),
        splits=splits,
        report=report,
        fingerprint=body,
        class_subset=getattr(ds, "class_subset", None),
        fold=int(fold),
        file_names=names,
    )


class _Pooled:
    """Random access to the pooled list: item i -> record ``positions[i]`` of ``splits``."""

    def __init__(self, splits: Mapping[str, Any], positions: Sequence[tuple[str, int]] = ()):
        self._splits = dict(splits)
        self._positions = list(positions)

    def __len__(self) -> int:
        return len(self._positions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        split, position = self._positions[int(index)]
        return self._splits[split][position]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self[i] for i in indices]

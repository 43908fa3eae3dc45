"""Cross-validation folds (cxrjax.data.folds): stratified within one example per class,
duplicate and patient groups never split across folds, deterministic, every example
tested exactly once; fold views of a prepared dataset with planted duplicates."""

import numpy as np
import pytest

from cxrjax import data
from cxrjax.data import folds
from tests.data.fixtures import make_class_folders_with_duplicates, write_groups_csv

SEEDS = (0, 1, 2, 7)


def _labels(counts):
    return np.repeat(np.arange(len(counts)), counts)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", (2, 3, 5))
def test_without_groups_folds_are_stratified_within_one_per_class(seed, k):
    labels = np.random.default_rng(seed).permutation(_labels([23, 11, 7, 3]))
    fold_of = folds.assign_folds(labels, None, k, seed)
    assert sorted(set(fold_of.tolist())) == list(range(k))  # every example in exactly one fold
    for c in range(4):
        per_fold = np.bincount(fold_of[labels == c], minlength=k)
        assert per_fold.max() - per_fold.min() <= 1, (c, per_fold)
        assert per_fold.sum() == (labels == c).sum()


def _grouped(seed):
    """60 items of 3 classes; groups of 1-4 items (one label each, a few mixed)."""
    rng = np.random.default_rng(100 + seed)
    groups, labels, g = [], [], 0
    while len(labels) < 60:
        size = int(rng.integers(1, 5))
        label = int(rng.integers(0, 3))
        groups += [g] * size
        labels += [label] * size
        g += 1
    labels[1] = (labels[1] + 1) % 3  # a group with two labels (a duplicate filed in two classes)
    return np.asarray(labels), np.asarray(groups)


@pytest.mark.parametrize("seed", SEEDS)
def test_groups_never_straddle_folds_and_every_item_is_tested_once(seed):
    labels, groups = _grouped(seed)
    patients = np.full(len(labels), -1)
    patients[[0, len(labels) - 1]] = 5  # a patient joining the first and the last group
    fold_of = folds.assign_folds(labels, groups, 4, seed, extra_groups=[patients])
    for g in np.unique(groups):
        assert len(set(fold_of[groups == g].tolist())) == 1, g
    assert fold_of[0] == fold_of[len(labels) - 1]
    tested = np.concatenate([np.flatnonzero(fold_of == f) for f in range(4)])
    assert sorted(tested.tolist()) == list(range(len(labels)))
    # stratified up to one group: per class, folds differ by at most the largest group
    for c in range(3):
        per_fold = np.bincount(fold_of[labels == c], minlength=4)
        assert per_fold.max() - per_fold.min() <= 4 + 1


@pytest.mark.parametrize("seed", SEEDS)
def test_each_fold_run_partitions_the_data_and_keeps_groups_whole(seed):
    labels, groups = _grouped(seed)
    fold_of = folds.assign_folds(labels, groups, 3, seed)
    for fold in range(3):
        parts = folds.fold_indices(labels, groups, fold_of, fold, 0.25, seed)
        assert np.array_equal(parts["test"], np.flatnonzero(fold_of == fold))
        together = np.concatenate([parts["train"], parts["validation"], parts["test"]])
        assert sorted(together.tolist()) == list(range(len(labels)))
        where = {int(i): s for s, idx in parts.items() for i in idx}
        for g in np.unique(groups):
            assert len({where[int(i)] for i in np.flatnonzero(groups == g)}) == 1
        rest = len(labels) - len(parts["test"])
        assert abs(len(parts["validation"]) - 0.25 * rest) <= 3 * 4  # within a few groups of the share


def test_assignment_is_deterministic_and_depends_on_the_seed():
    labels, groups = _grouped(0)
    first = folds.assign_folds(labels, groups, 5, 3)
    assert np.array_equal(first, folds.assign_folds(labels, groups, 5, 3))
    assert any(not np.array_equal(first, folds.assign_folds(labels, groups, 5, s)) for s in (4, 5, 6))


def test_too_many_folds_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2 folds"):
        folds.assign_folds([0, 1], None, 1, 0)
    with pytest.raises(ValueError, match="empty; use fewer folds"):
        folds.assign_folds([0, 0, 1], None, 5, 0)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """image_folder with 3 planted byte-identical duplicate pairs per class and a groups
    file putting two other images of different classes in one patient."""
    tmp = tmp_path_factory.mktemp("folds")
    root, dup_groups = make_class_folders_with_duplicates(tmp / "src")
    groups_csv = write_groups_csv(tmp / "patients.csv", [("cat_a/img-010.png", "p1"), ("cat_b/img-011.png", "p1")])
    options = {"image_size": 16, "groups_file": str(groups_csv)}
    ds = data.load("image_folder", data_dir=tmp / "prepared", manual_dir=root, options=options)
    assert ds.report["duplicate_groups"] == len(dup_groups)
    return ds, dup_groups + [{"cat_a/img-010.png", "cat_b/img-011.png"}]


@pytest.mark.parametrize("seed", (0, 1, 2))
def test_plan_of_a_prepared_dataset_keeps_duplicates_and_patients_in_one_fold(prepared, seed):
    ds, together = prepared
    plan = folds.plan_folds(ds, 3, seed, 0.2)
    pooled = plan.pooled
    assert pooled.file_names == sorted(pooled.file_names)
    assert len(pooled.file_names) == sum(len(s) for s in ds.splits.values()) == 2 * (12 + 3)
    group_of_file = dict(zip(pooled.file_names, pooled.groups.tolist()))
    for group in together:  # joined by the data layer's duplicates and the groups file
        assert len({group_of_file[f] for f in group}) == 1, group
    assert len(set(group_of_file.values())) == len(pooled.file_names) - len(together)
    fold_of_file = dict(zip(pooled.file_names, plan.fold_of.tolist()))
    for group in together:
        assert len({fold_of_file[f] for f in group}) == 1, group
    record = plan.to_json()
    tested = [f for fold in record["folds"] for f in fold["test"]]
    assert sorted(tested) == pooled.file_names  # every example tested exactly once
    for fold in record["folds"]:
        split_of = {f: s for s in ("train", "validation", "test") for f in fold[s]}
        assert len(split_of) == len(pooled.file_names)
        for group in together:
            assert len({split_of[f] for f in group}) == 1, (fold["fold"], group)
    assert plan.to_json() == folds.plan_folds(ds, 3, seed, 0.2).to_json()  # deterministic


def test_fold_views_read_the_planned_records_and_have_their_own_fingerprint(prepared):
    ds, _ = prepared
    plan = folds.plan_folds(ds, 2, 0, 0.25)
    views = [folds.fold_view(ds, plan, f) for f in range(2)]
    for f, view in enumerate(views):
        assert view.class_names == ds.class_names and view.num_classes == 2
        for split, source in view.splits.items():
            names = [source[i]["file_name"] for i in range(len(source))]
            assert names == view.file_names[split] == plan.to_json()["folds"][f][split]
            assert [int(source[i]["label"]) for i in range(len(source))] == source.labels.tolist()
        assert view.fingerprint["folds"]["fold"] == f
        assert view.fingerprint["splits"]["test"]["examples"] == len(view.splits["test"])
    assert views[0].fingerprint["sha256"] != views[1].fingerprint["sha256"] != ds.fingerprint["sha256"]
    assert folds.fold_view(ds, plan, 1).fingerprint == views[1].fingerprint
    # the pipeline reads a view like a prepared dataset
    batches = data.eval_batches(views[0], "test", data.InputConfig(image_size=16), global_batch_size=4)
    assert sum(int(b["mask"].sum()) for b in batches) == len(views[0].splits["test"])

"""Deterministic, stratified train/validation/test splits that keep duplicate groups whole.

The COVID-19 Radiography Database has no official split (S4 used a random 70/20/10,
S0 80/20) and DP gives only train/ and test/ (S3 carved 20% of train/ for validation).
Here a split is a pure function of (labels, duplicate groups, fractions, seed): the
same inputs always give the same split, whatever order the files were listed in (the
caller sorts them by path).

Algorithm, per class (stratum):
  1. Each duplicate group is one unit, assigned to the stratum of its most common
     label (ties: the smallest label id), so a group never straddles two splits.
  2. Target sizes per split: fraction x stratum size, rounded by largest remainder so
     they sum to the stratum size exactly.
  3. Units are shuffled with a generator seeded by (seed, label), stably sorted by
     size (big groups first pack best), and each goes to the split that is furthest
     below its target (ties: split order). With no duplicates this meets every target
     exactly; with groups it is within one group size.

Extra groupings (`extra_groups`: e.g. patient ids from a groups file, or each image's
source) join items further: a unit is then every item connected through any of the
groupings (union-find), so a patient whose images are also duplicates of another
patient's keeps both patients in one split.

Unstratified (`stratify=False`, the leave-sources-out split): all units form one stratum
(labels are ignored), and every split with a non-zero fraction receives at least one
unit: once only as many units are left as splits are still empty, each goes to the
empty split furthest below its target. With fewer units than such splits a ValueError
says so (the caller names what the units are).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cxrjax.data.duplicates import UnionFind

SPLIT_ORDER = ("train", "validation", "test")


def check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """Validates split fractions (each in [0, 1], summing to 1); drops zero ones."""
    for split, fraction in fractions.items():
        if not 0.0 <= float(fraction) <= 1.0:
            raise ValueError(f"split fraction for {split!r} must be in [0, 1], got {fraction}")
    total = float(sum(fractions.values()))
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {dict(fractions)} (sum {total})")
    return {split: float(f) for split, f in fractions.items() if f > 0}


def largest_remainder(total: int, fractions: Sequence[float]) -> list[int]:
    """Integer sizes proportional to fractions that sum to `total` exactly."""
    raw = np.asarray(fractions, np.float64) * total
    sizes = np.floor(raw).astype(np.int64)
    remainder = int(total - sizes.sum())
    # Largest fractional part first; ties broken by position (stable sort).
    order = np.argsort(-(raw - sizes), kind="stable")
    sizes[order[:remainder]] += 1
    return [int(s) for s in sizes]


def joined_groups(n: int, groups: Sequence[int] | None, extra_groups: Sequence[Sequence[int]] = ()) -> np.ndarray:
    """Group id per item (its smallest member's index) joining items that share an id in
    `groups` or in any array of `extra_groups` (negative ids there: no group)."""
    union = UnionFind(n)
    for ids in ([] if groups is None else [groups]) + list(extra_groups):
        ids = np.asarray(ids, np.int64)
        if len(ids) != n:
            raise ValueError(f"{len(ids)} group ids for {n} items")
        first: dict[int, int] = {}
        for index, group in enumerate(ids.tolist()):
            if group < 0:
                continue
            if group in first:
                union.union(first[group], index)
            else:
                first[group] = index
    return union.labels()


def stratified_group_split(
    labels: Sequence[int],
    groups: Sequence[int] | None,
    fractions: Mapping[str, float],
    seed: int,
    *,
    extra_groups: Sequence[Sequence[int]] = (),
    stratify: bool = True,
) -> dict[str, np.ndarray]:
    """Splits item indices 0..N-1 into the named splits (see the module docstring).

    labels: class id per item. groups: group id per item (items sharing an id always
    land in the same split); None means every item is its own group.
    extra_groups: more group-id arrays (one id per item, negative = none), joined with
      `groups`. stratify: False ignores the labels and gives every split a unit.
    Returns {split: sorted int64 indices} for every split in `fractions` (empty where
    the fraction is 0).
    """
    labels = np.asarray(labels, np.int64)
    n = len(labels)
    groups = np.arange(n) if groups is None else np.asarray(groups, np.int64)
    if len(groups) != n:
        raise ValueError(f"{len(groups)} group ids for {n} labels")
    if len(extra_groups):
        groups = joined_groups(n, groups, extra_groups)
    names = [s for s in SPLIT_ORDER if s in fractions] + sorted(s for s in fractions if s not in SPLIT_ORDER)
    active = check_fractions({s: fractions[s] for s in names})
    names = [s for s in names if s in active]
    assigned: dict[str, list[int]] = {s: [] for s in fractions}
    if n == 0 or not names:
        return {s: np.zeros(0, np.int64) for s in fractions}

    # Units: members of each group, in index order; group order = smallest member.
    unit_members: dict[int, list[int]] = {}
    for index, group in enumerate(groups):
        unit_members.setdefault(int(group), []).append(index)
    units_by_stratum: dict[int, list[list[int]]] = {}
    for members in sorted(unit_members.values(), key=lambda m: m[0]):
        values, counts = np.unique(labels[members], return_counts=True)
        stratum = int(values[np.argmax(counts)]) if stratify else 0  # np.unique sorts: ties -> smallest
        units_by_stratum.setdefault(stratum, []).append(members)
    if not stratify and len(unit_members) < len(names):
        raise ValueError(f"{len(unit_members)} group(s) cannot fill {len(names)} splits ({', '.join(names)})")

    weights = [active[s] for s in names]
    for stratum in sorted(units_by_stratum):
        units = units_by_stratum[stratum]
        rng = np.random.default_rng([int(seed), stratum])
        units = [units[i] for i in rng.permutation(len(units))]
        units.sort(key=len, reverse=True)  # stable: keeps the shuffled order within a size
        size = sum(len(u) for u in units)
        targets = largest_remainder(size, weights)
        counts = [0] * len(names)
        for position, members in enumerate(units):
            deficits = [t - c for t, c in zip(targets, counts)]
            empty = [k for k, c in enumerate(counts) if c == 0]
            if not stratify and len(units) - position <= len(empty):
                k = max(empty, key=lambda j: (deficits[j], -j))  # every split gets a unit
            else:
                k = int(np.argmax(deficits))  # first maximum -> split order breaks ties
            counts[k] += len(members)
            assigned[names[k]].extend(members)
    return {s: np.asarray(sorted(assigned[s]), np.int64) for s in fractions}

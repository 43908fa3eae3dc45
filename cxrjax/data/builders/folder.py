"""Preparation shared by the builders that read a folder of radiographs.

Two passes over the files, both parallel over threads (PIL's decoders, resizing and
hashlib release the GIL):

1. check: read each file once, SHA-256 its bytes, decode it at the preparation size
   (anything undecodable is skipped with its reason), compute its dHash and a 16x16
   thumbnail, and check its lung mask if it has one. Then duplicate groups
   (`duplicates.find_duplicates`), each image's source and group
   (`provenance`: D4's metadata workbooks, the `groups_file`), the split plan
   (`splits.stratified_group_split`: duplicate groups, groups and, with
   `split_by="source"`, sources kept whole), and the report.
2. generate (TFDS writes each split): decode again, verify the bytes did not change
   since pass 1, and emit the example. Decoding twice costs less than keeping 21k
   decoded images in memory.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from tqdm.auto import tqdm

from cxrjax.data import duplicates as dup
from cxrjax.data import provenance
from cxrjax.data.builders.base import CxrBuilder, common_features, counts_by_class, mask_feature
from cxrjax.data.builders.options import CarveOptions, SplitOptions
from cxrjax.data.decode import DecodeError, decode_grayscale, decode_mask, read_regular_file
from cxrjax.data.fingerprint import content_digests, source_fingerprint
from cxrjax.data.layouts import LayoutError, ScannedTree, SourceImage
from cxrjax.data.splits import SPLIT_ORDER, joined_groups, stratified_group_split

# Given splits win over carved ones when a duplicate group straddles them: the copy in
# the most "held-out" split is kept (test > validation > train).
_PRIORITY = {"test": 0, "validation": 1, "train": 2}


def num_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def ordered_map(fn: Callable, items: Iterable, workers: int, window: int = 64) -> Iterator:
    """map(fn, items) over a thread pool, in order, with at most `window` in flight.

    However it ends (an exception such as KeyboardInterrupt, or the consumer closing
    the generator), the calls still queued are cancelled and the pool is not waited
    for: Ctrl-C stops after the calls already running (one file each), not after the
    whole window. (`with ThreadPoolExecutor` would wait for every queued call.)
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    iterator = iter(items)
    pool = concurrent.futures.ThreadPoolExecutor(workers)
    try:
        pending = collections.deque(pool.submit(fn, item) for item in itertools.islice(iterator, window))
        while pending:
            future = pending.popleft()
            for item in itertools.islice(iterator, 1):
                pending.append(pool.submit(fn, item))
            yield future.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


@dataclasses.dataclass(frozen=True)
class _Check:
    """Outcome of pass 1 for one file."""

    error: str | None = None
    digest: str = ""
    dhash: np.ndarray | None = None
    thumbnail: np.ndarray | None = None
    mask_error: str | None = None


def _check_one(image: SourceImage, size: int) -> _Check:
    try:
        data = read_regular_file(image.path)
    except OSError as error:
        return _Check(error=f"cannot read file ({error})")
    try:
        pixels = decode_grayscale(data, size=size, source=image.relpath).pixels
    except DecodeError as error:
        return _Check(error=str(error).removeprefix(f"{image.relpath}: "))
    mask_error = None
    if image.mask_path is not None:
        try:
            decode_mask(read_regular_file(image.mask_path), size=size, source=image.relpath)
        except (OSError, DecodeError) as error:
            mask_error = str(error).removeprefix(f"{image.relpath}: ")
    return _Check(
        digest=dup.sha256_bytes(data), dhash=dup.dhash(pixels), thumbnail=dup.thumbnail(pixels), mask_error=mask_error
    )


class FolderBuilder(CxrBuilder, skip_registration=True):
    """A builder over a manual-download folder; subclasses provide `_scan(root)`.

    Every record also carries `source` (its collection: `provenance`; "" when the
    dataset has no source information, "unknown" for an image its metadata misses)
    and `group` (from the groups file; "" where none).
    """

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "First release.",
        "1.1.0": "source and group features; groups_file and split_by options.",
    }
    OPTIONS_CLASS: ClassVar[type] = SplitOptions
    HAS_LUNG_MASK: ClassVar[bool] = False

    def _scan(self, root: Path) -> ScannedTree:
        raise NotImplementedError

    def _image_sources(self, tree: ScannedTree, images: list[SourceImage]) -> tuple[list[str], dict[str, Any] | None]:
        """(source per image, the report's `sources` part or None). Default: no sources."""
        return [provenance.NO_SOURCE] * len(images), None

    def _features(self):
        features = common_features(self.options.image_size)
        features["source"] = tfds.features.Text()
        features["group"] = tfds.features.Text()
        if self.HAS_LUNG_MASK:
            features["lung_mask"] = mask_feature(self.options.image_size)
            features["has_lung_mask"] = tfds.features.Scalar(dtype=np.bool_)
        return features

    # ------------------------------------------------------------------ pass 1 + plan

    def _extra_files(self) -> list[str]:
        groups_file = getattr(self.options, "groups_file", None)
        return [groups_file] if groups_file else []

    def source_fingerprint(self, root: str | Path) -> tuple[dict[str, Any], list]:
        return source_fingerprint(root, self._extra_files())

    def _splits(self, dl_manager):
        root = Path(dl_manager.manual_dir)
        tree = self._scan(root)
        # Before any file is read: a file changed while preparing then differs next time.
        self._source_summary, self._source_files = source_fingerprint(tree.root, self._extra_files())
        self._source_digests = content_digests(tree.root, self._source_files)
        self.info.features["label"].names = list(tree.class_names)
        size = self.options.image_size
        images = sorted(tree.images, key=lambda im: im.relpath)  # listing-order independent
        # Read before the images, so a bad groups file fails fast.
        table = provenance.read_groups_file(self.options.groups_file) if self.options.groups_file else None
        checks = list(
            tqdm(
                ordered_map(lambda im: _check_one(im, size), images, num_threads()),
                total=len(images),
                desc=f"{self.name}: checking images",
                unit=" img",
                leave=False,
            )
        )
        skipped = list(tree.skipped)
        kept, kept_checks = [], []
        for image, check in zip(images, checks):
            if check.error is not None:
                skipped.append({"file": image.relpath, "reason": check.error})
                continue
            if check.mask_error is not None:
                skipped.append(
                    {
                        "file": image.mask_path.relative_to(tree.root).as_posix(),
                        "reason": f"lung mask not readable ({check.mask_error}); image kept without a mask",
                    }
                )
                image = dataclasses.replace(image, mask_path=None)
            kept.append(image)
            kept_checks.append(check)
        class_index = {name: i for i, name in enumerate(tree.class_names)}
        labels = np.array([class_index[im.class_name] for im in kept], np.int64)
        self._require_every_class(tree, kept)
        sources, source_report = self._image_sources(tree, kept)
        if source_report is not None:  # the workbooks read are accounted for there
            problems = {m["file"]: m["error"] for m in source_report["metadata_files"]}
            skipped = [e for e in skipped if problems.get(e["file"], "") is not None]
            for entry in skipped:
                if problems.get(entry["file"]):
                    entry["reason"] = f"metadata not used: {problems[entry['file']]}; its images get source 'unknown'"
        groups, groups_report = [""] * len(kept), None
        if table is not None:
            groups, overrides, groups_report = provenance.match_groups(table, [im.relpath for im in kept])
            sources = [o if o is not None else s for s, o in zip(sources, overrides)]

        hashes = np.stack([c.dhash for c in kept_checks]) if kept_checks else np.zeros((0, dup.DHASH_WORDS), np.uint64)
        thumbs = (
            np.stack([c.thumbnail for c in kept_checks])
            if kept_checks
            else np.zeros((0, dup.THUMBNAIL_SIZE**2), np.float32)
        )
        group_of, dup_groups = dup.find_duplicates(
            [c.digest for c in kept_checks], hashes, thumbs, max_distance=self.options.near_duplicate_distance
        )
        assignment, dropped = self._plan(kept, labels, group_of, groups, sources, tree.root)
        for index, reason in dropped:
            skipped.append({"file": kept[index].relpath, "reason": reason})
        split_of = {i: split for split, members in assignment.items() for i in members}
        self._require_splits(tree, kept, labels, assignment)

        class_names = list(tree.class_names)
        splits = counts_by_class({s: labels[m].tolist() for s, m in assignment.items() if len(m)}, class_names)
        duplicates = [_duplicate_entry(group, kept, split_of) for group in dup_groups]
        warnings = _split_warnings(splits) + _duplicate_warnings(duplicates)
        if source_report is not None:
            warnings += [
                f"{m['file']}: metadata not used ({m['error']}); its images get source 'unknown'"
                for m in source_report["metadata_files"]
                if m["error"] is not None
            ]
        if groups_report is not None:
            warnings += provenance.groups_warnings(groups_report)
        self._report = {
            "dataset": self.name,
            "class_names": class_names,
            "splits": splits,
            "skipped": sorted(skipped, key=lambda e: e["file"]),
            "duplicate_groups": len(dup_groups),
            "duplicates": duplicates,
            "warnings": warnings,
            "source": str(tree.root),
            "layout": tree.layout,
            "files_considered": len(images),
            "source_fingerprint": self._source_summary,
            "split_by": self.options.split_by,
            "sources": _sources_report(source_report, sources, split_of),
            "groups": groups_report,
        }
        unknown = (self._report["sources"] or {}).get("unknown", 0)
        if source_report is not None and unknown:
            warnings.append(
                f"{unknown} image{'s have' if unknown != 1 else ' has'} no row in its class's "
                f"{provenance.METADATA_SUFFIX} (source "
                f"'{provenance.UNKNOWN_SOURCE}'; report['sources']['per_source'] counts them per split)."
            )
        if self.options.split_by == "source":
            self._report["split_sources"] = {
                split: sorted({sources[i] for i in members}) for split, members in assignment.items() if len(members)
            }
        if self.HAS_LUNG_MASK:
            used = [kept[i] for members in assignment.values() for i in members]
            with_mask = sum(im.mask_path is not None for im in used)
            self._report["lung_masks"] = {"with_mask": with_mask, "without_mask": len(used) - with_mask}
        digests = [c.digest for c in kept_checks]
        return {
            split: self._generate_examples(
                items=[(kept[i], int(labels[i]), digests[i], sources[i], groups[i]) for i in members]
            )
            for split, members in assignment.items()
            if len(members)
        }

    def _require_splits(
        self, tree: ScannedTree, kept: list[SourceImage], labels: np.ndarray, assignment: dict[str, np.ndarray]
    ) -> None:
        """Every split the layout gives or the options ask for has examples, else a
        LayoutError naming the split, why it is empty and the fix (a run would find no
        validation/test data later, far from the cause)."""
        for split in tree.given_splits:
            if not len(assignment.get(split, ())):
                # <root>/<split folder>/<class>/<file>; the folder may be val/, testing/...
                folder = next(im.path.parents[1] for im in tree.images if im.given_split == split)
                raise LayoutError(
                    f"{folder}: the given {split} split has no usable image (every file "
                    "was skipped as unreadable, or dropped as a duplicate of a more "
                    f"held-out split). Fix or replace the files in {folder}."
                )
        options = self.options
        requested = {"validation": options.validation_fraction, "test": getattr(options, "test_fraction", 0.0)}
        pool = (
            [i for i, im in enumerate(kept) if im.given_split in (None, "train")]
            if tree.given_splits
            else range(len(kept))
        )
        empty = [
            split
            for split, fraction in requested.items()
            if fraction > 0 and split not in tree.given_splits and not len(assignment.get(split, ()))
        ]
        if empty:
            per_class = collections.Counter(tree.class_names[int(labels[i])] for i in pool)
            counts = ", ".join(f"{name}: {per_class[name]}" for name in tree.class_names)
            which = " and ".join(f"the {split} split ({split}_fraction {requested[split]:g})" for split in empty)
            flags = " ".join(f"--{split}-fraction 0" for split in empty)
            raise LayoutError(
                f"{tree.root}: {which} would be empty: the usable images per class "
                f"({counts}) are too few for the fraction{'s' * (len(empty) > 1)}, which "
                f"round{'s' * (len(empty) == 1)} to 0 images in every class. Add images, "
                f"raise the fraction{'s' * (len(empty) > 1)}, or pass {flags} to prepare "
                "without."
            )

    def _require_every_class(self, tree: ScannedTree, kept: list[SourceImage]) -> None:
        present = collections.Counter(im.class_name for im in kept)
        for name in tree.class_names:
            if present[name] == 0:
                folders = sorted({str(im.path.parent) for im in tree.images if im.class_name == name})
                raise LayoutError(
                    f"{', '.join(folders)}: no readable image in class {name!r} (every "
                    "file was skipped as unreadable); fix or remove the class folder."
                )

    def _plan(
        self,
        kept: list[SourceImage],
        labels: np.ndarray,
        group_of: np.ndarray,
        groups: list[str],
        sources: list[str],
        root: Path,
    ) -> tuple[dict[str, np.ndarray], list[tuple[int, str]]]:
        """Split membership per split (indices into kept), plus dropped (index, reason).

        Duplicate groups, the groups file's groups and (split_by="source") sources are
        kept whole; a source split is not stratified by class."""
        options = self.options
        given = [im.given_split for im in kept]
        dropped: list[tuple[int, str]] = []
        by_source = options.split_by == "source"
        extra = [_ids(groups)] + ([_ids(sources, empty_is_none=False)] if by_source else [])

        def split(indices: np.ndarray, fractions: dict[str, float]) -> dict[str, np.ndarray]:
            local = [e[indices] for e in extra]
            if by_source:
                self._require_sources(root, indices, sources, group_of, local, fractions)
            return stratified_group_split(
                labels[indices], group_of[indices], fractions, options.seed, extra_groups=local, stratify=not by_source
            )

        if all(g is None for g in given):
            every = np.arange(len(kept))
            return {s: every[m] for s, m in split(every, options.fractions).items()}, dropped
        # Given splits: a duplicate group (or a group of the groups file) that straddles
        # them keeps only its members in its most held-out split; the others are
        # dropped (reported).
        members: dict[int, list[int]] = collections.defaultdict(list)
        for index, group in enumerate(joined_groups(len(kept), group_of, extra[:1])):
            members[int(group)].append(index)
        keep = np.ones(len(kept), bool)
        for group in members.values():
            splits = {given[i] for i in group}
            if len(splits) > 1:
                winner = min(splits, key=_PRIORITY.__getitem__)
                winners = [i for i in group if given[i] == winner]
                for i in group:
                    if given[i] == winner:
                        continue
                    keep[i] = False
                    copy = next((w for w in winners if group_of[w] == group_of[i]), None)
                    if copy is not None:
                        why = f"duplicate of {kept[copy].relpath}"
                    else:
                        why = f"in group {groups[i] or groups[winners[0]]!r} with {kept[winners[0]].relpath}"
                    dropped.append(
                        (i, f"{why} in the given {winner} split; dropped from {given[i]} so no image is in two splits")
                    )
        assignment = {
            s: np.array([i for i in range(len(kept)) if keep[i] and given[i] == s], np.int64) for s in SPLIT_ORDER
        }
        carve = {"validation": options.validation_fraction}
        if isinstance(options, SplitOptions):
            carve["test"] = options.test_fraction
        carve = {s: f for s, f in carve.items() if not len(assignment[s])}
        pool = assignment["train"]
        if carve and len(pool):
            fractions = {"train": 1.0 - sum(carve.values()), **carve}
            for name, local in split(pool, fractions).items():
                assignment[name] = pool[local]
        return {s: m for s, m in assignment.items() if len(m)}, dropped

    def _require_sources(
        self,
        root: Path,
        indices: np.ndarray,
        sources: list[str],
        group_of: np.ndarray,
        extra: list[np.ndarray],
        fractions: dict[str, float],
    ) -> None:
        """split_by="source": a LayoutError naming the sources unless there are enough
        whole units (sources, joined where duplicates or groups span two) for the splits."""
        wanted = [s for s in SPLIT_ORDER if fractions.get(s, 0) > 0]
        names = sorted({sources[i] or "(none)" for i in indices})
        units = len(set(joined_groups(len(indices), group_of[indices], extra).tolist()))
        if units >= len(wanted):
            return
        joined = (
            f"; duplicates or groups spanning sources join them into {units} unit{'s' * (units != 1)}"
            if units < len(names)
            else ""
        )
        raise LayoutError(
            f"{root}: split_by='source' puts whole sources into {', '.join(wanted)}, which needs at least "
            f"{len(wanted)} sources, but the images have {len(names)}: {names}{joined}. Sources come from "
            f"the dataset's *{provenance.METADATA_SUFFIX} files (covid19_radiography) or a source column of "
            "groups_file; set test_fraction 0 (or validation_fraction 0) for fewer splits, or use "
            "split_by='example'."
        )

    # ------------------------------------------------------------------ pass 2

    def _generate_examples(self, items: list[tuple[SourceImage, int, str]]):
        size = self.options.image_size
        has_mask_feature = self.HAS_LUNG_MASK

        def build(item: tuple[SourceImage, int, str, str, str]) -> tuple[str, dict[str, Any]]:
            image, label, digest, source, group = item
            data = read_regular_file(image.path)
            if dup.sha256_bytes(data) != digest:
                raise RuntimeError(
                    f"{image.path}: file changed during preparation; prepare again once the folder is stable."
                )
            decoded = decode_grayscale(data, size=size, source=str(image.path))
            example = {
                "image": decoded.pixels[..., None],
                "label": label,
                "file_name": image.relpath,
                "original_size": np.asarray(decoded.original_size, np.int32),
                "source": source,
                "group": group,
            }
            if has_mask_feature:
                if image.mask_path is not None:
                    mask = decode_mask(read_regular_file(image.mask_path), size=size, source=str(image.mask_path))
                else:
                    mask = np.zeros((size, size), np.uint8)
                example["lung_mask"] = mask[..., None]
                example["has_lung_mask"] = image.mask_path is not None
            return image.relpath, example

        yield from ordered_map(build, items, num_threads())


def _ids(values: list[str], empty_is_none: bool = True) -> np.ndarray:
    """int64 id per distinct string (in order of first appearance); "" -> -1 (no group)
    when empty_is_none."""
    index: dict[str, int] = {}
    return np.array(
        [-1 if (empty_is_none and not v) else index.setdefault(v, len(index)) for v in values], np.int64
    ).reshape(-1)


def _sources_report(
    source_report: dict[str, Any] | None, sources: list[str], split_of: dict[int, str]
) -> dict[str, Any] | None:
    """The report's `sources`: the metadata files read, images without a row, and per
    source the images in each split; None when no image has a source."""
    if source_report is None and not any(sources):
        return None
    per_source: dict[str, dict[str, int]] = {}
    for index, source in enumerate(sources):
        split = split_of.get(index)
        if split is not None:
            counts = per_source.setdefault(source, {})
            counts[split] = counts.get(split, 0) + 1
    report = dict(source_report or {"metadata_files": []})
    report["unknown"] = sum(
        n for s, c in per_source.items() if s in (provenance.UNKNOWN_SOURCE, provenance.NO_SOURCE) for n in c.values()
    )
    report["per_source"] = {
        s: {split: c[split] for split in SPLIT_ORDER if split in c} for s, c in sorted(per_source.items())
    }
    return report


def _duplicate_entry(group: dup.DuplicateGroup, kept: list[SourceImage], split_of: dict[int, str]) -> dict[str, Any]:
    """One duplicate group of the report: its members (file, label, split; split None
    for a copy dropped so no image is in two splits) and whether their labels differ."""
    members = [{"file": kept[i].relpath, "label": kept[i].class_name, "split": split_of.get(i)} for i in group.members]
    classes = sorted({m["label"] for m in members})
    return {
        "kind": group.kind,
        "files": [m["file"] for m in members],
        "classes": classes,
        "splits": sorted({m["split"] for m in members if m["split"] is not None}, key=SPLIT_ORDER.index),
        "members": members,
        "mixed_labels": len(classes) > 1,
    }


def _duplicate_warnings(duplicates: list[dict[str, Any]]) -> list[str]:
    """One line per kept group whose members carry different labels: the same image
    taught as two classes (or scored against the wrong one), invisible in the counts."""
    lines = []
    for group in duplicates:
        if not group["mixed_labels"] or not group["splits"]:
            continue
        kept = [m for m in group["members"] if m["split"] is not None]
        files = " = ".join(f"{m['file']} ({m['label']})" for m in kept)
        lines.append(
            f"{group['kind']} images with different labels kept in "
            f"{', '.join(group['splits'])}: {files}; check which label is right "
            "and remove the other copy from the source folder."
        )
    return lines


def _split_warnings(splits: dict[str, dict[str, int]]) -> list[str]:
    """One line per split that lacks some classes (too few images for the fractions)."""
    lines = []
    for split, counts in splits.items():
        missing = [name for name, n in counts.items() if n == 0]
        if missing:
            lines.append(
                f"the {split} split has no image of {', '.join(missing)} (too few "
                "images per class for the split fractions); its metrics will not "
                "cover every class."
            )
    return lines


class CarveFolderBuilder(FolderBuilder, skip_registration=True):
    """A folder builder whose options carve only validation (test/ is given)."""

    OPTIONS_CLASS: ClassVar[type] = CarveOptions

"""Fingerprints: of a source folder (was it changed since it was prepared?) and of
prepared data (is this the data a training run was started on?).

Source fingerprint: every file and folder under the scanned root, with its size and
modification time (nanoseconds), found by a walk that follows symlinks as the scan
does (each real folder is entered once, so links cannot loop), plus any file read from
outside the folder (a groups file), so a changed file there is noticed too. It is stored with the
prepared data: the summary (`{"files", "sha256"}`) in the preparation report, the list
in `SOURCE_FILES` next to it, so a refusal can name what was added, removed or
changed. Nothing is opened, only stat'ed, so it is recomputed every time prepared files
are reused for a manual dir. `SOURCE_FILES` also keeps a SHA-256 of every file's bytes
(:func:`content_digests`): when only modification times differ (a re-copy, a fresh
checkout, a touch), the files whose time changed are hashed again and the folder counts
as unchanged if their bytes are the same (:func:`only_times_differ`).

Data fingerprint: dataset, config (every preparation option), version, class names,
and per split the number of examples and a SHA-256 of its sorted "file name <TAB>
label <TAB> pixel digest" lines (:func:`pixel_digest` of the stored image). It
identifies the examples, their labels and their pixels: two folders whose files have
the same names but other images are other data (a run resumed on the second is refused).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrjax.data.errors import DataError

SOURCE_FILES = "source_files.json"


def source_files(root: str | os.PathLike) -> list[list]:
    """[[relpath, size, mtime_ns], ...] of every entry under root, sorted; folders end
    with "/" and have size and mtime -1 (their mtime changes with any listing).

    Real folders are walked first, then symlinked ones, each real folder once: a link
    to a folder inside the tree lists no second copy of its files (they are named by
    their real path), a link to one outside lists them under the link's name.
    """
    root = Path(root)
    entries: list[list] = []
    seen: set[tuple[int, int]] = set()
    links: list[tuple[Path, str]] = []

    def walk(directory: Path, prefix: str) -> None:
        try:
            info = directory.stat()
            children = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        if (info.st_dev, info.st_ino) in seen:
            return
        seen.add((info.st_dev, info.st_ino))
        for child in children:
            name = prefix + child.name
            try:
                is_dir = child.is_dir()  # follows symlinks, as the scan does
            except OSError:
                is_dir = False
            if is_dir:
                entries.append([name + "/", -1, -1])
                if child.is_symlink():
                    links.append((Path(child.path), name + "/"))
                else:
                    walk(Path(child.path), name + "/")
                continue
            try:
                stat = child.stat()  # the target of a symlink
            except OSError:
                stat = child.stat(follow_symlinks=False)  # broken symlink
            entries.append([name, int(stat.st_size), int(stat.st_mtime_ns)])

    if root.is_dir():
        walk(root, "")
        while links:
            walk(*links.pop(0))
    return sorted(entries)


def _digest_lines(lines: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode("utf-8", "surrogateescape"))
        digest.update(b"\n")
    return digest.hexdigest()


def source_fingerprint(
    root: str | os.PathLike, extra_files: Sequence[str | os.PathLike] = ()
) -> tuple[dict[str, Any], list[list]]:
    """({"files": number of entries, "sha256": digest of the entries}, the entries).

    extra_files: files outside the scan that preparation also reads (a groups file),
    listed as ["<absolute path>", size, mtime_ns] (-1, -1 when missing) after the tree's.
    """
    entries = source_files(root)
    for path in extra_files:
        try:
            stat = os.stat(path)
            entries.append([str(path), int(stat.st_size), int(stat.st_mtime_ns)])
        except OSError:
            entries.append([str(path), -1, -1])
    digest = _digest_lines(json.dumps(entry) for entry in entries)
    return {"files": len(entries), "sha256": digest}, entries


def _by_name(entries: Sequence[Sequence]) -> dict[str, tuple]:
    """{name: (size, mtime)} of a source's entry list."""
    return {entry[0]: tuple(entry[1:]) for entry in entries}


def describe_changes(
    old: Sequence[Sequence] | None, new: Sequence[Sequence], examples: int = 3, same: Iterable[str] = ()
) -> str:
    """'2 added (e.g. a.png, b.png); 1 removed (e.g. c.png)' between two entry lists;
    ``same``: files not to count as changed (their bytes are the same)."""
    if old is None:
        return "the list of its files was not kept, so what changed is unknown"
    before = _by_name(old)
    after = _by_name(new)
    parts = []
    same = set(same)
    for label, names in (
        ("added", sorted(set(after) - set(before))),
        ("removed", sorted(set(before) - set(after))),
        ("changed", sorted(n for n in set(before) & set(after) if before[n] != after[n] and n not in same)),
    ):
        if names:
            shown = ", ".join(names[:examples]) + (", ..." if len(names) > examples else "")
            parts.append(f"{len(names)} {label} (e.g. {shown})")
    return "; ".join(parts) or "its file list differs"


DIGEST_MAX_BYTES = 64 << 20  # larger files get no digest: a new time on them is a change


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a regular file's bytes; OSError for anything else (a FIFO, a device:
    ``decode.read_regular_file`` never blocks on them)."""
    from cxrjax.data.decode import read_regular_file

    return hashlib.sha256(read_regular_file(path)).hexdigest()


def _entry_path(root: str | os.PathLike, name: str) -> Path:
    return Path(name) if os.path.isabs(name) else Path(root) / name  # extra files are absolute


def content_digests(root: str | os.PathLike, entries: Sequence[Sequence]) -> dict[str, str]:
    """{entry name: :func:`file_digest`} of every regular file among ``entries`` up to
    :data:`DIGEST_MAX_BYTES` (folders, special and missing files are left out)."""
    out = {}
    for name, size, _ in entries:
        if name.endswith("/") or size < 0 or size > DIGEST_MAX_BYTES:
            continue
        try:
            out[name] = file_digest(_entry_path(root, name))
        except OSError:
            continue
    return out


def rewritten_in_time_only(
    root: str | os.PathLike,
    old: Sequence[Sequence] | None,
    new: Sequence[Sequence],
    digests: Mapping[str, str] | None,
) -> set[str]:
    """The files of both ``old`` (the entries kept at preparation, with their ``digests``)
    and ``new`` whose modification time alone changed: same size, and hashed again, the
    same bytes (a re-copy, a fresh checkout, a touch)."""
    if old is None or not digests:
        return set()
    before = _by_name(old)
    same = set()
    for name, size, mtime in new:
        if name not in before or name.endswith("/") or before[name] == (size, mtime) or before[name][0] != size:
            continue
        try:
            if name in digests and file_digest(_entry_path(root, name)) == digests[name]:
                same.add(name)
        except OSError:
            continue
    return same


def only_times_differ(old: Sequence[Sequence] | None, new: Sequence[Sequence], same: set[str]) -> bool:
    """Whether ``new`` lists the files of ``old`` and every entry that differs is in
    ``same`` (:func:`rewritten_in_time_only`): a re-copy, a checkout, a touch."""
    if old is None:
        return False
    before = _by_name(old)
    after = _by_name(new)
    return set(before) == set(after) and all(after[n] == before[n] or n in same for n in after)


class SourceChangedError(DataError):
    """Prepared files whose source folder changed since they were prepared."""


def pixel_digest(image: Any) -> str:
    """Short SHA-256 of a stored image's pixels (uint8 array, any shape)."""
    array = np.ascontiguousarray(np.asarray(image, np.uint8))
    return hashlib.sha256(repr(array.shape).encode() + array.tobytes()).hexdigest()[:16]


def split_digest(entries: Iterable[tuple[str, int, str]]) -> str:
    """SHA-256 of the sorted "file name <TAB> label <TAB> pixel digest" lines of one split."""
    return _digest_lines(f"{name}\t{int(label)}\t{pixels}" for name, label, pixels in sorted(entries))


def data_fingerprint(
    *,
    dataset: str,
    config: str,
    version: str,
    class_names: Sequence[str],
    splits: Mapping[str, Sequence[tuple[str, int]]],
) -> dict[str, Any]:
    """The prepared data's fingerprint (see the module docstring); JSON-serialisable.

    splits: {split: [(file name, label, pixel digest), ...]} of every stored record.
    """
    return with_class_subset(
        {
            "dataset": dataset,
            "config": config,
            "version": version,
            "class_names": list(class_names),
            "splits": {
                split: {"examples": len(pairs), "sha256": split_digest(pairs)} for split, pairs in splits.items()
            },
        },
        None,
    )


def with_class_subset(fingerprint: Mapping[str, Any], classes: Sequence[str] | None) -> dict[str, Any]:
    """The fingerprint with `class_subset` set (None: all classes) and `sha256` (of
    everything else) recomputed: a class-subset view is other data than the whole."""
    body = {k: v for k, v in fingerprint.items() if k != "sha256"}
    body["class_subset"] = list(classes) if classes is not None else None
    body["sha256"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return body

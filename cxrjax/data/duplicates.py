"""Duplicate detection: byte-identical files and near-identical images.

Why: the studies' datasets are merged from several public sources, and the same
radiograph appears more than once (sometimes in two classes). A duplicate pair split
across train and test inflates test accuracy, so duplicate groups are kept together
when splitting (`splits.stratified_group_split`) and reported.

Two tests, both cheap enough for D4's 21k images:

* identical: SHA-256 of the file bytes.
* near-identical: a 256-bit difference hash (dHash: the image shrunk to 17x16, one bit
  per horizontally adjacent pair, "is the left pixel brighter"), then confirmation on a
  32x32 thumbnail. Candidates are pairs within `max_distance` bits (default 10 of 256),
  found by a chunked, vectorised XOR + popcount over all pairs (memory bounded by the
  chunk); each candidate is kept only if the Pearson correlation of the two thumbnails
  is at least `NEAR_DUPLICATE_MIN_CORRELATION` (0.995).

Why 256 bits and a confirmation: the classic 64-bit dHash (9x8) cannot tell chest films
apart (they all look alike at 9x8 pixels); at 256 bits distinct images lie far apart
while re-encoded, resized or contrast-changed copies stay within a few bits. The
thumbnail check matters because union-find would otherwise chain merely similar images
into large false groups. Crops of more than a few percent are not caught (they change
both). The distances and correlations behind the thresholds:
docs/measurements.md#near-duplicate-thresholds.

Pairs are merged into groups with union-find (path halving, union by size).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

DHASH_SIDE = 16  # 16 x 16 comparisons = 256 bits = 4 uint64 words
DHASH_WORDS = DHASH_SIDE * DHASH_SIDE // 64
DEFAULT_MAX_DISTANCE = 10
NEAR_DUPLICATE_MIN_CORRELATION = 0.995
THUMBNAIL_SIZE = 32
_CHUNK = 256
_PAIR_CHUNK = 65536


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dhash(gray: np.ndarray) -> np.ndarray:
    """256-bit difference hash of a uint8 [H, W] image, as uint64 [4] (row-major bits)."""
    small = np.asarray(
        Image.fromarray(np.asarray(gray, np.uint8)).resize((DHASH_SIDE + 1, DHASH_SIDE), Image.Resampling.BILINEAR),
        np.int16,
    )
    bits = (small[:, :-1] > small[:, 1:]).reshape(-1)
    return np.packbits(bits.astype(np.uint8)).view(">u8").astype(np.uint64)


def thumbnail(gray: np.ndarray, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """Zero-mean, unit-norm float32 [size*size] thumbnail: dot product = correlation."""
    small = np.asarray(
        Image.fromarray(np.asarray(gray, np.uint8)).resize((size, size), Image.Resampling.BILINEAR), np.float32
    ).reshape(-1)
    small -= small.mean()
    norm = float(np.linalg.norm(small))
    return small / norm if norm > 0 else small


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distance between hash arrays [..., W] (broadcasting), as int32 [...]."""
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int32).sum(axis=-1)


def near_pairs(hashes: np.ndarray, max_distance: int, chunk: int = _CHUNK) -> np.ndarray:
    """All pairs (i < j) with hamming(hashes[i], hashes[j]) <= max_distance, int64 [K, 2].

    hashes: uint64 [N, W] (or [N] for one word). All N^2/2 pairs are compared in row
    chunks (memory O(chunk * N)): first on word 0 alone (a pair can only be within
    max_distance if that word is), then on the remaining words for the few survivors.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    if hashes.ndim == 1:
        hashes = hashes[:, None]
    n = len(hashes)
    first = np.ascontiguousarray(hashes[:, 0])
    found = []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        distance = np.bitwise_count(first[start:stop, None] ^ first[None, start:])
        close = distance <= max_distance
        # Only later items: row r (item start + r) vs column c (item start + c), c > r.
        close &= np.arange(stop - start)[:, None] < np.arange(n - start)[None, :]
        i, j = np.nonzero(close)
        if not len(i):
            continue
        i, j = i + start, j + start
        if hashes.shape[1] > 1:
            total = distance[i - start, j - start].astype(np.int32)
            total += hamming(hashes[i, 1:], hashes[j, 1:])
            keep = total <= max_distance
            i, j = i[keep], j[keep]
        if len(i):
            found.append(np.stack([i, j], axis=1))
    if not found:
        return np.zeros((0, 2), np.int64)
    return np.concatenate(found).astype(np.int64)


def confirm_pairs(
    pairs: np.ndarray, thumbnails: np.ndarray, min_correlation: float = NEAR_DUPLICATE_MIN_CORRELATION
) -> np.ndarray:
    """The pairs whose thumbnails correlate at least min_correlation (chunked)."""
    keep = []
    for start in range(0, len(pairs), _PAIR_CHUNK):
        part = pairs[start : start + _PAIR_CHUNK]
        correlation = np.einsum("kt,kt->k", thumbnails[part[:, 0]], thumbnails[part[:, 1]])
        keep.append(part[correlation >= min_correlation])
    return np.concatenate(keep) if keep else np.zeros((0, 2), np.int64)


class UnionFind:
    """Disjoint sets over 0..n-1."""

    def __init__(self, n: int):
        self.parent = np.arange(n)
        self.size = np.ones(n, np.int64)

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return int(x)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def labels(self) -> np.ndarray:
        """Group id per item: the smallest member index of its group (deterministic)."""
        roots = np.array([self.find(i) for i in range(len(self.parent))], np.int64)
        smallest = {}
        for index, root in enumerate(roots):
            smallest.setdefault(int(root), index)
        return np.array([smallest[int(r)] for r in roots], np.int64)


@dataclasses.dataclass(frozen=True)
class DuplicateGroup:
    """Items that are copies of each other. kind: "identical" if all files are
    byte-identical, else "near" (at least one pair only matched perceptually)."""

    members: tuple[int, ...]
    kind: str


def find_duplicates(
    digests: Sequence[str],
    hashes: np.ndarray,
    thumbnails: np.ndarray | None,
    *,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    min_correlation: float = NEAR_DUPLICATE_MIN_CORRELATION,
) -> tuple[np.ndarray, list[DuplicateGroup]]:
    """Groups duplicates. Returns (group id per item, groups with >= 2 members).

    hashes: uint64 [N, W] from `dhash`. max_distance < 0 disables the perceptual test
    (byte-identical files only).
    thumbnails: float32 [N, T] from `thumbnail`, or None to skip the confirmation.
    """
    n = len(digests)
    union = UnionFind(n)
    first_with_digest: dict[str, int] = {}
    for index, digest in enumerate(digests):
        if digest in first_with_digest:
            union.union(first_with_digest[digest], index)
        else:
            first_with_digest[digest] = index
    if max_distance >= 0 and n > 1:
        pairs = near_pairs(hashes, max_distance)
        if len(pairs) and thumbnails is not None:
            pairs = confirm_pairs(pairs, thumbnails, min_correlation)
        for i, j in pairs:
            union.union(int(i), int(j))
    labels = union.labels()
    members: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        members.setdefault(int(label), []).append(index)
    groups = []
    for label in sorted(members):
        group = members[label]
        if len(group) > 1:
            identical = len({digests[i] for i in group}) == 1
            groups.append(DuplicateGroup(tuple(group), "identical" if identical else "near"))
    return labels, groups

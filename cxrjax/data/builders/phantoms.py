"""`cxr_phantoms`: the synthetic default dataset (drawn by `cxrjax.data.phantoms`)."""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import os
import sys
import warnings

import numpy as np
import tensorflow_datasets as tfds

from cxrjax.data import phantoms
from cxrjax.data.builders.base import CxrBuilder, common_features, counts_by_class, mask_feature
from cxrjax.data.builders.folder import num_threads
from cxrjax.data.builders.options import PhantomDatasetOptions


class CxrPhantoms(CxrBuilder, skip_registration=True):
    """Deterministic synthetic chest radiographs with lung and lesion masks.

    Needs no manual download. Split k holds phantoms [offset_k, offset_k + num_k) of the
    stream `phantom_example(seed, index, ...)`: train, then validation, then test, so
    the splits are disjoint by construction. Duplicate detection is not run (every
    index is a distinct random draw), so the report's duplicate_groups is 0.
    Extra features: lesion_mask (all zero for Normal) and the finding's severity.
    """

    name = "cxr_phantoms"
    OPTIONS_CLASS = PhantomDatasetOptions
    DESCRIPTION = "Synthetic chest-radiograph phantoms (cxrjax.data.phantoms)."

    def _features(self):
        size = self.options.image_size
        features = common_features(size)
        features["label"] = tfds.features.ClassLabel(names=list(phantoms.CLASS_NAMES))
        features["lung_mask"] = mask_feature(size)
        features["has_lung_mask"] = tfds.features.Scalar(dtype=np.bool_)
        features["lesion_mask"] = mask_feature(size)
        features["severity"] = tfds.features.Scalar(dtype=np.float32)
        return features

    def _splits(self, dl_manager):
        del dl_manager  # nothing to download
        ranges, offset = {}, 0
        for split, count in self.options.split_sizes.items():
            ranges[split] = range(offset, offset + count)
            offset += count
        seed = self.options.seed
        labels = {split: [phantoms.phantom_label(seed, i) for i in r] for split, r in ranges.items() if len(r)}
        class_names = list(phantoms.CLASS_NAMES)
        self._report = {
            "dataset": self.name,
            "class_names": class_names,
            "splits": counts_by_class(labels, class_names),
            "skipped": [],
            "duplicate_groups": 0,
            "duplicates": [],
            "warnings": [],
            "source": "synthetic (cxrjax.data.phantoms)",
            "layout": "synthetic",
        }
        return {split: self._generate_examples(indices=r) for split, r in ranges.items() if len(r)}

    def verify_prepared(self, splits) -> None:
        """Re-draws the first stored phantom and compares pixels, so files prepared by
        an older generator (same options, different drawing code) are never used."""
        source = next((s for s in splits.values() if len(s)), None)
        if source is None:
            return
        stored = source[0]
        _, index = phantoms.parse_phantom_file_name(stored["file_name"])
        fresh = phantoms.phantom_example(self.options.seed, index, self.options.phantom_options())
        if not (np.array_equal(stored["image"], fresh["image"]) and int(stored["label"]) == int(fresh["label"])):
            raise ValueError(
                f"{self.data_path}: these phantoms were drawn by another version of "
                "cxrjax.data.phantoms (the stored image differs from a fresh draw). "
                "Prepare again with overwrite=True (--overwrite), or use another data_dir."
            )

    def _generate_examples(self, indices: range):
        seed, options = self.options.seed, self.options.phantom_options()
        for example in generate_phantoms(seed, indices, options):
            yield example["file_name"], example


def _record(seed: int, index: int, options: phantoms.PhantomOptions) -> dict:
    example = phantoms.phantom_example(seed, index, options)
    size = options.image_size
    return {
        "image": example["image"],
        "label": int(example["label"]),
        "file_name": example["file_name"],
        "original_size": np.array([size, size], np.int32),
        "lung_mask": example["lung_mask"],
        "has_lung_mask": True,
        "lesion_mask": example["lesion_mask"],
        "severity": np.float32(example.get("severity", 0.0)),
    }


def _record_chunk(seed: int, indices: list[int], options: phantoms.PhantomOptions) -> list:
    return [_record(seed, i, options) for i in indices]


# Below this many phantoms, starting worker processes costs more than it saves.
_MIN_FOR_PROCESSES = 512
_CHUNK = 64


def generate_phantoms(seed: int, indices: range, options: phantoms.PhantomOptions):
    """Records for `indices`, in order. Drawing is pure NumPy holding the GIL, so large
    requests are spread over worker processes ("spawn": safe even when the parent has
    started JAX or other threads); the result is identical either way.

    Spawned workers re-run the main script. Where they cannot (a script piped to
    ``python -``), the phantoms are drawn in this process; where a worker dies (e.g. an
    unguarded script that prepares data at import), the rest is drawn here too, with a
    warning that says how to get the workers back.
    """
    workers = num_threads()
    if workers <= 1 or len(indices) < _MIN_FOR_PROCESSES or not _main_is_importable():
        for index in indices:
            yield _record(seed, index, options)
        return
    chunks = [list(indices[i : i + _CHUNK]) for i in range(0, len(indices), _CHUNK)]
    done = 0
    try:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            window = 2 * workers  # bounded: at most this many chunks wait in memory
            pending = collections.deque(pool.submit(_record_chunk, seed, c, options) for c in chunks[:window])
            next_chunk = window
            while pending:
                records = pending.popleft().result()
                if next_chunk < len(chunks):
                    pending.append(pool.submit(_record_chunk, seed, chunks[next_chunk], options))
                    next_chunk += 1
                done += 1
                yield from records
    except concurrent.futures.process.BrokenProcessPool:
        warnings.warn(
            "cxr_phantoms: the worker processes that draw phantoms in parallel died, so the "
            f"remaining {len(chunks) - done} of {len(chunks)} chunks are drawn in this process "
            "(same images, slower). Spawned workers re-run the main script: put the script's "
            'code under `if __name__ == "__main__":` to draw in parallel.',
            RuntimeWarning,
            stacklevel=2,
        )
        for chunk in chunks[done:]:
            yield from _record_chunk(seed, chunk, options)


def _main_is_importable() -> bool:
    """Whether spawned workers can re-run ``__main__`` (no file: interactive, ``-c`` or a
    notebook, nothing to re-run; a file that does not exist: ``python -`` from stdin)."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    return path is None or os.path.exists(path)

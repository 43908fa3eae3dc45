"""`load` and `prepare`: the one way the rest of cxrjax gets a dataset.

    ds = load("cxr_phantoms", data_dir="data", options={"num_train": 500})
    ds.class_names, ds.num_classes, ds.splits["train"][0], ds.report

Preparation runs once per (dataset, options) into
`data_dir/<dataset>/<config name from the options>/<version>/` (array_record files,
TFDS metadata and `preparation_report.json`); later calls open the same files.

`classes=("COVID", "Normal")` (or `options={"classes": [...]}`) opens a class subset:
other classes dropped from every split, labels remapped to 0..k-1 in the order given
(see `subset.py`). It is a view, never a preparation option.

Prepared files are reused only while their source is what they were prepared from:
given a manual_dir, the folder's file list, sizes and mtimes must match the ones
recorded at preparation, or where only mtimes differ the files' bytes must
(`fingerprint.py`), else `SourceChangedError` says what changed
and that overwrite=True (--overwrite) prepares again. Preparation holds a per-folder
lock (`locks.py`): concurrent preparers wait for each other, then open the same data.
`ds.fingerprint` identifies the opened data (e.g. to refuse resuming a run on other
data).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from cxrjax.data.builders import DATASETS, REPORT_FILE, CxrBuilder
from cxrjax.data.builders.base import quiet_tfds
from cxrjax.data.errors import DataError
from cxrjax.data.fingerprint import (
    SourceChangedError,
    data_fingerprint,
    describe_changes,
    only_times_differ,
    pixel_digest,
    rewritten_in_time_only,
    with_class_subset,
)
from cxrjax.data.layouts import LayoutError
from cxrjax.data.locks import preparation_lock, remove_incomplete
from cxrjax.data.subset import checked_index, select_classes, split_options


class RecordSource(Sequence):
    """Random-access records of one prepared split (wraps TFDS's ArrayRecordDataSource).

    Records are dicts of NumPy arrays and Python scalars; the text features
    (`file_name`, and `source`, `group` of folder datasets) are returned as `str` (TFDS
    gives bytes). Picklable, so grain workers can use it. `label_source`, if
    given, is the same split opened without decoding any feature but the label: what
    `labels` reads (half the time of decoding every image), dropped once read.
    """

    def __init__(self, source: Any, split: str, label_source: Any = None):
        self._source = source
        self._label_source = label_source
        self.split = split
        self._labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self._source)

    @property
    def labels(self) -> np.ndarray:
        """int64[len] labels of every record, read once (one pass) and kept."""
        if self._labels is None:
            source = self._label_source if self._label_source is not None else self._source
            labels = np.empty(len(self), np.int64)
            for start in range(0, len(self), _LABEL_CHUNK):
                stop = min(start + _LABEL_CHUNK, len(self))
                records = source.__getitems__(list(range(start, stop)))
                labels[start:stop] = [int(r["label"]) for r in records]
            self._labels, self._label_source = labels, None
        return self._labels

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        return _clean(self._source[checked_index(self, index)])

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [_clean(r) for r in self._source.__getitems__([int(i) for i in indices])]

    def __repr__(self) -> str:
        return f"RecordSource(split={self.split!r}, len={len(self)})"


_LABEL_CHUNK = 1024


# Text features, returned as str (TFDS gives bytes).
TEXT_FIELDS = ("file_name", "source", "group")


def _clean(record: dict[str, Any]) -> dict[str, Any]:
    record = dict(record)
    for key in TEXT_FIELDS:
        value = record.get(key)
        if isinstance(value, bytes):
            record[key] = value.decode("utf-8")
    return record


@dataclasses.dataclass(frozen=True)
class PreparedDataset:
    """A prepared dataset opened for random access.

    name: dataset name (a key of DATASETS).
    class_names: from the data, stored with it; label i <-> class_names[i].
    splits: {"train": RecordSource, "validation": ..., "test": ...} (only non-empty ones).
    builder: the TFDS builder (data_path, info, options).
    report: the preparation report (counts, skipped files, duplicate groups, options);
      for a class subset, `splits` counts the kept classes and `class_subset` says which.
    class_subset: the classes kept (`load(..., classes=...)`), None for all classes;
      then the splits are `subset.SubsetSource`s over the prepared records.
    fingerprint: what the data is (see the property).
    """

    name: str
    class_names: list[str]
    splits: dict[str, RecordSource]
    builder: CxrBuilder
    report: dict[str, Any]
    class_subset: tuple[str, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def data_path(self) -> Path:
        return Path(self.builder.data_path)

    @property
    def options(self):
        return self.builder.options

    @functools.cached_property
    def fingerprint(self) -> dict[str, Any]:
        """Identity of this data, JSON-serialisable, for a training run to store and
        compare when it resumes (equal fingerprints: the same examples, labels, options
        and version):

            {"dataset", "config" (every preparation option), "version", "class_names"
             (of the prepared data), "splits": {split: {"examples": n, "sha256": of the
             sorted "file name<TAB>label" lines of the prepared split}},
             "class_subset": None or the kept classes of a view, "sha256": of all above}

        Written at preparation; for data prepared before fingerprints existed it is
        computed once from the records (one pass reading names and labels only).
        """
        prepared = self.report.get("fingerprint") or records_fingerprint(self.builder)
        return with_class_subset(prepared, self.class_subset)


def builder_class(name: str) -> type[CxrBuilder]:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}") from None


def get_builder(name: str, *, data_dir: str | Path, options: Any = None) -> CxrBuilder:
    """The builder for `name` with these options (nothing is prepared or read yet).

    A `classes` key in options is ignored here (a view option, see `load`)."""
    options, _ = split_options(options)
    return builder_class(name)(data_dir=Path(data_dir).expanduser(), options=options)


def prepare(
    name: str,
    *,
    data_dir: str | Path,
    manual_dir: str | Path | None = None,
    options: Any = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Prepares `name` under data_dir if needed and returns its preparation report.

    Real datasets need `manual_dir` (the user's unzipped download; see
    `DATASETS[name].MANUAL_DOWNLOAD_INSTRUCTIONS`); `cxr_phantoms` needs none.
    overwrite: prepare again even if prepared files exist for these options.
    """
    builder = get_builder(name, data_dir=data_dir, options=options)
    return _prepare(builder, manual_dir, overwrite).read_report()


def _prepare(builder: CxrBuilder, manual_dir: str | Path | None, overwrite: bool) -> CxrBuilder:
    """Prepares `builder` unless its files exist (and overwrite is False); returns the
    builder to open: `builder`, or a new one when another process prepared the data
    while this one waited for the lock (a TFDS builder reads the metadata when made).

    Reused files are checked against manual_dir (`_check_same_source`). Preparing
    holds `locks.preparation_lock` on the config folder, and under it first removes
    `incomplete.*` folders left by interrupted preparations.
    """
    needs_manual = builder.MANUAL_DOWNLOAD_INSTRUCTIONS is not None
    folder = Path(builder.data_path).parent  # data_dir/<name>/<config>/
    what = f"{builder.name} ({builder.builder_config.name})"
    if builder.is_prepared() and not overwrite:
        with preparation_lock(folder, what, wait=False) as held:
            if held:  # nobody is preparing: leftovers are stale
                remove_incomplete(folder)
        if needs_manual and manual_dir is not None:
            _check_same_source(builder, manual_dir)
        return builder
    # REUSE_CACHE_IF_EXISTS overwrites the prepared files (there is no download cache).
    mode = (
        tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
        if overwrite
        else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    )
    download_config = tfds.download.DownloadConfig(download_mode=mode)
    if needs_manual:
        if manual_dir is None:
            raise LayoutError(
                f"{builder.name} is not prepared in {builder.data_path}; pass the folder "
                f"of your download as manual_dir (--manual-dir). "
                f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        manual_path = Path(manual_dir).expanduser()
        if not manual_path.is_dir():
            raise LayoutError(
                f"{manual_path}: manual dir does not exist or is not a folder. {builder.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        download_config = dataclasses.replace(download_config, manual_dir=str(manual_path.resolve()))
    Path(builder.data_dir_root).mkdir(parents=True, exist_ok=True)
    with preparation_lock(folder, what):
        remove_incomplete(folder)
        if not overwrite and builder.is_prepared():  # by the process we waited for
            builder = type(builder)(data_dir=builder.data_dir_root, options=builder.options)
            if needs_manual and manual_dir is not None:
                _check_same_source(builder, manual_dir)
            return builder
        # Nothing is downloaded; a throw-away download dir keeps data_dir free of TFDS's
        # empty downloads/ folder.
        with quiet_tfds(), tempfile.TemporaryDirectory(prefix="cxrjax-tfds-") as scratch:
            # The file format (array_record) was set when the builder was made.
            builder.download_and_prepare(download_dir=scratch, download_config=download_config)
    return builder


def _check_same_source(builder: CxrBuilder, manual_dir: str | Path) -> None:
    """Refuses to reuse files prepared from another folder under the same options, or
    from the same folder since changed (files added, removed, resized or rewritten; a
    file whose time alone changed, same bytes, is no change): reusing them would
    silently train on what the folder held before."""
    report = builder.read_report()
    source = report.get("source")
    requested = Path(manual_dir).expanduser()
    requested = requested.resolve() if requested.exists() else requested
    # The scan may have descended into a single wrapper folder, so accept either.
    if source and not (Path(source) == requested or requested in Path(source).parents):
        raise ValueError(
            f"{builder.data_path} was prepared from {source}, not from {requested}. "
            "Use another data_dir for this folder, omit manual_dir to use the prepared "
            "files, or prepare with overwrite=True (--overwrite) to replace them."
        )
    fix = (
        "Prepare again with overwrite=True (--overwrite) to replace the prepared "
        "files, or omit manual_dir (--manual-dir) to use them as they are."
    )
    fingerprint = builder.source_fingerprint(source)
    if fingerprint is None:  # a builder that reads no folder
        return
    recorded = report.get("source_fingerprint")
    if recorded is None:
        raise SourceChangedError(
            f"{builder.data_path} was prepared by an older cxrjax that did not record what "
            f"{source} held, so whether the folder changed since cannot be checked. {fix}"
        )
    current, entries = fingerprint
    if current["sha256"] != recorded["sha256"]:
        kept, digests = builder.read_source_files()
        same = rewritten_in_time_only(source, kept, entries, digests)  # hashes those files once
        if same and only_times_differ(kept, entries, same):
            return  # only modification times differ (a re-copy, a checkout): the same bytes
        changes = describe_changes(kept, entries, same=same)
        raise SourceChangedError(
            f"{builder.data_path} was prepared from {source}, which has changed since "
            f"({recorded['files']} entries then, {current['files']} now: {changes}); the "
            f"prepared files and their report describe the folder as it was. {fix}"
        )


def load(
    name: str,
    *,
    data_dir: str | Path,
    manual_dir: str | Path | None = None,
    options: Any = None,
    classes: Sequence[str] | None = None,
) -> PreparedDataset:
    """Prepares `name` if needed (with progress bars), then opens every split for
    random access (array_record through TFDS's data source; no TensorFlow).

    classes (or options["classes"]): keep only these classes, relabelled 0..k-1 in this
    order (`subset.select_classes`); an unknown name raises ValueError listing the
    dataset's class names. The preparation is the same as without it.
    """
    options, classes = split_options(options, classes)
    builder = get_builder(name, data_dir=data_dir, options=options)
    builder = _prepare(builder, manual_dir, overwrite=False)
    return select_classes(open_prepared(builder), classes)


def open_prepared(builder: CxrBuilder) -> PreparedDataset:
    """Opens an already prepared builder."""
    labels_only = {name: tfds.decode.SkipDecoding() for name in builder.info.features.keys() if name != "label"}
    with quiet_tfds():
        sources = builder.as_data_source()
        label_sources = builder.as_data_source(decoders=labels_only)
    class_names = list(builder.info.features["label"].names)
    report = builder.read_report()
    if report.get("class_names") and report["class_names"] != class_names:
        raise ValueError(
            f"{builder.data_path}: class names in the report "
            f"{report['class_names']} differ from the stored features "
            f"{class_names}; the folder is inconsistent, prepare it again."
        )
    splits = {str(split): RecordSource(source, str(split), label_sources[split]) for split, source in sources.items()}
    order = {"train": 0, "validation": 1, "test": 2}
    splits = dict(sorted(splits.items(), key=lambda kv: order.get(kv[0], 3)))
    builder.verify_prepared(splits)
    return PreparedDataset(name=builder.name, class_names=class_names, splits=splits, builder=builder, report=report)


def records_fingerprint(builder: CxrBuilder) -> dict[str, Any]:
    """`PreparedDataset.fingerprint` (without class subset) computed from the stored
    records: one pass over every split, decoding file names, labels and images only."""
    keep = ("file_name", "label", "image")
    decoders = {name: tfds.decode.SkipDecoding() for name in builder.info.features if name not in keep}
    with quiet_tfds():
        sources = builder.as_data_source(decoders=decoders)
    splits = {}
    for split, source in sources.items():
        pairs = []
        for start in range(0, len(source), _LABEL_CHUNK):
            records = source.__getitems__(list(range(start, min(start + _LABEL_CHUNK, len(source)))))
            pairs += [(_clean(r)["file_name"], int(r["label"]), pixel_digest(r["image"])) for r in records]
        splits[str(split)] = pairs
    return data_fingerprint(
        dataset=builder.name,
        config=builder.builder_config.name,
        version=str(builder.version),
        class_names=list(builder.info.features["label"].names),
        splits=splits,
    )


def prepared_reports(name: str, data_dir: str | Path) -> list[dict[str, Any]]:
    """Reports of every prepared configuration of `name` under data_dir (any options),
    of the builder's current version only: files of an older version (other features)
    are never opened by this code, so they do not count as prepared."""
    cls = builder_class(name)
    root = Path(data_dir).expanduser() / cls.name
    reports = []
    for path in sorted(root.glob(f"*/{cls.VERSION}/{REPORT_FILE}")):
        try:
            reports.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return reports


def load_prepared(
    name: str, *, data_dir: str | Path, options: Mapping[str, Any] | None = None, classes: Sequence[str] | None = None
) -> PreparedDataset:
    """Opens a prepared dataset without preparing anything.

    options None: the default configuration if prepared, else the only prepared one;
    with several prepared configurations, options must say which. classes: as in `load`.
    """
    options, classes = split_options(options, classes)
    if not options and options is not None and classes is not None:
        options = None  # {"classes": [...]} alone selects no preparation
    if options is not None:
        builder = get_builder(name, data_dir=data_dir, options=options)
    else:
        builder = get_builder(name, data_dir=data_dir)
        if not builder.is_prepared():
            reports = prepared_reports(name, data_dir)
            if len(reports) != 1:
                configs = [r.get("config") for r in reports]
                raise LayoutError(
                    f"{name} is not prepared with default options under {data_dir}"
                    + (
                        f"; prepared configurations: {configs}. Pass the options of one."
                        if configs
                        else f"; prepare it first (python -m cxrjax.data prepare {name} --data-dir {data_dir} ...)."
                    )
                )
            builder = get_builder(name, data_dir=data_dir, options=reports[0]["options"])
    if not builder.is_prepared():
        raise LayoutError(
            f"{name} is not prepared in {builder.data_path}; prepare it first "
            f"(python -m cxrjax.data prepare {name} --data-dir {data_dir} ...)."
        )
    return select_classes(open_prepared(builder), classes)

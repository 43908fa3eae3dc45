"""What every cxrjax TFDS builder shares: config from options, TF-free features, report.

Choices that hold for all builders, and why:

* `skip_registration=True`: builders are listed explicitly in `cxrjax.data.DATASETS`;
  importing cxrjax never adds names to TFDS's global registry (and never collides with
  TFDS's own datasets).
* array_record files: random access for grain (`as_data_source`) without TensorFlow.
* Features are only `Tensor`/`Scalar`/`ClassLabel`/`Text`, whose encoding and decoding
  are pure NumPy. TFDS's `Image` feature would call TensorFlow to encode PNGs.
  Images are raw uint8 [S, S, 1] bytes: zlib saves only ~15% on noisy radiographs
  and would cost ~2.5 ms per 256 px image to write and more to every read. Masks are
  zlib-compressed (binary masks shrink 30-80x, in a fraction of a millisecond).
* The BuilderConfig name encodes every preparation option (see `options.py`).
* A preparation report (per-split per-class counts, skipped files with reasons,
  duplicate groups, warnings, the data's fingerprint and, for a manual download, the
  source folder's) is written as `preparation_report.json` inside the prepared
  directory, with the source's file list (`fingerprint.SOURCE_FILES`). Both are written
  into TFDS's temporary directory before the final rename, so a prepared dataset
  always has its report.
* The data fingerprint is computed from the (file name, label) of every example as
  TFDS writes it (`_split_generators` wraps the subclass's `_splits`), so it describes
  what was stored, whatever the builder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from cxrjax.data.builders.options import PreparationOptions, make_options
from cxrjax.data.fingerprint import SOURCE_FILES, data_fingerprint, pixel_digest

REPORT_FILE = "preparation_report.json"
FILE_FORMAT = "array_record"


@dataclasses.dataclass(eq=False)
class CxrBuilderConfig(tfds.core.BuilderConfig):
    """A TFDS BuilderConfig carrying the preparation options it was named after."""

    options: Any = None


@contextlib.contextmanager
def quiet_tfds():
    """Silences TFDS's absl INFO/WARNING chatter ("Using custom data configuration" on
    every construction, since configs are made from options rather than predefined)."""
    logger = logging.getLogger("absl")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def image_feature(size: int) -> tfds.features.Tensor:
    """uint8 [size, size, 1], stored as raw bytes (see the module docstring)."""
    return tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES)


def mask_feature(size: int) -> tfds.features.Tensor:
    """uint8 {0, 255} [size, size, 1], zlib-compressed."""
    return tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB)


def common_features(size: int) -> dict[str, tfds.features.FeatureConnector]:
    """image, label (names set from the data), source file name, original (h, w)."""
    return {
        "image": image_feature(size),
        "label": tfds.features.ClassLabel(),
        "file_name": tfds.features.Text(),
        "original_size": tfds.features.Tensor(shape=(2,), dtype=np.int32),
    }


class CxrBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the cxrjax builders. Subclasses set name, OPTIONS_CLASS, _features() and
    _splits(dl_manager) (returns {split: generator of (key, example)} and fills
    self._report)."""

    # Bump whenever features, decoding, hashing or splitting change: prepared folders
    # are keyed by it, and TFDS decodes stored records with the *current* features.
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    OPTIONS_CLASS: ClassVar[type[PreparationOptions]] = PreparationOptions
    DESCRIPTION: ClassVar[str] = ""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """The file defining the builder.

        TFDS 4.9.10's own lookup needs `importlib_resources` (a backport TFDS declares
        only for Python < 3.9) for builders living in an installed package, and fails
        with ModuleNotFoundError without it; `inspect.getfile` is all it needs here.
        """
        return epath.Path(inspect.getfile(cls))

    def __init__(self, *, data_dir: str | Path, options: Any = None, config: CxrBuilderConfig | None = None, **kwargs):
        # `config` is how TFDS re-creates a builder when unpickling it (grain worker
        # processes receive the data source, which holds the builder's info).
        if config is None:
            opts = make_options(self.OPTIONS_CLASS, options, self.name)
            config = CxrBuilderConfig(
                name=opts.config_name(), options=opts, description=f"{self.name} prepared with {opts.to_dict()}"
            )
        elif options is not None or not isinstance(config, CxrBuilderConfig):
            raise TypeError(f"{type(self).__name__}: pass options, not a TFDS config")
        self._report: dict[str, Any] = {}
        self._written: dict[str, list[tuple[str, int]]] = {}
        self._source_files: list | None = None
        self._source_digests: dict[str, str] | None = None  # fingerprint.content_digests
        with quiet_tfds():
            super().__init__(data_dir=str(data_dir), config=config, file_format=FILE_FORMAT, **kwargs)

    def is_prepared(self) -> bool:
        with quiet_tfds():  # TFDS warns for every config folder without dataset_info.json
            return super().is_prepared()

    @property
    def options(self) -> PreparationOptions:
        return self.builder_config.options

    @property
    def report_path(self) -> Path:
        return Path(self.data_path) / REPORT_FILE

    def _features(self) -> dict[str, tfds.features.FeatureConnector]:
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(self._features()),
            homepage="https://github.com/",
            disable_shuffling=False,
        )

    def _splits(self, dl_manager) -> dict[str, Any]:
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        generators = self._splits(dl_manager)
        self._written = {split: [] for split in generators}
        return {split: self._tallied(split, examples) for split, examples in generators.items()}

    def _tallied(self, split: str, examples):
        """The examples, unchanged, noting each one's (file name, label, pixel digest) as it is written."""
        written = self._written[split]
        for key, example in examples:
            written.append((str(example["file_name"]), int(example["label"]), pixel_digest(example["image"])))
            yield key, example

    def _download_and_prepare(self, dl_manager, download_config) -> None:
        super()._download_and_prepare(dl_manager, download_config)
        # self.data_path is TFDS's temporary directory here; it is renamed to the final
        # directory only after this returns, together with the report.
        self._report.setdefault("dataset", self.name)
        self._report["config"] = self.builder_config.name
        self._report["version"] = str(self.version)
        self._report["options"] = self.options.to_dict()
        self._report["fingerprint"] = data_fingerprint(
            dataset=self.name,
            config=self.builder_config.name,
            version=str(self.version),
            class_names=list(self.info.features["label"].names),
            splits=self._written,
        )
        self.report_path.write_text(json.dumps(self._report, indent=1, sort_keys=False))
        if self._source_files is not None:
            kept = {"source": self._report.get("source"), "entries": self._source_files, "sha256": self._source_digests}
            (Path(self.data_path) / SOURCE_FILES).write_text(json.dumps(kept))

    def source_fingerprint(self, root: str | Path) -> tuple[dict[str, Any], list] | None:
        """(summary, entries) of a manual-download folder as `fingerprint.source_fingerprint`
        computes it; None for builders that read no folder."""
        return None

    def read_source_files(self) -> tuple[list | None, dict[str, str] | None]:
        """The source's file list saved when this dataset was prepared, and the SHA-256 of
        each file (``fingerprint.content_digests``); None for what was not kept (digests:
        prepared by a cxrjax that kept none)."""
        try:
            kept = json.loads((Path(self.data_path) / SOURCE_FILES).read_text())
        except (OSError, ValueError):
            return None, None
        if not isinstance(kept, dict):
            return None, None
        entries, digests = kept.get("entries"), kept.get("sha256")
        return (entries if isinstance(entries, list) else None), (digests if isinstance(digests, dict) else None)

    def verify_prepared(self, splits: dict[str, Any]) -> None:
        """Checks opened sources still match what the code would prepare now (raises
        ValueError if not). Default: nothing to check."""

    def read_report(self) -> dict[str, Any]:
        """The saved preparation report of a prepared dataset."""
        try:
            return json.loads(self.report_path.read_text())
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f"{self.report_path}: preparation report missing; the folder "
                f"{self.data_path} was not made by cxrjax. Delete it and prepare again."
            ) from error


def counts_by_class(labels_by_split: dict[str, list[int]], class_names: list[str]) -> dict[str, dict[str, int]]:
    """{split: {class name: count}} with every class listed (zeros included)."""
    counts = {}
    for split, labels in labels_by_split.items():
        histogram = np.bincount(np.asarray(labels, np.int64), minlength=len(class_names))
        counts[split] = {name: int(histogram[i]) for i, name in enumerate(class_names)}
    return counts

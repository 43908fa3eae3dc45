"""Preparation options of each builder, and the directory name derived from them.

Every option changes the prepared files, so every option is part of the TFDS
BuilderConfig name, i.e. of the directory the files live in:
`DATA_DIR/<dataset>/<config name>/<version>/`. Changing any option therefore prepares
into a new directory instead of silently reusing files made with other options.
The grouping options (`groups_file`, `split_by`) appear in the name only when set
(the groups file as a digest of its absolute path, which may hold any characters), so
names of preparations without them stay as they were; the file's content is covered by
the source fingerprint (a changed file is noticed like a changed folder).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar

from cxrjax.data.duplicates import DEFAULT_MAX_DISTANCE
from cxrjax.data.phantoms import PhantomOptions

# Short keys for the config name; any field not listed uses its own name.
_ABBREVIATIONS = {
    "image_size": "s",
    "validation_fraction": "val",
    "test_fraction": "test",
    "near_duplicate_distance": "dup",
    "num_train": "train",
    "num_validation": "val",
    "num_test": "test",
    "shortcut_marker": "marker",
    "shortcut_strength": "strength",
    "severity_range": "severity",
    "noise_std": "noise",
    "groups_file": "groups",
    "split_by": "by",
}
# Fields left out of the config name while they hold their default.
_NAMED_WHEN_SET = ("groups_file", "split_by")
SPLIT_BY = ("example", "group", "source")


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return "-".join(_format(v) for v in value)
    return str(value)


@dataclasses.dataclass(frozen=True)
class PreparationOptions:
    """Options shared by every builder.

    image_size: side of the square uint8 images that are stored (default 256). The
      input pipeline resizes again to each model's input size; 256 keeps every model of
      the studies (32..224 px) a downscale.
    seed: seeds everything random in preparation (splits; phantom content).
    """

    image_size: int = 256
    seed: int = 0

    def __post_init__(self):
        if not 8 <= int(self.image_size) <= 4096:
            raise ValueError(f"image_size must be in [8, 4096], got {self.image_size}")
        if int(self.seed) < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    def config_name(self) -> str:
        """Directory-safe name encoding every field, e.g. 's256_seed0_val0.2_test0.1_dup4'."""
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _NAMED_WHEN_SET and value == f.default:
                continue
            if f.name == "groups_file":
                value = hashlib.sha256(str(value).encode("utf-8", "surrogateescape")).hexdigest()[:10]
            parts.append(f"{_ABBREVIATIONS.get(f.name, f.name)}{_format(value)}")
        return "_".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass(frozen=True)
class CarveOptions(PreparationOptions):
    """For folders whose test split is given (DP): validation is carved from train/.

    validation_fraction: share of train/ moved to validation (S3: 20%).
    near_duplicate_distance: max Hamming distance of two 256-bit dHashes for a
      near-duplicate candidate (see `cxrjax.data.duplicates`); -1 = byte-identical only.
    groups_file: CSV naming each image's group, e.g. its patient (format:
      `cxrjax.data.provenance.GROUPS_FORMAT`); each group stays inside one split, as
      duplicate groups do. Stored as an absolute path. None: no groups.
    split_by: "example" (default): stratified by class, keeping duplicate groups (and
      the groups file's groups) whole; "group": the same, but a groups_file is required
      (a run that asks for patient-wise splits never silently gets example-wise ones);
      "source": whole sources (D4's metadata, or the groups file's source column) go to
      train/validation/test, not stratified, aiming at the fractions by example count,
      at least one source per split (images without a source form one source, and a
      duplicate or group spanning two sources joins them): leave-sources-out
      evaluation. The report names which sources went where.
    """

    validation_fraction: float = 0.2
    near_duplicate_distance: int = DEFAULT_MAX_DISTANCE
    groups_file: str | None = None
    split_by: str = "example"

    def __post_init__(self):
        super().__post_init__()
        if self.groups_file is not None:
            if not isinstance(self.groups_file, (str, PathLike)) or not str(self.groups_file).strip():
                raise ValueError(f"groups_file must be the path of a CSV file, got {self.groups_file!r}")
            object.__setattr__(self, "groups_file", str(Path(self.groups_file).expanduser().resolve()))
        if self.split_by not in SPLIT_BY:
            raise ValueError(f"split_by must be one of {list(SPLIT_BY)}, got {self.split_by!r}")
        if self.split_by == "group" and self.groups_file is None:
            raise ValueError('split_by="group" needs groups_file (a CSV naming each image\'s group, e.g. its patient)')
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if not -1 <= int(self.near_duplicate_distance) <= 256:
            raise ValueError(f"near_duplicate_distance must be in [-1, 256], got {self.near_duplicate_distance}")


@dataclasses.dataclass(frozen=True)
class SplitOptions(CarveOptions):
    """For folders without a given split (D4, D3, image_folder): train/validation/test
    fractions of the whole (default 70/20/10, as S4; S0's 80/20 is test_fraction=0).
    For an image_folder that already has train/ but no test/, both are carved from it.
    """

    test_fraction: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                "validation_fraction + test_fraction must leave a train split, "
                f"got {self.validation_fraction} + {self.test_fraction}"
            )

    @property
    def fractions(self) -> dict[str, float]:
        train = 1.0 - self.validation_fraction - self.test_fraction
        return {"train": train, "validation": self.validation_fraction, "test": self.test_fraction}


_DRAWING = PhantomOptions()  # defaults of the drawing options, documented there


@dataclasses.dataclass(frozen=True)
class PhantomDatasetOptions(PreparationOptions):
    """The synthetic dataset: split sizes plus `cxrjax.data.phantoms.PhantomOptions`
    (the drawing options below take their defaults, meaning and checks from there).

    Split k holds phantoms with indices [offset_k, offset_k + num_k) of one seeded
    stream (train first), so splits never share an image and growing a later split
    leaves the earlier ones unchanged. Classes are balanced per block of 4 indices.
    """

    num_train: int = 2000
    num_validation: int = 400
    num_test: int = 400
    shortcut_marker: bool = _DRAWING.shortcut_marker
    shortcut_strength: float = _DRAWING.shortcut_strength
    severity_range: tuple[float, float] = _DRAWING.severity_range
    noise_std: float = _DRAWING.noise_std

    def __post_init__(self):
        super().__post_init__()
        if int(self.num_train) < 1 or int(self.num_validation) < 0 or int(self.num_test) < 0:
            raise ValueError(
                "need num_train >= 1, num_validation >= 0, num_test >= 0; got "
                f"{self.num_train}, {self.num_validation}, {self.num_test}"
            )
        # Checks the drawing options now rather than when preparation starts.
        object.__setattr__(self, "severity_range", self.phantom_options().severity_range)

    def phantom_options(self) -> PhantomOptions:
        """How this dataset's images are drawn."""
        drawing = {f.name: getattr(self, f.name) for f in dataclasses.fields(PhantomOptions)}
        return PhantomOptions(**drawing)

    @property
    def split_sizes(self) -> dict[str, int]:
        return {"train": int(self.num_train), "validation": int(self.num_validation), "test": int(self.num_test)}


OptionsT = TypeVar("OptionsT", bound=PreparationOptions)


def make_options(cls: type[OptionsT], options: OptionsT | Mapping[str, Any] | None, dataset: str) -> OptionsT:
    """Options from None (defaults), an instance, or a dict (unknown keys are an error)."""
    if options is None:
        return cls()
    if isinstance(options, cls):
        return options
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        options = dataclasses.asdict(options)
    if not isinstance(options, Mapping):
        raise TypeError(f"{dataset} options must be a dict or {cls.__name__}, got {type(options).__name__}")
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {dataset}; valid options: {valid}")
    return cls(**dict(options))

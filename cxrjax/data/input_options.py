"""The input-pipeline options shared by `cxrjax.data.InputConfig` and
`cxrjax.train.TrainConfig` (which stores them and hands them on), declared once.

Pure Python (no grain, JAX or TFDS), so `cxrjax.train.config` can import it cheaply.
Each class validates them in its own way: InputConfig strictly, when a pipeline is made.
"""

from __future__ import annotations

from dataclasses import dataclass

NORMALIZATIONS = ("unit", "half", "dataset")


@dataclass(frozen=True, kw_only=True)
class InputOptions:
    """normalization: "unit" -> x in [0, 1] (S0, S1); "half" -> (x - 0.5) / 0.5 (S3);
        "dataset" -> (x - mean) / std with the train split's pixel mean/std (S2's
        feature-wise centring and std normalisation), see `dataset_statistics`.
    hflip, rotate_degrees, zoom, brightness: training augmentations, each off by
        default; see `cxrjax.data.augment` for their exact meaning. Rotation is uniform
        in [-rotate_degrees, rotate_degrees]; zoom and brightness uniform in (lo, hi).
    balanced_sampling: draw each training epoch with replacement, with probability
        inversely proportional to the class frequency, so classes are equally likely
        (an alternative to class-weighted losses, see `class_weights`).
    num_workers: worker processes for `make_iterator` (0 = in the main process).
    """

    normalization: str = "unit"
    hflip: bool = False
    rotate_degrees: float = 0.0
    zoom: tuple[float, float] | None = None
    brightness: tuple[float, float] | None = None
    balanced_sampling: bool = False
    num_workers: int = 0

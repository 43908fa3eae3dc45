"""The input-pipeline options shared by `cxrjax.data.InputConfig` and
`cxrjax.train.TrainConfig` (which stores them and hands them on), declared once.

Pure Python (no grain, JAX or TFDS), so `cxrjax.train.config` can import it cheaply.
Each class validates them in its own way: InputConfig strictly, when a pipeline is made;
the checks of the range and box options that both need are :func:`range_problem` and
:func:`box_problem` here.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

NORMALIZATIONS = ("unit", "half", "dataset", "per_image")

# (lo, hi) factor ranges, drawn uniformly per training example: 0 < lo <= hi.
RANGE_OPTIONS = ("zoom", "brightness", "contrast", "gamma")
MAX_TRANSLATE = 0.5  # translate: at most half the side
MAX_BORDER_ERASE = 0.5  # border_erase: each strip below half the side, so the centre survives


@dataclass(frozen=True, kw_only=True)
class InputOptions:
    """normalization: "unit" -> x in [0, 1] (S0, S1); "half" -> (x - 0.5) / 0.5 (S3);
        "dataset" -> (x - mean) / std with the train split's pixel mean/std (S2's
        feature-wise centring and std normalisation), see `dataset_statistics` (the
        stored images' statistics, before any crop_box); "per_image" -> each image
        standardised by its own mean and std, (x - mean_i) / max(std_i, 1/255), after
        every augmentation, in every split (training, evaluation, predict, explain): it
        removes exposure and window differences between sources (issue 17).
    crop_box: (top, bottom, left, right) fractions of the stored image's height and width,
        or None: every image of every split (train, evaluation, predict, explain) is cut
        to rows [round(top H), round(bottom H)) and columns [round(left W), round(right W))
        -- the rounding of `cxrjax.explain.mask_free.region_keep_masks`, so the probe's
        thorax box (0.15, 0.90, 0.15, 0.85) crops exactly its "center_only" region --
        before the resize to the model input (a non-square box is stretched to the
        square, as `augment.resize` does with non-square images). "Training on the thorax
        box": the model never sees the border, collimation or corner markers.
    hflip, rotate_degrees, zoom, translate: training geometry, one affine resampling
        (see `cxrjax.data.augment`). Rotation uniform in [-rotate_degrees,
        rotate_degrees]; zoom uniform in (lo, hi); translate: a shift of the content by
        dx, dy each uniform in [-translate, translate] times the side (at most 0.5).
    brightness, contrast, gamma: training intensity jitter on the [0, 1] values, in that
        order, each factor uniform in (lo, hi): x * b (clipped), m + c (x - m) with m the
        image's mean (clipped), x ** g.
    random_erasing: probability that one rectangle of each training image (2-20% of the
        area, aspect ratio log-uniform in 0.3-3.3: Zhong et al. 2017, torchvision's
        RandomErasing defaults) is blanked.
    border_erase: max fraction f; each of the four border strips of a training image is
        blanked with its own random width, uniform in [0, f] of the side: against
        collimation edges, burnt-in text and corner markers (below 0.5).
        Blanked pixels (random_erasing and border_erase) get the mean of the image's
        pixels that are kept, the fill of the shortcut probes (cxrjax.explain.probes):
        no new intensity appears, a probe's blanked image looks like a training image,
        and the same rectangle gives the same pixels on the host and the device paths
        (noise from two generators could only be compared in distribution).
    balanced_sampling: draw each training epoch with replacement, with probability
        inversely proportional to the class frequency, so classes are equally likely
        (an alternative to class-weighted losses, see `class_weights`).
    num_workers: worker processes for `make_iterator` (0 = in the main process).
    Every augmentation is off by default; the order of operations is in
    `cxrjax.data.augment`.
    """

    normalization: str = "unit"
    hflip: bool = False
    rotate_degrees: float = 0.0
    zoom: tuple[float, float] | None = None
    brightness: tuple[float, float] | None = None
    balanced_sampling: bool = False
    num_workers: int = 0
    translate: float = 0.0
    contrast: tuple[float, float] | None = None
    gamma: tuple[float, float] | None = None
    random_erasing: float = 0.0
    border_erase: float = 0.0
    crop_box: tuple[float, float, float, float] | None = None


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def range_problem(name: str, value: Any) -> str | None:
    """What is wrong with a (lo, hi) factor range (:data:`RANGE_OPTIONS`), or None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_finite(v) for v in value):
        if 0 < value[0] <= value[1]:
            return None
    return f"{name} must be None or [lo, hi] with finite 0 < lo <= hi, got {value!r} (e.g. --set {name}=[0.9,1.1])"


def box_problem(value: Any) -> str | None:
    """What is wrong with a crop_box (top, bottom, left, right), or None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and len(value) == 4 and all(_finite(v) for v in value):
        top, bottom, left, right = value
        if 0 <= top < bottom <= 1 and 0 <= left < right <= 1:
            return None
    return (
        f"crop_box must be None or 4 fractions top,bottom,left,right with 0 <= top < bottom <= 1 and "
        f"0 <= left < right <= 1, got {value!r} (e.g. --crop-box 0.15,0.90,0.15,0.85)"
    )


def fraction_problem(name: str, value: Any, upper: float, *, inclusive: bool) -> str | None:
    """What is wrong with a fraction in [0, upper] (or [0, upper)), or None."""
    if _finite(value) and 0 <= value and (value <= upper if inclusive else value < upper):
        return None
    return f"{name} must be a number in [0, {upper}{']' if inclusive else ')'}, got {value!r}"

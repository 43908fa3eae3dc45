"""The mask-free shortcut probe: the model on fixed regions of the image, for any dataset.

The lung-masked probe (:mod:`cxrjax.explain.probes`) needs lung masks, which most
datasets lack (image folders, D4's development sample). This probe asks the same
question with a fixed region instead of a per-image mask: the model is evaluated on

- ``center_blanked``: the central thorax box blanked (everything else kept);
- ``center_only``: only the thorax box kept (everything outside it blanked);
- ``border_only``: only the outer border strip kept (everything inside it blanked),

next to the full images. Blanked pixels get the mean of the kept pixels of the same
image, and blanking happens on the stored uint8 image before the run's own eval
pipeline, exactly as in the lung-masked probe (its module docstring says why that fill;
the same :class:`~cxrjax.explain.probes.MaskedSource` wrapper and the same binomial
test and decision rule, :func:`~cxrjax.explain.probes.shortcut_case`, are used).

The region is given as fractions of the image's height (top, bottom) and width (left,
right), so it means the same at any stored size. The default, rows 15-90% and columns
15-85% (:data:`DEFAULT_THORAX_BOX`), is chosen from two sources: it is the box the
issue's authors blanked on held-back D4 images, and it matches the phantoms' lung masks
(their bounding boxes over a few hundred phantoms, :func:`lung_mask_bounding_boxes`):
the box holds the bulk of every phantom's lung fields, with only the lungs' outermost
rims outside it, while the phantoms' corner shortcut markers stay outside it (only the
first rows of the bottom markers reach into the box's lowest rows). A box grown to the
phantoms' largest lungs would swallow the bottom markers and meet the border strip, so
the probe could no longer tell a marker from a lung. The measured boxes are
in docs/measurements.md#mask-free-probe-region; ``--thorax-box`` and ``--border``
change the region.

The border strip (default 8% of the side, :data:`DEFAULT_BORDER`) is where collimation
edges, burnt-in text and the frame of the detector sit; a model that is well above
chance on it alone reads the acquisition, not the patient.

A model trained with ``crop_box`` (``cxrjax.data.input_options.InputOptions``) sees only
that box of every image, and the probe's regions stay in ORIGINAL-image coordinates:
blanking happens on the stored image, then the run's own eval pipeline crops it. So the
probe asks "what does the model read inside its crop", and the parts of a region
outside the crop are never seen. With the crop equal to the thorax box (the default
box, 0.15,0.90,0.15,0.85), ``center_only`` is exactly the full input and
``center_blanked`` / ``border_only`` are a constant image (the fill): a "reads the lungs"
verdict then holds by construction (the model cannot read the border: it never sees
it), not as a finding; a thorax box inside the crop still tests the crop's own margin.
The report says so (``crop_box``, ``crop_note``).

Verdict (:func:`mask_free_report`), with the probes' thresholds:
- flagged ("shortcut") when the accuracy with the thorax box blanked is significantly
  above the majority rate (one-sided binomial p < ``probes.SIGNIFICANCE``) AND retains
  >= ``probes.SHORTCUT_RETAINED`` of the full images' above-chance accuracy: the model
  reads something else (markers, borders, collimation, patient size);
- "partial_shortcut" when it is significant but retains only >= ``probes.PARTIAL_RETAINED``
  (not flagged);
- "reads_lungs" when the blanked accuracy falls to chance and the thorax box alone
  keeps >= :data:`READS_LUNGS_RETAINED` of it (close to the full images);
- "unconfirmed" when the blanked accuracy falls to chance but the box alone keeps less;
- "inconclusive" when the model is not significantly above the majority rate at all.
"""

from __future__ import annotations

import argparse
from typing import Any, Mapping, Sequence

import numpy as np

from cxrjax.explain import probes

CENTER_BLANKED = "center_blanked"  # the thorax box blanked, everything else kept
CENTER_ONLY = "center_only"  # only the thorax box kept
BORDER_ONLY = "border_only"  # only the outer border strip kept
REGION_MODES = (CENTER_BLANKED, CENTER_ONLY, BORDER_ONLY)
FULL = "full"

DEFAULT_THORAX_BOX = (0.15, 0.90, 0.15, 0.85)  # (top, bottom, left, right) fractions; see the module doc
DEFAULT_BORDER = 0.08  # border strip width, a fraction of each side
READS_LUNGS_RETAINED = 0.8  # "reads the lungs": the box alone keeps >= 80% of the above-chance accuracy


def check_region(
    box: Sequence[float] = DEFAULT_THORAX_BOX, border: float = DEFAULT_BORDER
) -> tuple[tuple[float, float, float, float], float]:
    """(box, border) as floats, or ValueError saying what is wrong with them."""
    box = tuple(float(v) for v in box)
    if len(box) != 4:
        raise ValueError(f"the thorax box needs 4 fractions top,bottom,left,right; got {len(box)}")
    top, bottom, left, right = box
    if not (0.0 <= top < bottom <= 1.0 and 0.0 <= left < right <= 1.0):
        raise ValueError(
            f"the thorax box {box} must satisfy 0 <= top < bottom <= 1 and 0 <= left < right <= 1 "
            f"(fractions of the image height and width), e.g. {','.join(map(str, DEFAULT_THORAX_BOX))}"
        )
    border = float(border)
    if not 0.0 < border < 0.5:
        raise ValueError(f"the border strip width must be a fraction in (0, 0.5) of the image side, got {border}")
    return box, border  # type: ignore[return-value]


def region_keep_masks(
    height: int, width: int, box: Sequence[float] = DEFAULT_THORAX_BOX, border: float = DEFAULT_BORDER
) -> dict[str, np.ndarray]:
    """{mode: bool [height, width]}: the pixels each mode KEEPS (the rest is blanked).

    The box spans rows [round(top * H), round(bottom * H)) and columns [round(left * W),
    round(right * W)); the border strip is the pixels within max(1, round(border * side))
    of an edge.
    """
    box, border = check_region(box, border)
    top, bottom, left, right = box
    rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]
    center = (
        (rows >= round(top * height))
        & (rows < round(bottom * height))
        & (cols >= round(left * width))
        & (cols < round(right * width))
    )
    br, bc = max(1, round(border * height)), max(1, round(border * width))
    strip = (rows < br) | (rows >= height - br) | (cols < bc) | (cols >= width - bc)
    return {CENTER_BLANKED: ~center, CENTER_ONLY: center, BORDER_ONLY: strip}


def apply_region(
    image: np.ndarray, mode: str, box: Sequence[float] = DEFAULT_THORAX_BOX, border: float = DEFAULT_BORDER
) -> np.ndarray:
    """One stored image (uint8 [H, W] or [H, W, C]) shown one of :data:`REGION_MODES`'
    ways; blanked pixels get the rounded mean of the kept pixels."""
    if mode not in REGION_MODES:
        raise ValueError(f"unknown region mode {mode!r}; choose one of {REGION_MODES}")
    image = np.asarray(image)
    return probes.fill_outside(image, region_keep_masks(*image.shape[:2], box, border)[mode])


class RegionMaskedSource(probes.MaskedSource):
    """A split source whose records' images are shown one of :data:`REGION_MODES`' ways."""

    def __init__(
        self, source: Any, mode: str, box: Sequence[float] = DEFAULT_THORAX_BOX, border: float = DEFAULT_BORDER
    ):
        if mode not in REGION_MODES:
            raise ValueError(f"unknown region mode {mode!r}; choose one of {REGION_MODES}")
        box, border = check_region(box, border)
        super().__init__(source, mode, lambda record, index: apply_region(record["image"], mode, box, border))


def _p(x: float) -> str:
    return f"{x:.2g}"


def mask_free_report(
    labels: Sequence[int],
    predictions: Mapping[str, Sequence[int]],
    class_names: Sequence[str],
    box: Sequence[float] = DEFAULT_THORAX_BOX,
    border: float = DEFAULT_BORDER,
    *,
    crop_box: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Accuracies on the full / center-blanked / center-only / border-only images, their
    binomial p-values against the majority rate, and a one-line verdict (module doc).

    ``predictions``: {"full" and each of :data:`REGION_MODES`: predicted labels}.
    ``crop_box``: the run's (None: it sees the whole image); recorded with a note on
    what the regions mean for a cropped model (module doc).
    """
    box, border = check_region(box, border)
    missing = sorted({FULL, *REGION_MODES} - set(predictions))
    if missing:
        raise ValueError(f"the mask-free probe needs predictions for {missing}")
    scores = probes.masked_scores(labels, predictions, len(class_names), full=FULL)
    acc, pv, kept = scores.accuracy, scores.pvalue, scores.retained
    case = probes.shortcut_case(scores, CENTER_BLANKED, CENTER_ONLY)
    if case == "region" and kept[CENTER_ONLY] < READS_LUNGS_RETAINED:
        case = "unconfirmed"
    blanked = (
        f"with the thorax box blanked it keeps {probes.pct(kept[CENTER_BLANKED])} of its above-chance "
        f"accuracy (p = {_p(pv[CENTER_BLANKED])} against the majority rate)"
    )
    border_note = (
        f"; the {border:.0%} border strip alone is also above it ({probes.pct(acc[BORDER_ONLY])}, "
        f"p = {_p(pv[BORDER_ONLY])})"
        if pv[BORDER_ONLY] < probes.SIGNIFICANCE
        else ""
    )
    finding, verdict = {
        "inconclusive": (
            "inconclusive",
            f"inconclusive: the model is not significantly above the majority rate on the full images "
            f"(p = {_p(pv[FULL])}), so the probe cannot tell where it looks",
        ),
        "shortcut": (
            "shortcut",
            f"FLAGGED: {blanked}, so it reads something outside the lungs (markers, borders, collimation, "
            f"patient size){border_note}",
        ),
        "partial_shortcut": (
            "partial_shortcut",
            f"partly reads content outside the thorax box: {blanked}{border_note}",
        ),
        "region": (
            "reads_lungs",
            f"reads the lungs: with the thorax box blanked it falls to (near) chance, and the box alone keeps "
            f"{probes.pct(kept[CENTER_ONLY])} of its above-chance accuracy",
        ),
        "unconfirmed": (
            "unconfirmed",
            f"not flagged, unconfirmed: with the thorax box blanked it falls to (near) chance, but the box "
            f"alone keeps just {probes.pct(kept[CENTER_ONLY])} of its above-chance accuracy (masked images "
            f"are unlike its training images)",
        ),
    }[case]
    return {
        FULL: acc[FULL],
        CENTER_BLANKED: acc[CENTER_BLANKED],
        CENTER_ONLY: acc[CENTER_ONLY],
        BORDER_ONLY: acc[BORDER_ONLY],
        "majority_rate": scores.chance,
        "verdict": verdict + ".",
        "finding": finding,
        "flagged": finding == "shortcut",
        "num_examples": scores.num_examples,
        "pvalue_vs_majority": {k: pv[k] for k in (FULL, *REGION_MODES)},
        "retained": {k: kept[k] for k in REGION_MODES},
        "thorax_box": {"top": box[0], "bottom": box[1], "left": box[2], "right": box[3]},
        "border": border,
        "criterion": (
            f"flagged (shortcut) if the center-blanked accuracy is above the majority rate (one-sided "
            f"binomial p < {probes.SIGNIFICANCE}) and retains >= {probes.SHORTCUT_RETAINED:.0%} of the full "
            f"images' above-chance accuracy; partial if it retains >= {probes.PARTIAL_RETAINED:.0%}; reads "
            f"the lungs if it is not and center-only retains >= {READS_LUNGS_RETAINED:.0%}"
        ),
        "fill": probes.FILL,
        "crop_box": None if crop_box is None else [float(v) for v in crop_box],
        "crop_note": None if crop_box is None else crop_note(crop_box, box),
    }


def crop_note(crop_box: Sequence[float], box: Sequence[float] = DEFAULT_THORAX_BOX) -> str:
    """What the probe's regions mean for a model trained and evaluated on ``crop_box``."""
    top, bottom, left, right = (float(v) for v in crop_box)
    seen = f"rows {top:.0%}-{bottom:.0%}, columns {left:.0%}-{right:.0%}"
    inside = box[0] <= top and bottom <= box[1] and box[2] <= left and right <= box[3]
    return (
        f"the model sees only {seen} of each image (crop_box); the probe's regions are in original-image "
        "coordinates and are cropped like the images, so the border strip and the area outside the crop are "
        "never seen"
        + (
            ": the crop lies inside the thorax box, so center_only equals the full input and center_blanked / "
            "border_only are constant images; a 'reads the lungs' verdict holds by construction"
            if inside
            else ""
        )
    )


def format_mask_free(report: Mapping[str, Any]) -> str:
    """The probe's printed lines: accuracies with p-values, then the verdict."""
    b, pv = report["thorax_box"], report["pvalue_vs_majority"]
    region = f"thorax box rows {b['top']:.0%}-{b['bottom']:.0%}, columns {b['left']:.0%}-{b['right']:.0%}"
    parts = [
        f"{label} {report[k]:.4f} (p {_p(pv[k])})"
        for label, k in (
            ("full", FULL),
            ("center blanked", CENTER_BLANKED),
            ("center only", CENTER_ONLY),
            (f"border {report['border']:.0%} only", BORDER_ONLY),
        )
    ]
    return (
        f"mask-free probe ({region}; majority rate {report['majority_rate']:.4f}, n = {report['num_examples']}): "
        + ", ".join(parts)
        + f"\nmask-free probe verdict: {report['verdict']}"
        + (f"\nmask-free probe note: {report['crop_note']}." if report.get("crop_note") else "")
    )


def _thorax_box_arg(text: str) -> tuple[float, float, float, float]:
    try:
        box = tuple(float(v) for v in text.split(","))
        return check_region(box)[0]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None


def _border_arg(text: str) -> float:
    try:
        return check_region(DEFAULT_THORAX_BOX, float(text))[1]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None


def add_mask_free_arguments(p: argparse.ArgumentParser) -> None:
    """``--thorax-box``, ``--border`` and ``--no-mask-free-probe`` for a command line."""
    p.add_argument(
        "--thorax-box",
        type=_thorax_box_arg,
        default=DEFAULT_THORAX_BOX,
        metavar="TOP,BOTTOM,LEFT,RIGHT",
        help="the mask-free probe's central thorax box as fractions of the image height and width "
        f"(default {','.join(map(str, DEFAULT_THORAX_BOX))})",
    )
    p.add_argument(
        "--border",
        type=_border_arg,
        default=DEFAULT_BORDER,
        metavar="FRACTION",
        help=f"the mask-free probe's border strip width, a fraction of the image side (default {DEFAULT_BORDER})",
    )
    p.add_argument(
        "--no-mask-free-probe",
        action="store_true",
        help="skip the mask-free probe (thorax box blanked / only / border only: 3 more passes over the split)",
    )


def lung_mask_bounding_boxes(masks: Sequence[np.ndarray]) -> np.ndarray:
    """float [N, 4]: each lung mask's bounding box (top, bottom, left, right) as fractions
    of its height and width (end exclusive); how the default box was chosen."""
    out = np.full((len(masks), 4), np.nan)
    for i, mask in enumerate(masks):
        lungs = probes.binary_mask(mask)
        rows, cols = np.nonzero(lungs)
        if rows.size:
            h, w = lungs.shape
            out[i] = (rows.min() / h, (rows.max() + 1) / h, cols.min() / w, (cols.max() + 1) / w)
    return out

"""Shortcut probes: lung-masked evaluation and the saliency pointing game.

Chest X-ray datasets are known for shortcuts (../shared/SPEC.md, "Known traps"): class
correlates with hospital, and models learn text markers, borders and patient age. Two
probes expose this using masks the datasets already carry:

- Lung-masked evaluation: the same model on (a) the images with everything outside the
  lungs blanked and (b) the images with the lungs blanked. Blanking happens on the
  stored uint8 image, before the run's own eval pipeline, exactly as if a user had
  handed in masked images. A model that keeps most of its above-chance accuracy with
  the lungs blanked must be reading something outside the lungs.

  Blanked pixels get the mean intensity of the pixels that are KEPT in the same image:
  no information from the removed region can leak into the masked image, and the image
  keeps its overall brightness. Black (0) was tried first and is worse: black lung
  shapes are far outside the training images, so a model fails on them whether or not
  it reads something outside the lungs, which hides the shortcut the probe must reveal.
  A blurred fill was rejected because it leaks (a blurred corner marker is still read).
  Measured in docs/measurements.md#lung-mask-probe-fill.
- Pointing game (phantoms have a ground-truth lesion mask): per class, the fraction of
  images whose Grad-CAM maximum lies inside the lesion and the mean share of heatmap
  mass inside it, next to the lesion's area (the share a uniform heatmap would get).
  On phantoms it also scores the shortcut marker: the generator places the marker's
  label box with its own random stream, so where it is (or, with the marker switched
  off, where it would be) is known for every image (:func:`phantom_marker_mask`). A
  model that reads the marker puts its maximum on or next to the box; the same score
  for a model trained without the marker, on the same marked images, is the baseline.

This module scores; :mod:`cxrjax.explain.split` runs a loaded model over a whole split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image
from scipy.stats import binomtest

from cxrjax.data import phantoms
from cxrjax.data.builders.options import PhantomDatasetOptions, make_options
from cxrjax.data.subset import split_options

LUNGS_ONLY = "lungs_only"  # everything outside the lungs blanked
LUNGS_BLANKED = "lungs_blanked"  # the lungs blanked, everything else kept
MASK_MODES = (LUNGS_ONLY, LUNGS_BLANKED)
FILL = "mean of the kept pixels"  # what blanked pixels become (see the module docstring)

# Verdict thresholds (documented in the report's "criterion" field).
SIGNIFICANCE = 0.01  # one-sided binomial test of lungs-blanked accuracy against chance
SHORTCUT_RETAINED = 0.5  # keeps >= half of its above-chance accuracy without the lungs
PARTIAL_RETAINED = 0.2


def binary_mask(mask: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """bool [H, W] from a stored mask (uint8 0/255, [H, W] or [H, W, 1]), optionally resized.

    Resizing is bilinear then thresholded at half, so a mask stored at another size than
    the image (D4's lung masks are 256 px, images 299 px) lines up with the image.
    """
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.dtype == bool:
        mask = mask.astype(np.uint8) * 255
    elif mask.max(initial=0) <= 1:
        mask = mask.astype(np.uint8) * 255
    mask = mask.astype(np.uint8)
    if size is not None and tuple(mask.shape) != tuple(size):
        mask = np.asarray(Image.fromarray(mask).resize((size[1], size[0]), Image.BILINEAR))
    return mask >= 128


def fill_outside(image: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``image`` (uint8 [H, W] or [H, W, C]) with the pixels outside ``keep`` (bool [H, W])
    set to the rounded mean of the kept pixels (0 if none are kept): the fill of every
    masking probe (see the module docstring for why the mean of the kept pixels)."""
    image = np.asarray(image)
    keep = np.asarray(keep, bool)
    fill = np.round(image[keep].mean()) if keep.any() else 0
    if image.ndim == 3:
        keep = keep[..., None]
    return np.where(keep, image, np.asarray(fill).astype(image.dtype)).astype(image.dtype)


def apply_lung_mask(image: np.ndarray, lung_mask: np.ndarray, mode: str) -> np.ndarray:
    """One stored image (uint8 [H, W] or [H, W, C]) with only the lungs kept, or the lungs
    blanked; blanked pixels get the rounded mean of the kept pixels (0 if none are kept)."""
    if mode not in MASK_MODES:
        raise ValueError(f"unknown lung-mask mode {mode!r}; choose one of {MASK_MODES}")
    image = np.asarray(image)
    lungs = binary_mask(lung_mask, image.shape[:2])
    return fill_outside(image, lungs if mode == LUNGS_ONLY else ~lungs)


class MaskedSource:
    """A random-access split source whose records have their image replaced by
    ``mask(record, index)`` (a uint8 image of the same shape).

    Wraps any ``len()``/``[i]`` source of records with "image", so the masked images go
    through the run's unchanged eval pipeline, exactly as if a user had handed them in.
    ``mode`` names the masking (for reprs and progress descriptions).
    """

    def __init__(self, source: Any, mode: str, mask: Callable[[Mapping[str, Any], int], np.ndarray]):
        self.source, self.mode, self.mask = source, mode, mask

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index):
        record = dict(self.source[index])
        record["image"] = self.mask(record, index)
        return record

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r}, mode={self.mode!r})"


class LungMaskedSource(MaskedSource):
    """A :class:`MaskedSource` whose records have their image lung-masked (records need
    "lung_mask")."""

    def __init__(self, source: Any, mode: str):
        if mode not in MASK_MODES:
            raise ValueError(f"unknown lung-mask mode {mode!r}; choose one of {MASK_MODES}")

        def mask(record, index):
            if "lung_mask" not in record:
                raise KeyError(
                    f"record {index} has no 'lung_mask'; the lung-masked probe needs a "
                    "dataset that stores lung masks (covid19_radiography D4, cxr_phantoms)"
                )
            return apply_lung_mask(record["image"], record["lung_mask"], mode)

        super().__init__(source, mode, mask)


def binomial_greater_pvalue(successes: int, n: int, p: float) -> float:
    """P(X >= successes) for X ~ Binomial(n, p): is an accuracy above chance by luck?"""
    if n == 0:
        return 1.0
    return float(binomtest(successes, n, p, alternative="greater").pvalue)


@dataclass(frozen=True)
class MaskedScores:
    """Accuracies of one model on the same examples shown several ways, against chance.

    Chance is the majority-class share of the labels (what always answering the most
    common class scores). Per way of showing: the accuracy, the one-sided binomial
    p-value of that many correct answers under chance, and "retained": the share of the
    full images' above-chance accuracy that survives, (acc - chance) / (acc_full - chance)
    (NaN when the full images are not above chance).
    """

    num_examples: int
    chance: float
    full: str  # the key of the unmasked images
    accuracy: dict[str, float]
    pvalue: dict[str, float]
    retained: dict[str, float]


def masked_scores(
    labels: Sequence[int], predictions: Mapping[str, Sequence[int]], num_classes: int, full: str
) -> MaskedScores:
    """:class:`MaskedScores` of ``predictions`` ({way: predicted labels}, ``full`` among them)."""
    labels = np.asarray(labels, np.int64)
    n = int(labels.size)
    if n == 0:
        raise ValueError("a masking probe needs at least one example")
    chance = float(np.bincount(labels, minlength=num_classes).max() / n)
    correct = {}
    for way, pred in predictions.items():
        pred = np.asarray(pred, np.int64)
        if pred.shape != labels.shape:
            raise ValueError(f"predictions {pred.shape} do not match labels {labels.shape}")
        correct[way] = int((pred == labels).sum())
    accuracy = {way: c / n for way, c in correct.items()}
    gap = accuracy[full] - chance
    return MaskedScores(
        num_examples=n,
        chance=chance,
        full=full,
        accuracy=accuracy,
        pvalue={way: binomial_greater_pvalue(c, n, chance) for way, c in correct.items()},
        retained={way: float((a - chance) / gap) if gap > 0 else float("nan") for way, a in accuracy.items()},
    )


def shortcut_case(scores: MaskedScores, blanked: str, only: str) -> str:
    """The masking probes' one decision rule, for a region R (the lungs, the thorax box).

    ``blanked``: R blanked, ``only``: only R visible. In order:
    "inconclusive" (the full images are not significantly above chance, p >=
    SIGNIFICANCE), "shortcut" (R blanked is significantly above chance and retains >=
    SHORTCUT_RETAINED), "partial_shortcut" (significant, retains >= PARTIAL_RETAINED),
    "region" (R blanked falls to chance and only R retains >= SHORTCUT_RETAINED: the
    model reads R), "unconfirmed" (R blanked falls to chance, but only R does not keep
    enough either).
    """
    p_blanked, r_blanked = scores.pvalue[blanked], scores.retained[blanked]
    if scores.pvalue[scores.full] >= SIGNIFICANCE or scores.accuracy[scores.full] <= scores.chance:
        return "inconclusive"
    if p_blanked < SIGNIFICANCE and r_blanked >= SHORTCUT_RETAINED:
        return "shortcut"
    if p_blanked < SIGNIFICANCE and r_blanked >= PARTIAL_RETAINED:
        return "partial_shortcut"
    if scores.retained[only] >= SHORTCUT_RETAINED:
        return "region"
    return "unconfirmed"


def pct(x: float) -> str:
    """A share as the probes' texts write it, e.g. 0.5 -> "50.0%"."""
    return f"{100 * x:.1f}%"


# The probe's verdicts, in the order shortcut_probe_report tests for them: case ->
# (finding, what follows the accuracies; {blanked} / {only}: the share of the
# above-chance accuracy kept with the lungs blanked / with only the lungs, {kept}: how
# the lungs-only accuracy compares).
_VERDICTS = {
    "inconclusive": (
        "inconclusive",
        " The model itself is not significantly above chance, so the probe cannot tell where it looks.",
    ),
    "shortcut": (
        "shortcut",
        " The model SEEMS TO USE SHORTCUTS: with the lungs blanked it keeps {blanked} of its above-chance "
        "accuracy, so it relies on image content outside the lungs (markers, borders, body shape) rather "
        "than on the lung fields.",
    ),
    "partial_shortcut": (
        "partial_shortcut",
        " The model PARTLY USES content outside the lungs: with the lungs blanked it keeps {blanked} of its "
        "above-chance accuracy.",
    ),
    "region": (
        "no_shortcut",
        " No sign of shortcuts outside the lungs: with the lungs blanked the model falls to (near) chance, "
        "and with only the lungs visible it {kept}, so its accuracy comes from the lung fields.",
    ),
    "unconfirmed": (
        "no_shortcut",
        " No sign of shortcuts outside the lungs: with the lungs blanked the model falls to (near) chance. "
        "But with only the lungs visible it keeps just {only} of its above-chance accuracy: masked images "
        "are unlike its training images, so the probe cannot confirm that its decision rests on the lung "
        "fields alone.",
    ),
}


def shortcut_probe_report(
    labels: Sequence[int],
    pred_normal: Sequence[int],
    pred_lungs_only: Sequence[int],
    pred_lungs_blanked: Sequence[int],
    class_names: Sequence[str],
) -> dict[str, Any]:
    """Accuracies on normal / lungs-only / lungs-blanked images, and a verdict in words.

    Chance is the majority-class share of the evaluated labels (what always answering
    the most common class scores). "retained" is the share of the model's above-chance
    accuracy that survives the masking: (acc_masked - chance) / (acc_normal - chance).
    """
    if len(labels) == 0:
        raise ValueError("the lung-masked probe needs at least one example")
    scores = masked_scores(
        labels,
        {"normal": pred_normal, LUNGS_ONLY: pred_lungs_only, LUNGS_BLANKED: pred_lungs_blanked},
        len(class_names),
        full="normal",
    )
    n, chance = scores.num_examples, scores.chance
    normal, only, blanked = (scores.accuracy[k] for k in ("normal", LUNGS_ONLY, LUNGS_BLANKED))
    p_blanked = scores.pvalue[LUNGS_BLANKED]
    r_blanked, r_only = scores.retained[LUNGS_BLANKED], scores.retained[LUNGS_ONLY]
    head = (
        f"Accuracy {pct(normal)} on the normal images, {pct(only)} with only the lungs "
        f"visible, {pct(blanked)} with the lungs blanked (chance = majority class "
        f"{pct(chance)}, n = {n})."
    )
    case = shortcut_case(scores, LUNGS_BLANKED, LUNGS_ONLY)
    finding, explanation = _VERDICTS[case]
    kept = (
        "does at least as well as on the normal images"
        if r_only >= 1.0
        else f"keeps {pct(r_only)} of its above-chance accuracy"
    )
    verdict = head + explanation.format(blanked=pct(r_blanked), only=pct(r_only), kept=kept)
    return {
        "num_examples": n,
        "chance_accuracy": chance,
        "normal_accuracy": normal,
        "lungs_only_accuracy": only,
        "lungs_blanked_accuracy": blanked,
        "lungs_only_retained": r_only,
        "lungs_blanked_retained": r_blanked,
        "lungs_blanked_pvalue_vs_chance": p_blanked,
        "finding": finding,
        "verdict": verdict,
        "criterion": (
            f"shortcut if lungs-blanked accuracy is above chance (one-sided binomial "
            f"p < {SIGNIFICANCE}) and retains >= {SHORTCUT_RETAINED:.0%} of the "
            f"above-chance accuracy; partial if it retains >= {PARTIAL_RETAINED:.0%}"
        ),
        "fill": FILL,
    }


MARKER_NEAR_FRACTION = 1 / 16  # "near the marker": within this share of the image side


def phantom_marker_mask(record: Mapping[str, Any], shortcut_strength: float = 0.9) -> np.ndarray:
    """bool [S, S]: the shortcut marker's label box of a stored phantom (S: its image side).

    The box is re-drawn from the phantom's own marker stream (seed and index from its
    file name ``phantom-<seed>-<index>.png``, its label, ``shortcut_strength``), exactly
    as ``cxrjax.data.phantoms`` draws it, on a blank canvas: every pixel of the box
    (dark label background and white glyphs) differs from the canvas. Independent of
    whether the stored image has the marker: without it, this is where it would be.
    """
    seed, index = phantoms.parse_phantom_file_name(record["file_name"])
    size = int(np.asarray(record["image"]).shape[0])
    return phantoms.marker_box_mask(seed, index, int(record["label"]), size, float(shortcut_strength))


def marker_masker(dataset: str, options: Mapping[str, Any] | None):
    """(record -> marker box) for a cxr_phantoms dataset with these preparation options,
    and whether its images show the marker; (None, False) for any other dataset."""
    if dataset != "cxr_phantoms":
        return None, False
    options, _ = split_options(dict(options or {}))  # a class subset is a view, not a preparation option
    opts = make_options(PhantomDatasetOptions, options or None, dataset)
    return (lambda record: phantom_marker_mask(record, opts.shortcut_strength)), bool(opts.shortcut_marker)


def _grow_box(mask: np.ndarray, margin: int) -> np.ndarray:
    """The bounding box of ``mask`` grown by ``margin`` pixels on every side."""
    out = np.zeros_like(mask, bool)
    rows, cols = np.nonzero(mask)
    if rows.size:
        out[
            max(0, rows.min() - margin) : rows.max() + margin + 1, max(0, cols.min() - margin) : cols.max() + margin + 1
        ] = True
    return out


def pointing_rows(
    heatmaps: np.ndarray,
    lesion_masks: Sequence[np.ndarray],
    labels: Sequence[int],
    lung_masks: Sequence[np.ndarray] | None = None,
    marker_masks: Sequence[np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """Per-image pointing-game facts; summarise any number of batches' rows together.

    ``heatmaps`` [N, H, W] (non-negative, any scale); masks at any size, resized to H, W.
    hit: the heatmap's maximum lies inside the lesion; mass: share of heatmap mass inside
    it; area: the lesion's share of the image (what a uniform heatmap would get).
    With ``marker_masks`` (:func:`phantom_marker_mask`): on_marker (maximum inside the
    marker's label box), near_marker (inside the box grown by H/16 px, about one cell
    of a stride-4 feature map), marker_mass, and both regions' areas (chance levels).
    """
    heatmaps = np.asarray(heatmaps, np.float32)
    labels = np.asarray(labels, np.int64)
    n, h, w = heatmaps.shape
    if len(lesion_masks) != n or labels.shape != (n,):
        raise ValueError(f"{n} heatmaps but {len(lesion_masks)} lesion masks and {labels.shape} labels")
    flat = heatmaps.reshape(n, -1)
    peak = flat.argmax(axis=1)
    has_heat = flat.max(axis=1) > 0
    total = flat.sum(axis=1)
    rows = []
    for i in range(n):
        lesion = binary_mask(lesion_masks[i], (h, w)).reshape(-1)
        row = {
            "label": int(labels[i]),
            "has_lesion": bool(lesion.any()),
            "hit": bool(has_heat[i] and lesion[peak[i]]),
            "mass": float(flat[i][lesion].sum() / total[i]) if total[i] > 0 else 0.0,
            "area": float(lesion.mean()),
        }
        if lung_masks is not None:
            lungs = binary_mask(lung_masks[i], (h, w)).reshape(-1)
            row["outside_lungs"] = bool(has_heat[i] and not lungs[peak[i]])
        if marker_masks is not None:
            box = binary_mask(marker_masks[i], (h, w))
            near = _grow_box(box, max(1, int(round(h * MARKER_NEAR_FRACTION)))).reshape(-1)
            box = box.reshape(-1)
            row.update(
                on_marker=bool(has_heat[i] and box[peak[i]]),
                near_marker=bool(has_heat[i] and near[peak[i]]),
                marker_mass=float(flat[i][box].sum() / total[i]) if total[i] > 0 else 0.0,
                marker_area=float(box.mean()),
                marker_near_area=float(near.mean()),
            )
        rows.append(row)
    return rows


def summarise_pointing(rows: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> dict[str, Any]:
    """{"per_class": {name: {...}}, "overall": {...}} from :func:`pointing_rows`.

    Images without a lesion (Normal phantoms, or a finding of severity ~0) count in
    ``n`` but not in the hit rate or mass; rates are None where a class has no lesion
    at all. ``max_outside_lungs_rate`` (when lung masks were given) is over all images
    of the class: a model pointing at a corner marker shows up there.
    """
    with_lungs = bool(rows) and all("outside_lungs" in r for r in rows)
    with_marker = bool(rows) and all("on_marker" in r for r in rows)

    def mean(values):
        return float(np.mean(values)) if len(values) else None

    def summarise(selected):
        lesioned = [r for r in selected if r["has_lesion"]]
        out = {
            "n": len(selected),
            "n_with_lesion": len(lesioned),
            "hit_rate": mean([r["hit"] for r in lesioned]),
            "mean_mass_in_lesion": mean([r["mass"] for r in lesioned]),
            "mean_lesion_area": mean([r["area"] for r in lesioned]),
        }
        if with_lungs:
            out["max_outside_lungs_rate"] = mean([r["outside_lungs"] for r in selected])
        if with_marker:
            out.update(
                max_on_marker_rate=mean([r["on_marker"] for r in selected]),
                max_near_marker_rate=mean([r["near_marker"] for r in selected]),
                mean_mass_on_marker=mean([r["marker_mass"] for r in selected]),
                mean_marker_area=mean([r["marker_area"] for r in selected]),
                mean_marker_near_area=mean([r["marker_near_area"] for r in selected]),
            )
        return out

    return {
        "per_class": {name: summarise([r for r in rows if r["label"] == k]) for k, name in enumerate(class_names)},
        "overall": summarise(list(rows)),
        "criterion": (
            "hit: the Grad-CAM maximum (for the true class) lies inside the lesion "
            "mask; mass: share of heatmap mass inside the lesion; a uniform heatmap "
            "would get mean_lesion_area"
            + (
                "; max_on_marker / max_near_marker: the maximum lies on the shortcut "
                "marker's label box / within 1/16 of the image side of it (over all "
                "images of the class; chance: mean_marker_area / "
                "mean_marker_near_area)"
                if with_marker
                else ""
            )
        ),
    }


def pointing_game(
    heatmaps: np.ndarray,
    lesion_masks: Sequence[np.ndarray],
    labels: Sequence[int],
    class_names: Sequence[str],
    lung_masks: Sequence[np.ndarray] | None = None,
    marker_masks: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Per class: does the Grad-CAM maximum fall inside the known lesion? (one batch)"""
    return summarise_pointing(pointing_rows(heatmaps, lesion_masks, labels, lung_masks, marker_masks), class_names)


def format_pointing_game(result: Mapping[str, Any]) -> str:
    """A small text table of :func:`pointing_game`'s result."""
    marker = "max_on_marker_rate" in result["overall"]
    lines = [
        f"{'class':<22}{'n':>6}{'lesions':>9}{'hit rate':>10}{'mass in':>9}{'area':>7}"
        + (f"{'max outside lungs':>19}" if "max_outside_lungs_rate" in result["overall"] else "")
        + (f"{'on marker':>11}{'near marker':>13}{'marker mass':>13}" if marker else "")
    ]

    def fmt(x, width):
        return f"{'-':>{width}}" if x is None else f"{x:>{width}.3f}"

    for name, r in [*result["per_class"].items(), ("(all)", result["overall"])]:
        line = (
            f"{name:<22}{r['n']:>6}{r['n_with_lesion']:>9}{fmt(r['hit_rate'], 10)}"
            f"{fmt(r['mean_mass_in_lesion'], 9)}{fmt(r['mean_lesion_area'], 7)}"
        )
        if "max_outside_lungs_rate" in r:
            line += fmt(r["max_outside_lungs_rate"], 19)
        if marker:
            line += (
                fmt(r["max_on_marker_rate"], 11)
                + fmt(r["max_near_marker_rate"], 13)
                + fmt(r["mean_mass_on_marker"], 13)
            )
        lines.append(line)
    overall = result["overall"]
    if marker:
        drawn = result.get("marker_drawn")
        lines.append(
            f"marker: maximum on the label box / within 1/16 image side of it; chance "
            f"(uniform heatmap) {overall['mean_marker_area']:.3f} / "
            f"{overall['mean_marker_near_area']:.3f}"
            + ("" if drawn is None else "" if drawn else " (these images have NO marker: the box is where it would be)")
        )
    return "\n".join(lines)

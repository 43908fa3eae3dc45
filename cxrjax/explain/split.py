"""Saliency and shortcut probes of a loaded run over a whole split.

The scoring (masking, verdicts, pointing-game statistics) is in
:mod:`cxrjax.explain.probes`; this module runs a :class:`cxrjax.inference.LoadedRun` over
the records of a split through its own eval pipeline:

- :func:`saliency` - Grad-CAM / LayerCAM heatmaps of every example of a split (the grids
  of ``cxrjax.explain``, the overlays of ``cxrjax.predict``);
- :func:`lung_mask_probe` - the model on lungs-only and lungs-blanked images;
- :func:`mask_free_probe` - the model with the thorax box blanked / only / the border
  strip only (any dataset; :mod:`cxrjax.explain.mask_free`);
- :func:`pointing_game_split` - saliency of each image's true class against its lesion
  mask (and, on phantoms, the shortcut marker's box).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from cxrjax.data import augment
from cxrjax.explain import mask_free, probes
from cxrjax.explain.gradcam import make_gradcam_fn
from cxrjax.inference import DEFAULT_BATCH_SIZE, LoadedRun, has_field
from cxrjax.train.evaluation import SplitPredictions, iterate_eval_batches, predict_split


@dataclass
class Saliency:
    """Heatmaps of every example of a split, in order, with the model inputs they explain."""

    images: np.ndarray  # float32 [N, S, S, C], the model inputs
    heatmaps: np.ndarray  # float32 [N, S, S] in [0, 1]
    layer: str | None  # the layer the maps were taken at


def saliency(
    run: LoadedRun,
    view: Any,
    split: str,
    *,
    method: str = "gradcam",
    layer: str | None = None,
    targets: Sequence[int] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> Saliency:
    """Saliency maps of the class ``targets[i]`` of every example (None: the predicted class)."""
    fn = make_gradcam_fn(run.model, run.variables, run.input_config.image_shape, layer, method)
    images, heatmaps, used, start = [], [], None, 0
    for batch, _, mask in iterate_eval_batches(
        view, split, run.input_config, batch_size, desc=f"{method} {split}", progress=progress
    ):
        valid = int(mask.sum())
        if targets is None:
            out = fn(batch)
        else:
            chosen = np.zeros(len(batch), np.int32)
            chosen[:valid] = np.asarray(targets[start : start + valid])
            out = fn(batch, chosen)
        images.append(batch[:valid])
        heatmaps.append(np.asarray(out.heatmaps)[:valid])
        used, start = out.layer, start + valid
    shape = run.input_config.image_shape
    return Saliency(
        images=np.concatenate(images) if images else np.zeros((0, *shape), np.float32),
        heatmaps=np.concatenate(heatmaps) if heatmaps else np.zeros((0, *shape[:2]), np.float32),
        layer=used,
    )


def masked_probabilities(
    run: LoadedRun,
    view: Any,
    split: str,
    sources: Mapping[str, Any],
    *,
    mapping: np.ndarray | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """{mode: probabilities} of the run on each masked version of ``split``.

    ``sources``: {mode: a masked wrapper of ``view.splits[split]``} (``probes.MaskedSource``);
    each is added to the view as the split ``<split>[<mode>]`` and predicted in order, so
    its rows line up with the unmasked split's.
    """
    masked = {}
    for mode, source in sources.items():
        name = f"{split}[{mode}]"
        view.splits[name] = source
        masked[mode] = predict_split(
            run,
            view,
            name,
            batch_size,
            mapping=mapping,
            progress=progress,
            desc=f"eval {split}, {mode.replace('_', ' ')}",
        ).probs
    return masked


def lung_mask_probe(
    run: LoadedRun,
    view: Any,
    split: str,
    preds: SplitPredictions,
    *,
    mapping: np.ndarray | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The lung-masked probe of one run: its report and the masked probabilities per mode.

    ``preds`` are the run's predictions on the unmasked split (the probe's baseline).
    """
    sources = {mode: probes.LungMaskedSource(view.splits[split], mode) for mode in probes.MASK_MODES}
    masked = masked_probabilities(run, view, split, sources, mapping=mapping, batch_size=batch_size, progress=progress)
    report = probes.shortcut_probe_report(
        preds.labels,
        preds.predictions,
        masked[probes.LUNGS_ONLY].argmax(1),
        masked[probes.LUNGS_BLANKED].argmax(1),
        run.class_names,
    )
    return report, masked


def mask_free_probe(
    run: LoadedRun,
    view: Any,
    split: str,
    preds: SplitPredictions,
    *,
    box: Sequence[float] = mask_free.DEFAULT_THORAX_BOX,
    border: float = mask_free.DEFAULT_BORDER,
    mapping: np.ndarray | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The mask-free probe of one run (:mod:`cxrjax.explain.mask_free`): its report and
    the probabilities per region mode. ``preds``: the run on the unmasked split."""
    sources = {
        mode: mask_free.RegionMaskedSource(view.splits[split], mode, box, border) for mode in mask_free.REGION_MODES
    }
    masked = masked_probabilities(run, view, split, sources, mapping=mapping, batch_size=batch_size, progress=progress)
    predictions = {mask_free.FULL: preds.predictions, **{mode: p.argmax(1) for mode, p in masked.items()}}
    report = mask_free.mask_free_report(
        preds.labels, predictions, run.class_names, box, border, crop_box=run.input_config.crop_box
    )
    return report, masked


def pointing_game_split(
    run: LoadedRun,
    view: Any,
    split: str,
    labels: np.ndarray,
    *,
    request: Mapping[str, Any] | None = None,
    cam_methods: Sequence[str] = ("gradcam",),
    layer: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> dict[str, Any]:
    """Saliency (for each image's true class) over a split, scored against its lesion masks.

    One result per method of ``cam_methods``: {method: {"per_class": ..., "overall": ...,
    "layer": ...}}. Grad-CAM is the method the studies used; LayerCAM keeps the
    gradient's per-location weights, which matters for the flatten-dense heads of the
    S0/S4 networks (Grad-CAM's spatial averaging assumes a pooling head, see
    ``cxrjax.explain.gradcam``), so the reports show both. On phantoms (``request`` names
    the dataset and its options) each image is also scored against the shortcut marker's
    known position (``probes.phantom_marker_mask``). The heatmaps cover the model input;
    with the run's ``crop_box`` the masks are cut to the same box first, so a heatmap and
    its masks stay pixel-aligned (a marker outside the box is then absent: no area, no hit).
    """
    source = view.splits[split]
    records = [source[i] for i in range(len(source))]
    box = run.input_config.crop_box

    def seen(mask):  # the part of a stored mask the model sees (its crop_box), as the heatmaps
        return augment.crop(np.asarray(mask), box)

    lesions = [seen(r["lesion_mask"]) for r in records]
    lungs = [seen(r["lung_mask"]) for r in records] if has_field(view, split, "lung_mask") else None
    marker_fn, marker_drawn = (
        probes.marker_masker(request["name"], request["options"]) if request is not None else (None, False)
    )
    markers = [seen(marker_fn(r)) for r in records] if marker_fn is not None else None
    extra = {"marker_drawn": marker_drawn} if marker_fn is not None else {}
    games = {}
    for method in cam_methods:
        maps = saliency(
            run, view, split, method=method, layer=layer, targets=labels, batch_size=batch_size, progress=progress
        )
        rows = probes.pointing_rows(maps.heatmaps, lesions, labels, lungs, markers)
        games[method] = {**probes.summarise_pointing(rows, run.class_names), "layer": maps.layer, **extra}
    return games

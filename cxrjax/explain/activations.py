"""Activation maps: a few examples' feature maps per conv stage, as PNG grids.

S2 showed the feature maps of its convolution stages beside Grad-CAM: what the early
stages respond to (edges, ribs, the body outline, burnt-in text) and how coarse the last
stage is. ``python -m cxrjax.explain --workdir RUN --activations [--layer NAME]`` writes,
per conv stage (every name of ``model.feature_names``, or only ``--layer``), one grid
``activations_<layer>.png``: a row per example (the first ``examples`` of the split, in
split order, so the choice is reproducible), the model input first and then the first
``channels`` channels of that stage's post-activation feature map.

The activations are captured exactly where Grad-CAM takes its A
(:func:`cxrjax.explain.gradcam.make_feature_fn`), in eval mode. Each feature tile is
min-max scaled on its own for display (a channel that is constant over an image shows
as uniform dark), so tiles show where a channel responds, not how strongly compared
with other channels; the JSON lists each stage's shape and value range.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxrjax.data.subset import SubsetSource
from cxrjax.explain.gradcam import make_feature_fn
from cxrjax.explain.overlay import display_gray
from cxrjax.inference import DEFAULT_BATCH_SIZE, EvaluationInputError, LoadedRun
from cxrjax.reporting.plots import plt, save_figure
from cxrjax.train.evaluation import iterate_eval_batches, predict_split

DEFAULT_EXAMPLES = 4
DEFAULT_CHANNELS = 8


def activation_file_name(layer: str) -> str:
    """``activations_<layer>.png`` with path separators of a nested layer made safe."""
    return "activations_" + (re.sub(r"[^A-Za-z0-9_.-]+", "_", layer).strip("_") or "layer") + ".png"


def save_activation_grid(
    path: str | Path,
    images: np.ndarray,
    activations: np.ndarray,
    captions: Sequence[str],
    channels: int = DEFAULT_CHANNELS,
    title: str = "",
    tile_inches: float = 1.2,
) -> Path:
    """One grid: a row per example, its input then the first ``channels`` feature maps.

    ``images`` [K, H, W, C] model inputs, ``activations`` [K, h, w, F] one stage's maps.
    """
    images, activations = np.asarray(images), np.asarray(activations, np.float32)
    if activations.ndim != 4 or len(images) != len(activations) or len(captions) != len(images):
        raise ValueError(
            f"{len(images)} images, activations {activations.shape} and {len(captions)} captions do not match"
        )
    shown = max(1, min(int(channels), activations.shape[-1]))
    rows = max(1, len(images))
    fig, axes = plt.subplots(
        rows, shown + 1, squeeze=False, figsize=((shown + 1) * tile_inches + 0.4, rows * (tile_inches + 0.25) + 0.6)
    )
    for r in range(rows):
        for c in range(shown + 1):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r >= len(images):
                continue
            if c == 0:
                ax.imshow(display_gray(images[r]), cmap="gray", vmin=0.0, vmax=1.0)
                ax.set_ylabel(captions[r], fontsize=6)
                if r == 0:
                    ax.set_title("input", fontsize=7)
            else:
                ax.imshow(display_gray(activations[r, :, :, c - 1]), cmap="viridis", vmin=0.0, vmax=1.0)
                if r == 0:
                    ax.set_title(f"ch {c - 1}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def write_activations(
    run: LoadedRun,
    view: Any,
    split: str,
    out: str | Path,
    *,
    mapping: np.ndarray | None = None,
    examples: int = DEFAULT_EXAMPLES,
    channels: int = DEFAULT_CHANNELS,
    layer: str | None = None,
    title: str = "",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, Any]:
    """Write one grid per conv stage (or only ``layer``) into ``out``; return what they show.

    Returns {"examples": [split indices], "layers": {layer: {"file", "shape" [h, w, F],
    "channels_shown", "min", "max"}}}.
    """
    if examples < 1 or channels < 1:
        raise EvaluationInputError(
            f"activation grids need examples >= 1 and channels >= 1, got {examples} and {channels}"
        )
    out = Path(out)
    source = view.splits[split]
    indices = list(range(min(int(examples), len(source))))
    if not indices:
        raise EvaluationInputError(f"split {split!r} is empty: no examples to show activations of")
    view.splits["activations"] = SubsetSource(source, indices)
    preds = predict_split(run, view, "activations", batch_size, mapping=mapping)
    images = np.concatenate(
        [b[: int(m.sum())] for b, _, m in iterate_eval_batches(view, "activations", run.input_config, batch_size)]
    )
    try:
        feature_fn = make_feature_fn(run.model, run.variables, run.input_config.image_shape, layer)
    except ValueError as error:  # an unknown or ambiguous --layer (resolve_layer's message)
        raise EvaluationInputError(str(error)) from None
    features = feature_fn(images)
    names = run.class_names
    captions = [
        f"#{i} true {names[int(y)]}\npred {names[int(p.argmax())]} {p.max():.2f}"
        for i, y, p in zip(indices, preds.labels, preds.probs)
    ]
    layers = {}
    for name, maps in features.items():
        if maps.ndim != 4:
            raise ValueError(f"layer {name!r} has shape {maps.shape[1:]}, not a conv feature map [h, w, channels]")
        path = save_activation_grid(
            out / activation_file_name(name),
            images,
            maps,
            captions,
            channels,
            title=f"{title} - {name} {list(maps.shape[1:])}" if title else f"{name} {list(maps.shape[1:])}",
        )
        layers[name] = {
            "file": path.name,
            "shape": list(maps.shape[1:]),
            "channels_shown": min(int(channels), maps.shape[-1]),
            "min": float(maps.min()),
            "max": float(maps.max()),
        }
    return {"examples": indices, "layers": layers}

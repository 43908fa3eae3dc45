"""Heatmap overlays and labelled grids of them, as PNG files.

Images are shown as the model saw them (after the eval pipeline's resize and
normalisation), rescaled per image to [0, 1] for display, so the overlay is pixel-aligned
with the heatmap whatever normalisation the run used.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib import colormaps
from PIL import Image

from cxrjax.reporting.plots import plt, save_figure  # matplotlib with the Agg backend


def display_gray(image: np.ndarray) -> np.ndarray:
    """A model input [H, W] or [H, W, C] as float [H, W] in [0, 1] (channel mean, min-max)."""
    image = np.asarray(image, np.float32)
    if image.ndim == 3:
        image = image.mean(axis=-1)
    lo, hi = float(image.min()), float(image.max())
    return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)


def overlay_heatmap(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45, colormap: str = "jet") -> np.ndarray:
    """uint8 RGB [H, W, 3]: the gray image blended with the colour-mapped heatmap.

    The blend weight is ``alpha * heatmap`` per pixel, so cold regions show the X-ray
    itself rather than a blue wash and the hot spots stand out.
    """
    gray = display_gray(image)
    heat = np.clip(np.asarray(heatmap, np.float32), 0.0, 1.0)
    if heat.shape != gray.shape:
        raise ValueError(f"heatmap shape {heat.shape} does not match image shape {gray.shape}")
    colour = colormaps[colormap](heat)[..., :3]
    weight = (alpha * heat)[..., None]
    rgb = (1.0 - weight) * gray[..., None] + weight * colour
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def save_overlay_png(path: str | Path, image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> Path:
    """Write :func:`overlay_heatmap` as a PNG; creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay_heatmap(image, heatmap, alpha)).save(path)
    return path


@dataclass(frozen=True)
class Tile:
    """One cell of a grid: the model input, its heatmap, a caption, optional mask outline."""

    image: np.ndarray
    heatmap: np.ndarray
    caption: str
    outline: np.ndarray | None = None  # bool [H, W], e.g. the phantom's lesion mask


def save_grid_png(
    path: str | Path,
    sections: Sequence[tuple[str, Sequence[Tile]]],
    title: str = "",
    columns: int = 8,
    tile_inches: float = 1.6,
) -> Path:
    """A labelled grid: each section (a heading and its tiles) starts on a new row.

    Empty sections are kept with a "(none)" row so a reader sees that, e.g., a class had
    no misclassified examples rather than wondering whether it was forgotten.
    """
    rows: list[tuple[str, list[Tile | None]]] = []
    for heading, tiles in sections:
        tiles = list(tiles)
        if not tiles:
            rows.append((heading, [None]))
            continue
        for start in range(0, len(tiles), columns):
            rows.append((heading if start == 0 else "", tiles[start : start + columns]))
    ncols = max(1, min(columns, max(len(t) for _, t in rows)))
    fig, axes = plt.subplots(
        len(rows), ncols, squeeze=False, figsize=(ncols * tile_inches + 0.4, len(rows) * (tile_inches + 0.3) + 0.5)
    )
    for r, (heading, tiles) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            tile = tiles[c] if c < len(tiles) else None
            if tile is not None:
                ax.imshow(overlay_heatmap(tile.image, tile.heatmap))
                if tile.outline is not None and np.any(tile.outline):
                    ax.contour(np.asarray(tile.outline, np.float32), levels=[0.5], colors="white", linewidths=0.6)
                ax.set_title(tile.caption, fontsize=6)
            else:
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if c == 0:
                    ax.text(0.5, 0.5, "(none)", ha="center", va="center", fontsize=8, transform=ax.transAxes)
            if c == 0 and heading:
                ax.set_ylabel(heading, fontsize=7, fontweight="bold")
    if title:
        # Wrapped to the figure's width (about 14 characters of 9-pt text per inch), so a
        # grid of one or two columns still shows its whole title.
        fig.suptitle(textwrap.fill(title, width=max(30, int(fig.get_figwidth() * 14))), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)

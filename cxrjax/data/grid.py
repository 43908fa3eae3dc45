"""A labelled grid of prepared samples per class (`python -m cxrjax.data show`).

Looking at the pictures is the cheapest check there is: wrong labels, masks read as
images, inverted or black 16-bit images, burned-in text markers and borders that give
the class away all show up at a glance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pick_samples(source, num_classes: int, per_class: int, max_scan: int = 20000) -> list[list[dict]]:
    """The first `per_class` records of each class in stored order (which TFDS shuffled
    by key hash at preparation, so this is a fixed, class-mixed sample)."""
    picked: list[list[dict]] = [[] for _ in range(num_classes)]
    for index in range(min(len(source), max_scan)):
        record = source[index]
        bucket = picked[int(record["label"])]
        if len(bucket) < per_class:
            bucket.append(record)
        if all(len(b) >= per_class for b in picked):
            break
    return picked


def sample_grid(
    dataset, out: str | Path, *, split: str = "train", per_class: int = 6, masks: bool = False, tile_inches: float = 1.7
) -> Path:
    """Writes a PNG grid: one row per class (named, with its count in the split), one
    column per sample (titled with its source file name). masks=True outlines the lung
    mask (cyan) and lesion mask (red) where the dataset has them."""
    # A bare Figure (no pyplot): no global backend switch, nothing left open.
    from matplotlib.figure import Figure

    if split not in dataset.splits:
        raise ValueError(f"split {split!r} not in {dataset.name}; available: {list(dataset.splits)}")
    source = dataset.splits[split]
    picked = pick_samples(source, dataset.num_classes, per_class)
    counts = dataset.report.get("splits", {}).get(split, {})
    rows, cols = dataset.num_classes, per_class
    fig = Figure(figsize=(cols * tile_inches, rows * tile_inches + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False)
    for row, class_name in enumerate(dataset.class_names):
        for col in range(cols):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(picked[row]):
                record = picked[row][col]
                ax.imshow(record["image"][..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
                if masks:
                    _outline(ax, record, "lung_mask", "cyan", record.get("has_lung_mask", True))
                    _outline(ax, record, "lesion_mask", "red", True)
                ax.set_title(_short(str(record["file_name"])), fontsize=6)
            else:
                ax.set_facecolor("0.85")
            if col == 0:
                ax.set_ylabel(f"{row}: {class_name}\n(n={counts.get(class_name, '?')})", fontsize=8)
    size = dataset.options.image_size
    fig.suptitle(f"{dataset.name} / {split} ({size}x{size} prepared, label id: class name)", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def _outline(ax, record: dict, key: str, color: str, present) -> None:
    mask = record.get(key)
    if mask is None or not bool(present) or not np.any(mask):
        return
    ax.contour(mask[..., 0] > 127, levels=[0.5], colors=color, linewidths=0.6)


def _short(name: str, width: int = 28) -> str:
    name = name.rsplit("/", 1)[-1]
    return name if len(name) <= width else "..." + name[-(width - 3) :]

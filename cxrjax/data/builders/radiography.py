"""`covid19_radiography`: the COVID-19 Radiography Database (SPEC.md: D4, and D3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxrjax.data import provenance
from cxrjax.data.builders.folder import FolderBuilder
from cxrjax.data.builders.options import SplitOptions
from cxrjax.data.layouts import D3_LAYOUT, D4_LAYOUT, ScannedTree, SourceImage, scan_radiography


class Covid19Radiography(FolderBuilder, skip_registration=True):
    """COVID-19 Radiography Database (Rahman, Chowdhury et al.), D4 (v4+) or D3 (v3).

    Only `<class>/images/` is read as images (D4); `<class>/masks/` is stored as the
    `lung_mask` feature of the image with the same file name, resized like the image
    and kept binary (0/255). Images without a mask (all of D3) get an all-zero mask and
    `has_lung_mask=False`, so every record has the same keys.
    Class names are the folder names as found (D4 "Normal", D3 "NORMAL"), sorted.
    There is no official split: train/validation/test are drawn stratified by class
    from `seed` and the fractions (default 70/20/10, as S4), keeping duplicate groups
    together.
    Each image's `source` (the collection it came from) is read from the
    `<Class>.metadata.xlsx` workbooks next to the class folders when they are there
    (`cxrjax.data.provenance`); without them `source` is "" and nothing else changes.
    """

    name = "covid19_radiography"
    OPTIONS_CLASS = SplitOptions
    HAS_LUNG_MASK = True
    DESCRIPTION = "COVID-19 Radiography Database (D4 with lung masks, or D3)."
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download the "COVID-19 Radiography Database" from Kaggle
(https://www.kaggle.com/datasets/tawsifurrahman/covid19-radiography-database), unzip it
and pass the extracted folder as the manual dir (--manual-dir DIR). cxrjax never
downloads anything. Version 4 or later (4 classes, with lung masks) looks like:
{D4_LAYOUT}
Version 3 (3 classes, no masks) looks like:
{D3_LAYOUT}
The <Class>.metadata.xlsx files next to the class folders give each image's source
(the host of its URL); the README is listed as skipped.
"""

    def _scan(self, root: Path) -> ScannedTree:
        return scan_radiography(root)

    def _image_sources(self, tree: ScannedTree, images: list[SourceImage]) -> tuple[list[str], dict[str, Any] | None]:
        sources, report = provenance.radiography_sources(tree.root, tree.class_names, images)
        return sources, report if report["metadata_files"] else None

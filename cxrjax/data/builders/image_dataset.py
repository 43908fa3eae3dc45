"""`covid19_image_dataset`: the Kaggle "Covid-19 Image Dataset" (SPEC.md: DP)."""

from __future__ import annotations

from pathlib import Path

from cxrjax.data.builders.folder import CarveFolderBuilder
from cxrjax.data.layouts import SPLIT_LAYOUT, ScannedTree, scan_split_folders


class Covid19ImageDataset(CarveFolderBuilder, skip_registration=True):
    """Covid-19 Image Dataset (3 classes): train/ and test/ are given.

    The test split is test/ as given; validation is carved from train/, stratified by
    class (default 20%, as S3), keeping duplicate groups together. A duplicate of a
    test image found in train/ is dropped from train (and reported), so no image is in
    two splits. Images are mixed JPEG/PNG, RGB and grayscale, up to ~4000 px: all are
    decoded to grayscale and shrunk while decoding (see `cxrjax.data.decode`).
    """

    name = "covid19_image_dataset"
    DESCRIPTION = "Covid-19 Image Dataset (3-way): given train/ and test/ folders."
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download the "Covid-19 Image Dataset" (3-way classification: Covid, Normal, Viral
Pneumonia) from Kaggle (https://www.kaggle.com/datasets/pranavraikokte/covid19-image-dataset),
unzip it and pass the extracted folder as the manual dir (--manual-dir DIR). cxrjax
never downloads anything. Expected layout:
{SPLIT_LAYOUT}
"""

    def _scan(self, root: Path) -> ScannedTree:
        return scan_split_folders(root, require_test=True, dataset=self.name)

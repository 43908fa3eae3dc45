"""`image_folder`: any folder with one subfolder per class (DC-like data, your own data)."""

from __future__ import annotations

from pathlib import Path

from cxrjax.data.builders.folder import FolderBuilder
from cxrjax.data.builders.options import SplitOptions
from cxrjax.data.layouts import CLASS_LAYOUT, SPLIT_LAYOUT, ScannedTree, scan_image_folder


class ImageFolderBuilder(FolderBuilder, skip_registration=True):
    """Generic class-folder dataset, optionally already split.

    ROOT/<class>/*: train/validation/test drawn by the fractions (default 70/20/10).
    ROOT/train/<class>/* [+ test/, validation/]: given splits are kept as they are;
    a missing validation (and test) split is carved from train/.
    Files are read only directly inside the class folders; nested folders are listed as
    skipped (so a D4 tree is rejected with a hint to use covid19_radiography).
    """

    name = "image_folder"
    OPTIONS_CLASS = SplitOptions
    DESCRIPTION = "Any folder of class subfolders (optionally split into train/ and test/)."
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Pass a folder with one subfolder per class as the manual dir (--manual-dir DIR); the
subfolder names become the class names. Either
{CLASS_LAYOUT}
or, already split:
{SPLIT_LAYOUT}
"""

    def _scan(self, root: Path) -> ScannedTree:
        return scan_image_folder(root)

"""Tiny fixture trees in the layouts of the real datasets, written into tmp dirs.

Every image is random noise from its own seed, so no two fixture images are near
duplicates unless a test plants one on purpose.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

D4_CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
D3_CLASSES = ("COVID", "NORMAL", "Viral Pneumonia")
DP_CLASSES = ("Covid", "Normal", "Viral Pneumonia")


def noise(seed: int, height: int, width: int) -> np.ndarray:
    """uint8 [h, w]: blocky random noise (8x8 cells), distinct per seed."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, size=(8, 8), dtype=np.uint8)
    image = Image.fromarray(cells).resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(image)


def encode(array: np.ndarray, fmt: str = "PNG", mode: str | None = None, **save) -> bytes:
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def image_bytes(seed: int, mode: str = "L", fmt: str = "PNG", size=(48, 48)) -> bytes:
    """An image of the given PIL mode (L, RGB, RGBA, P, I;16, ...) and format."""
    gray = noise(seed, *size)
    if mode == "I;16":
        wide = gray.astype(np.uint16) * 16 + 100  # 12-bit range, like a detector
        return encode(wide, fmt)
    if mode == "RGBA":
        rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
        return encode(rgba, fmt)
    if mode == "P":
        return encode(gray, fmt, mode="P")
    if mode == "RGB":
        return encode(np.dstack([gray] * 3), fmt)
    return encode(gray, fmt)


def mask_bytes(size=(40, 40), left=True) -> bytes:
    mask = np.zeros(size, np.uint8)
    h, w = size
    if left:
        mask[h // 4 : 3 * h // 4, w // 8 : w // 2 - 2] = 255
    mask[h // 4 : 3 * h // 4, w // 2 + 2 : 7 * w // 8] = 255
    return encode(mask)


def corrupt_png(seed: int) -> bytes:
    """A PNG cut in half: PIL identifies it but cannot load it."""
    data = image_bytes(seed, size=(64, 64))
    return data[: len(data) // 2]


# Metadata URLs per D4 class (cycled over its images), as the real workbooks give them,
# and the source each names (cxrjax.data.provenance.source_from_url).
D4_URLS = {
    "COVID": (
        "https://sirm.org/category/senza-categoria/covid-19/",
        "https://github.com/ieee8023/covid-chestxray-dataset",
        "https://github.com/armiro/COVID-CXNet",
    ),
    "Lung_Opacity": ("https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/data",),
    "Normal": ("https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/data",),
    "Viral Pneumonia": ("https://www.kaggle.com/paultimothymooney/chest-xray-pneumonia",),
}
URL_SOURCES = {
    "https://sirm.org/category/senza-categoria/covid-19/": "sirm.org",
    "https://github.com/ieee8023/covid-chestxray-dataset": "github.com/ieee8023",
    "https://github.com/armiro/COVID-CXNet": "github.com/armiro",
    "https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/data": (
        "kaggle.com/c/rsna-pneumonia-detection-challenge"
    ),
    "https://www.kaggle.com/paultimothymooney/chest-xray-pneumonia": "kaggle.com/paultimothymooney",
}
METADATA_HEADER = ("FILE NAME", "FORMAT", "SIZE", "URL")


def write_xlsx(path: Path, rows, header=METADATA_HEADER) -> Path:
    """A real .xlsx workbook (openpyxl) with one sheet: the header row, then rows."""
    import openpyxl

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(list(header))
    for row in rows:
        sheet.append(list(row))
    path.parent.mkdir(parents=True, exist_ok=True)
    workbook.save(path)
    return path


def d4_metadata_name(class_name: str, i: int) -> str:
    """FILE NAME as the workbooks write it: without extension, Normal's in upper case
    (NORMAL-1 for Normal-1.png); Viral Pneumonia's here with the extension, to cover both."""
    if class_name == "Normal":
        return f"NORMAL-{i}"
    if class_name == "Viral Pneumonia":
        return f"{class_name}-{i}.png"
    return f"{class_name}-{i}"


def write_groups_csv(path: Path, rows, header=("file_name", "group")) -> Path:
    """A groups file: the header, then one line per row (values written as given)."""
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def make_d4(root: Path, per_class: int = 5, *, seed: int = 0, metadata: bool = False) -> dict:
    """COVID-19_Radiography_Dataset/<Class>/{images,masks}/<Class>-N.png plus traps.

    Traps: a metadata .xlsx and README at the top, a hidden file, a corrupt image, an
    image without mask, a mask without image, and one byte-identical copy of a COVID
    image placed in Normal. Returns facts the tests check against.
    metadata: write real `<Class>.metadata.xlsx` workbooks (URLs from D4_URLS, cycled;
    the planted copy has no row), facts["sources"] = {file name: expected source};
    otherwise the workbooks are not spreadsheets at all.
    """
    base = root / "COVID-19_Radiography_Dataset"
    facts = {"root": base, "valid": {}, "masks": 0}
    for c, name in enumerate(D4_CLASSES):
        for i in range(1, per_class + 1):
            write(base / name / "images" / f"{name}-{i}.png", image_bytes(seed + 100 * c + i, size=(60, 60)))
            if not (name == "Normal" and i == 1):  # Normal-1 has no mask
                write(base / name / "masks" / f"{name}-{i}.png", mask_bytes(left=i % 2 == 0))
                facts["masks"] += 1
        facts["valid"][name] = per_class
        if metadata:
            urls = D4_URLS[name]
            rows = [
                (d4_metadata_name(name, i), "PNG", "299*299", urls[(i - 1) % len(urls)])
                for i in range(1, per_class + 1)
            ]
            write_xlsx(base / f"{name}.metadata.xlsx", rows)
            for i in range(1, per_class + 1):
                facts.setdefault("sources", {})[f"{name}/images/{name}-{i}.png"] = URL_SOURCES[
                    urls[(i - 1) % len(urls)]
                ]
        else:
            write(base / f"{name}.metadata.xlsx", b"PK\x03\x04 not really a spreadsheet")
    write(base / "README.md.txt", b"readme")
    write(base / "COVID" / "images" / ".DS_Store", b"\x00\x00")
    write(base / "Lung_Opacity" / "images" / "Lung_Opacity-broken.png", corrupt_png(seed + 7))
    write(base / "Viral Pneumonia" / "masks" / "Viral Pneumonia-99.png", mask_bytes())
    duplicate = (base / "COVID" / "images" / "COVID-2.png").read_bytes()
    write(base / "Normal" / "images" / "Normal-copy.png", duplicate)
    facts["valid"]["Normal"] += 1
    if metadata:
        facts["sources"]["Normal/images/Normal-copy.png"] = "unknown"
    facts["duplicate_pair"] = ("COVID/images/COVID-2.png", "Normal/images/Normal-copy.png")
    facts["corrupt"] = "Lung_Opacity/images/Lung_Opacity-broken.png"
    facts["hidden"] = "COVID/images/.DS_Store"
    facts["orphan_mask"] = "Viral Pneumonia/masks/Viral Pneumonia-99.png"
    facts["no_mask"] = "Normal/images/Normal-1.png"
    return facts


def make_d3(root: Path, per_class: int = 4, *, seed: int = 500) -> Path:
    """COVID-19 Radiography Database/<Class>/<Class> (N).png, flat, D3 folder names."""
    base = root / "COVID-19 Radiography Database"
    for c, name in enumerate(D3_CLASSES):
        for i in range(1, per_class + 1):
            write(base / name / f"{name} ({i}).png", image_bytes(seed + 100 * c + i))
    return base


# (mode, format, extension, size (h, w)) cycled over the DP images: every mode and
# extension appears in every split and class.
DP_VARIANTS = (
    ("L", "PNG", ".png", (48, 48)),
    ("RGB", "JPEG", ".jpeg", (60, 80)),
    ("RGBA", "PNG", ".png", (50, 40)),
    ("P", "PNG", ".png", (44, 52)),
    ("I;16", "PNG", ".png", (64, 48)),
    ("L", "JPEG", ".jpg", (72, 56)),
)


def make_dp(root: Path, train_per_class: int = 10, test_per_class: int = 3, *, seed: int = 900) -> dict:
    """Covid19-dataset/{train,test}/<Class>/ with mixed formats, modes and sizes, a
    corrupt file, a hidden file, a text file, and a train image that duplicates a test
    image byte-for-byte."""
    base = root / "Covid19-dataset"
    facts = {"root": base, "files": {}}
    k = 0
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for c, name in enumerate(DP_CLASSES):
            for i in range(count):
                mode, fmt, ext, size = DP_VARIANTS[k % len(DP_VARIANTS)]
                k += 1
                rel = f"{split}/{name}/{name.lower()}-{i:02d}{ext}"
                write(base / rel, image_bytes(seed + k, mode, fmt, size))
                facts["files"][rel] = {"split": split, "class": name, "mode": mode, "size": size}
    write(base / "train" / "Covid" / "broken.jpg", b"\xff\xd8\xff\xe0 truncated jpeg")
    write(base / "train" / "Normal" / "._normal-00.png", b"macOS resource fork")
    write(base / "train" / "Normal" / "notes.txt", b"not an image")
    test_file = min(f for f in facts["files"] if f.startswith("test/Normal/"))
    duplicate = f"train/Normal/copy-of-test{Path(test_file).suffix}"
    write(base / duplicate, (base / test_file).read_bytes())
    facts["duplicate"] = (duplicate, test_file)
    facts["corrupt"] = "train/Covid/broken.jpg"
    facts["hidden"] = "train/Normal/._normal-00.png"
    facts["text"] = "train/Normal/notes.txt"
    return facts


def make_class_folders(
    root: Path, classes=("cat_a", "cat_b", "cat_c"), per_class: int = 10, *, seed: int = 3000, size=(40, 40)
) -> Path:
    """ROOT/<class>/img-N.png (the generic image_folder layout)."""
    for c, name in enumerate(classes):
        for i in range(per_class):
            write(root / name / f"img-{i:03d}.png", image_bytes(seed + 100 * c + i, size=size))
    return root


def make_class_folders_with_duplicates(
    root: Path, classes=("cat_a", "cat_b"), per_class: int = 12, copies: int = 3, *, seed: int = 7000
) -> tuple[Path, list[set[str]]]:
    """The image_folder layout (ROOT/<class>/img-N.png) plus ``copies`` byte-identical
    duplicate groups per class (a file and its copy dup-N.png in the same class); returns
    the root and each group's file names (relative to ROOT), which the data layer must
    keep in one split or fold."""
    make_class_folders(root, classes, per_class, seed=seed)
    groups = []
    for name in classes:
        for i in range(copies):
            original = f"{name}/img-{i:03d}.png"
            copy = f"{name}/dup-{i:03d}.png"
            write(root / copy, (root / original).read_bytes())
            groups.append({original, copy})
    return root, groups

"""Recognising the on-disk layouts of the manual downloads (see SPEC.md, "Datasets").

A scan only lists files; nothing is decoded here. It returns every candidate image with
its class (from the folder name), the split the layout gives it (if any), its lung mask
(D4), and every other file under the root with the reason it will not be used, so the
preparation report accounts for every file. Problems that make the folder unusable
(missing, empty class folder, unknown layout) raise `LayoutError` with the path and the
expected layout.

Why so strict: S0 pointed a directory loader at D4's class folders, read the lung masks
as images and doubled every class. Here D4 is recognised explicitly, only `images/` is
read as images, and `masks/` only as masks; folders named `images`/`masks` are never
classes (one D4 class folder on its own is not a two-class dataset "images" vs
"masks"). Only regular files are candidates: FIFOs, devices, sockets and broken
symlinks with an image extension are listed as skipped, never opened. Symlinks to
folders inside class folders are not followed.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from cxrjax.data.decode import has_image_extension, is_hidden, regular_file_problem
from cxrjax.data.errors import DataError

D4_LAYOUT = """\
  ROOT/                                  e.g. COVID-19_Radiography_Dataset/
    COVID/images/COVID-1.png ...
    COVID/masks/COVID-1.png ...          (lung masks, optional)
    Lung_Opacity/images/...  Lung_Opacity/masks/...
    Normal/images/...        Normal/masks/...
    Viral Pneumonia/images/...  Viral Pneumonia/masks/..."""
D3_LAYOUT = """\
  ROOT/                                  e.g. "COVID-19 Radiography Database"/
    COVID/COVID (1).png ...
    NORMAL/NORMAL (1).png ...
    Viral Pneumonia/Viral Pneumonia (1).png ..."""
SPLIT_LAYOUT = """\
  ROOT/                                  e.g. Covid19-dataset/
    train/<class>/*.png|jpg|jpeg|bmp     one folder per class
    test/<class>/...                     same class folders as train/
    (validation/<class>/... optional; otherwise carved from train/)"""
CLASS_LAYOUT = """\
  ROOT/
    <class A>/*.png|jpg|jpeg|bmp         one folder per class, images directly inside
    <class B>/..."""

# Folders some archivers add; never data.
_JUNK_DIRS = frozenset({"__MACOSX", "$RECYCLE.BIN", "System Volume Information"})
# The insides of a D4 class folder (lower case): never class folders themselves.
_D4_INNER = frozenset({"images", "masks"})
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "test": "test",
    "testing": "test",
}


class LayoutError(DataError):
    """A manual-download folder that cannot be used; the message names the path."""


@dataclasses.dataclass(frozen=True)
class SourceImage:
    """One candidate image of a scanned tree.

    relpath: path relative to the scanned root, '/'-separated: the stored `file_name`
      and the TFDS example key (unique within a dataset).
    given_split: "train"/"validation"/"test" when the layout fixes it, else None.
    mask_path: the matching lung mask (D4), else None.
    """

    path: Path
    relpath: str
    class_name: str
    given_split: str | None = None
    mask_path: Path | None = None


@dataclasses.dataclass
class ScannedTree:
    """Result of scanning a manual-download folder."""

    root: Path
    layout: str  # "D4", "D3", "split_folders" or "class_folders"
    class_names: list[str]
    images: list[SourceImage]
    skipped: list[dict[str, str]]  # {"file": relpath, "reason": ...}
    given_splits: tuple[str, ...] = ()

    @property
    def num_masks(self) -> int:
        return sum(image.mask_path is not None for image in self.images)


def scan_radiography(root: str | os.PathLike) -> ScannedTree:
    """Scans the COVID-19 Radiography Database in its D4 (images/ + masks/) or D3 layout."""
    root = _resolve_root(
        root, _radiography_kind, "covid19_radiography", f"D4 layout:\n{D4_LAYOUT}\nor D3 layout:\n{D3_LAYOUT}"
    )
    kind = _radiography_kind(root)
    skipped: list[dict[str, str]] = []
    class_dirs = _class_dirs(root, root, skipped, expected=D4_LAYOUT if kind == "D4" else D3_LAYOUT)
    images: list[SourceImage] = []
    for class_dir in class_dirs:
        if kind == "D4":
            images.extend(_scan_d4_class(root, class_dir, skipped))
        else:
            images.extend(_scan_flat_class(root, class_dir, class_dir.name, None, skipped, expected=D3_LAYOUT))
    return ScannedTree(
        root=root, layout=kind, class_names=[d.name for d in class_dirs], images=images, skipped=_sorted(skipped)
    )


def scan_split_folders(
    root: str | os.PathLike, *, require_test: bool = True, dataset: str = "covid19_image_dataset"
) -> ScannedTree:
    """Scans ROOT/{train,test[,validation]}/<class>/* (the DP layout)."""
    expected = SPLIT_LAYOUT
    root = _resolve_root(root, _split_kind, dataset, expected)
    split_dirs = _split_dirs(root)
    if "train" not in split_dirs:
        raise LayoutError(f"{root}: no train/ folder. Expected layout:\n{expected}")
    if require_test and "test" not in split_dirs:
        raise LayoutError(f"{root}: no test/ folder next to train/. Expected layout:\n{expected}")
    skipped: list[dict[str, str]] = []
    _skip_root_leftovers(root, set(split_dirs.values()), skipped)
    images: list[SourceImage] = []
    class_sets: dict[str, list[str]] = {}
    for split, split_dir in sorted(split_dirs.items(), key=lambda kv: _SPLIT_ORDER[kv[0]]):
        class_dirs = _class_dirs(split_dir, root, skipped, expected=expected)
        class_sets[split] = [d.name for d in class_dirs]
        for class_dir in class_dirs:
            images.extend(_scan_flat_class(root, class_dir, class_dir.name, split, skipped, expected=expected))
    reference = class_sets["train"]
    for split, names in class_sets.items():
        if names != reference:
            raise LayoutError(
                f"{split_dirs[split]}: class folders {names} differ from those of "
                f"{split_dirs['train']} {reference}; every split needs the same class "
                f"folders. Expected layout:\n{expected}"
            )
    return ScannedTree(
        root=root,
        layout="split_folders",
        class_names=reference,
        images=images,
        skipped=_sorted(skipped),
        given_splits=tuple(sorted(class_sets, key=_SPLIT_ORDER.get)),
    )


def scan_image_folder(root: str | os.PathLike) -> ScannedTree:
    """Scans any ROOT/<class>/* tree, or one already split into ROOT/train/ (+ test/)."""
    expected = f"{CLASS_LAYOUT}\nor, already split:\n{SPLIT_LAYOUT}"
    root = _resolve_root(root, _folder_kind, "image_folder", expected)
    if _split_kind(root):
        return scan_split_folders(root, require_test=False, dataset="image_folder")
    skipped: list[dict[str, str]] = []
    class_dirs = _class_dirs(root, root, skipped, expected=expected)
    images: list[SourceImage] = []
    for class_dir in class_dirs:
        images.extend(_scan_flat_class(root, class_dir, class_dir.name, None, skipped, expected=expected))
    return ScannedTree(
        root=root,
        layout="class_folders",
        class_names=[d.name for d in class_dirs],
        images=images,
        skipped=_sorted(skipped),
    )


# --------------------------------------------------------------------------- helpers

_SPLIT_ORDER = {"train": 0, "validation": 1, "test": 2}


def _sorted(skipped: list[dict[str, str]]) -> list[dict[str, str]]:
    return sorted(skipped, key=lambda entry: entry["file"])


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _visible_entries(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir(), key=lambda p: p.name)
    except OSError as error:
        raise LayoutError(f"{directory}: cannot list folder ({error})") from error


def _count_files(directory: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(directory))


def _skip_dir(directory: Path, root: Path, reason: str, skipped: list) -> None:
    """Reports a whole folder as one entry (it may hold thousands of files).

    A symlink to a folder is not followed. If it points into the scanned tree, its
    files are not counted as "not read": they are read (or skipped) where they are.
    """
    if directory.is_symlink():
        target = directory.resolve()
        if target == root or root in target.parents:
            where = _rel(target, root) + "/" if target != root else "the dataset folder"
            skipped.append(
                {
                    "file": _rel(directory, root) + "/",
                    "reason": f"{reason}; symlink to {where}, not followed (the "
                    "files there are read or skipped where they are)",
                }
            )
            return
        count = _count_files(target)
        skipped.append(
            {
                "file": _rel(directory, root) + "/",
                "reason": f"{reason}; symlink to {target}, not followed ({count} file{'s' * (count != 1)} not read)",
            }
        )
        return
    count = _count_files(directory)
    skipped.append(
        {"file": _rel(directory, root) + "/", "reason": f"{reason} ({count} file{'s' * (count != 1)} not read)"}
    )


def _skip_entry(entry: Path, root: Path, reason: str, skipped: list) -> None:
    if entry.is_dir():
        _skip_dir(entry, root, reason, skipped)
    else:
        skipped.append({"file": _rel(entry, root), "reason": reason})


def _is_junk(entry: Path) -> bool:
    return is_hidden(entry) or entry.name in _JUNK_DIRS


def _resolve_root(root: str | os.PathLike, matches, dataset: str, expected: str) -> Path:
    """Checks the folder exists; descends into a single wrapper folder (unzipped archives
    often nest the dataset one level down, e.g. archive/COVID-19_Radiography_Dataset/)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise LayoutError(
            f"{root}: folder does not exist. {dataset} expects the manual download there, laid out as:\n{expected}"
        )
    if not root.is_dir():
        raise LayoutError(f"{root}: is a file, not a folder. {dataset} expects:\n{expected}")
    root = root.resolve()
    current = root
    for _ in range(3):
        if matches(current):
            return current
        subdirs = [e for e in _visible_entries(current) if e.is_dir() and not _is_junk(e)]
        if len(subdirs) != 1 or _loose_images(current) or _is_d4_inner(subdirs[0]):
            break
        current = subdirs[0]
    entries = [e.name + ("/" if e.is_dir() else "") for e in _visible_entries(current) if not is_hidden(e)]
    found = ", ".join(entries[:10]) + (" ..." if len(entries) > 10 else "") or "nothing"
    where = "" if current == root else f" in {current}"
    raise LayoutError(
        f"{root}: does not match the layout {dataset} expects (found{where}: "
        f"{found}).{_layout_hint(root, current, dataset)} "
        f"Expected layout:\n{expected}"
    )


def _layout_hint(root: Path, current: Path, dataset: str) -> str:
    """One sentence saying what the folder looks like instead (one class folder, a D4
    class folder, another builder's layout), if anything. `current` is where the
    descent through single wrapper folders stopped."""
    candidates = _class_candidates(current)
    inner = sorted(d.name + "/" for d in candidates if _is_d4_inner(d))
    if inner:
        other = " A D4 tree is prepared with covid19_radiography." if dataset != "covid19_radiography" else ""
        return (
            f" {current.name}/ holds {' and '.join(inner)}: it is one class folder of "
            "the D4 layout (its images/ and masks/ are never classes), and at least 2 "
            "classes are needed: pass the folder that holds every class folder." + other
        )
    if current != root and _loose_images(current):
        # The descent only enters a folder that is alone in its parent.
        return (
            f" {current.parent} holds a single class folder ({current.name}/); at least "
            "2 classes are needed, one folder per class."
        )
    if _split_kind(current) and dataset == "covid19_radiography":
        return " It looks like a train/test split layout: prepare it with covid19_image_dataset or image_folder."
    with_images = [d.name for d in candidates if _has_images_subdir(d)]
    if with_images and len(with_images) < len(candidates):
        without = sorted({d.name for d in candidates} - set(with_images))
        return (
            f" Folders {with_images} have an images/ subfolder but {without} do not; "
            "D4 needs images/ in every class folder."
        )
    if len(candidates) == 1:
        return f" Only one class folder ({candidates[0].name}/) was found; at least 2 classes are needed."
    return ""


def _is_d4_inner(entry: Path) -> bool:
    return entry.name.lower() in _D4_INNER


def _loose_images(directory: Path) -> list[Path]:
    return [e for e in _visible_entries(directory) if e.is_file() and has_image_extension(e) and not is_hidden(e)]


def _class_candidates(directory: Path) -> list[Path]:
    return [e for e in _visible_entries(directory) if e.is_dir() and not _is_junk(e)]


def _has_images_subdir(class_dir: Path) -> bool:
    return any(e.is_dir() and e.name.lower() == "images" for e in _visible_entries(class_dir))


def _split_dirs(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for entry in _class_candidates(root):
        split = _SPLIT_ALIASES.get(entry.name.lower())
        if split is not None:
            if split in found:
                raise LayoutError(
                    f"{root}: both {found[split].name}/ and {entry.name}/ look like the {split} split; keep one."
                )
            found[split] = entry
    return found


def _split_kind(root: Path) -> bool:
    return "train" in _split_dirs(root)


def _radiography_kind(root: Path) -> str | None:
    """ "D4", "D3" or None (no match). A D4/D3 root has >= 2 class folders, none of
    them named images/ or masks/ (that is the inside of one D4 class folder)."""
    candidates = _class_candidates(root)
    if len(candidates) < 2 or _split_kind(root) or any(map(_is_d4_inner, candidates)):
        return None
    with_images = [d for d in candidates if _has_images_subdir(d)]
    if len(with_images) == len(candidates):
        return "D4"
    if not with_images and any(f.is_file() and has_image_extension(f) for d in candidates for f in _visible_entries(d)):
        return "D3"
    return None


def _folder_kind(root: Path) -> bool:
    if _split_kind(root):
        return True
    candidates = _class_candidates(root)
    return len(candidates) >= 2 and not any(map(_is_d4_inner, candidates))


def _class_dirs(directory: Path, root: Path, skipped: list, expected: str | None = None) -> list[Path]:
    """The class folders of `directory` (non-hidden subfolders), with loose files and
    hidden/junk folders reported as skipped."""
    class_dirs = []
    for entry in _visible_entries(directory):
        if _is_junk(entry):
            _skip_entry(entry, root, "hidden or system entry", skipped)
        elif entry.is_dir():
            class_dirs.append(entry)
        else:
            skipped.append({"file": _rel(entry, root), "reason": "not inside a class folder"})
    inner = sorted(d.name + "/" for d in class_dirs if _is_d4_inner(d))
    if inner:
        raise LayoutError(
            f"{directory}: holds {' and '.join(inner)}, the insides of one class folder of "
            "the D4 layout, not class folders; at least 2 classes are needed, one folder "
            "per class (a D4 tree is prepared with covid19_radiography)."
            + (f" Expected layout:\n{expected}" if expected else "")
        )
    if len(class_dirs) < 2:
        names = [d.name for d in class_dirs]
        raise LayoutError(
            f"{directory}: found {len(class_dirs)} class folder(s) {names}; "
            "a classification dataset needs at least 2 classes."
            + (f" Expected layout:\n{expected}" if expected else "")
        )
    return class_dirs


def _is_image_file(entry: Path, root: Path, skipped: list, *, nested: str) -> bool:
    """Whether `entry` of a folder of image files is one to read; anything else (a hidden
    or system entry, a folder -- skipped with the reason `nested` --, a file that is not
    an image or not a regular file) is reported as skipped, with why."""
    if _is_junk(entry):
        _skip_entry(entry, root, "hidden or system entry", skipped)
    elif entry.is_dir():
        _skip_dir(entry, root, nested, skipped)
    elif not has_image_extension(entry):
        skipped.append(
            {"file": _rel(entry, root), "reason": f"not an image file (extension {entry.suffix or 'none'!r})"}
        )
    elif (problem := regular_file_problem(entry)) is not None:
        skipped.append({"file": _rel(entry, root), "reason": problem})
    else:
        return True
    return False


def _scan_flat_class(
    root: Path, class_dir: Path, class_name: str, split: str | None, skipped: list, *, expected: str
) -> list[SourceImage]:
    images = []
    nested = "nested folder inside a class folder; only files directly in the class folder are read"
    for entry in _visible_entries(class_dir):
        if _is_image_file(entry, root, skipped, nested=nested):
            images.append(SourceImage(path=entry, relpath=_rel(entry, root), class_name=class_name, given_split=split))
    if not images:
        hint = ""
        if _has_images_subdir(class_dir):
            hint = (
                " It has an images/ subfolder: this is the D4 layout of the COVID-19 "
                "Radiography Database; prepare it with covid19_radiography."
            )
        raise LayoutError(f"{class_dir}: class folder contains no image files.{hint} Expected layout:\n{expected}")
    return images


def _scan_d4_class(root: Path, class_dir: Path, skipped: list) -> list[SourceImage]:
    images_dir = masks_dir = None
    for entry in _visible_entries(class_dir):
        lower = entry.name.lower()
        if _is_junk(entry):
            _skip_entry(entry, root, "hidden or system entry", skipped)
        elif entry.is_dir() and lower == "images":
            images_dir = entry
        elif entry.is_dir() and lower == "masks":
            masks_dir = entry
        else:
            _skip_entry(entry, root, "not in images/ or masks/ of a D4 class folder", skipped)
    masks: dict[str, Path] = {}
    if masks_dir is not None:
        for entry in _visible_entries(masks_dir):
            if _is_image_file(entry, root, skipped, nested="nested folder inside masks/"):
                masks[entry.name] = entry
    images = _scan_flat_class(root, images_dir, class_dir.name, None, skipped, expected=D4_LAYOUT)
    used_masks = set()
    with_masks = []
    for image in images:
        mask = masks.get(image.path.name)
        if mask is not None:
            used_masks.add(mask.name)
        with_masks.append(dataclasses.replace(image, mask_path=mask))
    for name in sorted(set(masks) - used_masks):
        skipped.append({"file": _rel(masks[name], root), "reason": "lung mask without a matching file in images/"})
    return with_masks


def _skip_root_leftovers(root: Path, keep: set[Path], skipped: list) -> None:
    for entry in _visible_entries(root):
        if entry in keep:
            continue
        if _is_junk(entry):
            _skip_entry(entry, root, "hidden or system entry", skipped)
        elif entry.is_dir():
            _skip_dir(entry, root, "not a train/validation/test folder", skipped)
        else:
            skipped.append({"file": _rel(entry, root), "reason": "not inside a split folder"})

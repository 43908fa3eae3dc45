"""Where each image came from (its source) and which images belong together (groups).

Why: the COVID-19 datasets are merged from public collections, and in D4 each class
comes mostly from its own collections (COVID from SIRM, GitHub repositories and papers,
Normal and Lung_Opacity from the RSNA challenge on Kaggle, ...). A CNN can then score
well by recognising the collection (scanner, processing, text markers) instead of the
disease (DeGrave et al., Nature Machine Intelligence 2021). Knowing each image's source
lets preparation hold out whole sources (`split_by="source"`) and evaluation report
per-source metrics and how well the model's features predict the source.

Sources: D4 ships `<Class>.metadata.xlsx` next to the class folders, with columns
`FILE NAME` (the image's name without extension, e.g. `COVID-1`; Normal's says
`NORMAL-1` for `Normal-1.png`, so names match case-insensitively, with or without an
image extension), `FORMAT`, `SIZE` and `URL`. The source is the URL's host without
`www.` (`sirm.org`), plus the owner for github.com (`github.com/ieee8023`: each
repository owner is its own collection) and the competition or owner for kaggle.com
(`kaggle.com/c/rsna-pneumonia-detection-challenge`, `kaggle.com/paultimothymooney`:
Kaggle hosts unrelated collections). A value that is not a URL is a collection name and
kept as written. An image without a row (or with an empty URL) gets `UNKNOWN_SOURCE`.

Groups file (any folder builder, option `groups_file`): a CSV with a header row, one
column naming the image (`file_name`: the path relative to the dataset folder, the file
name, or the name without extension; matched case-insensitively) and one with its
group (`group`, e.g. a patient id), optionally a `source` column that overrides the
metadata's source. A row that matches no image, or several (a bare file name present in
two class folders), is counted and reported, never applied.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cxrjax.data.decode import has_image_extension
from cxrjax.data.errors import DataError

METADATA_SUFFIX = ".metadata.xlsx"
UNKNOWN_SOURCE = "unknown"
NO_SOURCE = ""  # datasets without any source information
_FILE_COLUMNS = ("file_name", "filename", "file", "image", "image_id", "image_name", "path")
_GROUP_COLUMNS = ("group", "group_id", "patient", "patient_id", "patientid", "subject", "subject_id")
_SOURCE_COLUMNS = ("source",)
GROUPS_FORMAT = """\
a CSV file with a header row and the columns
  file_name   the image: its path relative to the dataset folder, its file name, or its
              name without extension (matched case-insensitively)
  group       its group, e.g. a patient id (images of one group stay in one split)
  source      optional: its source (collection), used by split_by="source"
e.g.
  file_name,group
  COVID/images/COVID-1.png,patient-017"""


class GroupsFileError(DataError):
    """A groups file that cannot be used; the message names it and the expected format."""


def source_from_url(value: Any) -> str:
    """The source named by a metadata URL (see the module docstring); UNKNOWN_SOURCE if empty."""
    text = "" if value is None else str(value).strip()
    if not text:
        return UNKNOWN_SOURCE
    parsed = urlsplit(text if "://" in text else "//" + text)
    try:
        host = parsed.hostname or ""
    except ValueError:  # e.g. an unbalanced "[" in a free-text value
        host = ""
    if "." not in host or " " in text.split("/")[0]:
        return text  # a collection name, not a URL
    host = host.removeprefix("www.")
    parts = [p for p in parsed.path.split("/") if p]
    if host == "github.com" and parts:
        return f"github.com/{parts[0].lower()}"
    if host == "kaggle.com" and parts:
        if parts[0].lower() in ("c", "competitions") and len(parts) > 1:
            return f"kaggle.com/c/{parts[1].lower()}"
        if parts[0].lower() == "datasets" and len(parts) > 1:
            return f"kaggle.com/{parts[1].lower()}"
        return f"kaggle.com/{parts[0].lower()}"
    return host


def name_key(name: str) -> str:
    """How image names are compared: lower case, '/'-separated, without an image extension."""
    text = str(name).strip().replace("\\", "/").removeprefix("./").lower()
    return text.rsplit(".", 1)[0] if has_image_extension(Path(text)) else text


def _header_index(header: Sequence[Any], names: Sequence[str]) -> int | None:
    normalized = [str(h or "").strip().lower().replace(" ", "_").replace("-", "_") for h in header]
    for name in names:
        if name in normalized:
            return normalized.index(name)
    return None


@dataclasses.dataclass
class ClassMetadata:
    """One `<Class>.metadata.xlsx`: source per image name key, or why it was not read."""

    path: Path
    sources: dict[str, str]
    error: str | None = None


def read_metadata_xlsx(path: Path) -> ClassMetadata:
    """The `FILE NAME` -> source rows of a D4 metadata workbook (first sheet). A file that
    cannot be read, or lacks the columns, gives an error text instead (the caller reports
    it; its images get UNKNOWN_SOURCE)."""
    import openpyxl  # only needed when a dataset has metadata

    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as error:  # noqa: BLE001 - a corrupt workbook raises zip, XML or openpyxl errors
        return ClassMetadata(path, {}, f"not a readable .xlsx workbook ({type(error).__name__}: {error})")
    try:
        rows = workbook.worksheets[0].iter_rows(values_only=True) if workbook.worksheets else iter(())
        header = next((row for row in rows if any(v not in (None, "") for v in row)), None)
        if header is None:
            return ClassMetadata(path, {}, "the workbook is empty")
        file_col = _header_index(header, ("file_name", "filename"))
        url_col = _header_index(header, ("url",))
        if file_col is None or url_col is None:
            found = [str(h) for h in header if h not in (None, "")]
            return ClassMetadata(path, {}, f"its first sheet has no 'FILE NAME' and 'URL' columns (found {found})")
        sources = {}
        for row in rows:
            if file_col >= len(row) or row[file_col] in (None, ""):
                continue
            url = row[url_col] if url_col < len(row) else None
            sources.setdefault(name_key(row[file_col]), source_from_url(url))
        return ClassMetadata(path, sources)
    finally:
        workbook.close()


def radiography_sources(root: Path, class_names: Sequence[str], images: Sequence[Any]) -> tuple[list[str], dict]:
    """(source per image, the report's `sources` part) for a D4/D3 tree at `root`.

    images: `layouts.SourceImage`s. The metadata of class C is `root/C.metadata.xlsx`
    (name matched case-insensitively). Without any metadata file every image gets
    NO_SOURCE (the dataset works as without sources). The report part lists the
    workbooks read ({"file", "rows", "error"}), the images per source and the images
    without a row (`unknown`).
    """
    workbooks = {}
    if root.is_dir():
        for entry in sorted(root.iterdir(), key=lambda p: p.name):
            if entry.is_file() and entry.name.lower().endswith(METADATA_SUFFIX):
                workbooks[entry.name[: -len(METADATA_SUFFIX)].lower()] = entry
    if not workbooks:
        return [NO_SOURCE] * len(images), {"metadata_files": [], "unknown": 0, "per_source": {}}
    metadata = {name: read_metadata_xlsx(path) for name, path in workbooks.items()}
    sources = []
    for image in images:
        table = metadata.get(image.class_name.lower())
        sources.append(table.sources.get(name_key(image.path.name), UNKNOWN_SOURCE) if table else UNKNOWN_SOURCE)
    classes = {c.lower() for c in class_names}
    files = []
    for name, table in metadata.items():
        entry = {"file": table.path.name, "rows": len(table.sources), "error": table.error}
        if name not in classes:
            entry["error"] = entry["error"] or f"no class folder named {table.path.name[: -len(METADATA_SUFFIX)]!r}"
        files.append(entry)
    counts = collections.Counter(sources)
    return sources, {
        "metadata_files": files,
        "unknown": int(counts.get(UNKNOWN_SOURCE, 0)),
        "per_source": dict(sorted(counts.items())),
    }


@dataclasses.dataclass(frozen=True)
class GroupsTable:
    """The rows of a groups file: (file name as written, group or None, source or None)."""

    path: Path
    rows: list[tuple[str, str | None, str | None]]
    has_group: bool
    has_source: bool


def read_groups_file(path: str | Path) -> GroupsTable:
    """Reads a groups file (format: GROUPS_FORMAT); GroupsFileError names the file and the
    format when it is missing, unreadable, or lacks the columns."""
    path = Path(path)

    def fail(problem: str) -> GroupsFileError:
        return GroupsFileError(f"{path}: {problem}. The groups file (option groups_file) must be {GROUPS_FORMAT}")

    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise fail("groups file does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise fail(f"cannot read the groups file ({error})") from None
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    try:
        table = [row for row in csv.reader(io.StringIO(text), dialect) if any(cell.strip() for cell in row)]
    except csv.Error as error:
        raise fail(f"not a readable CSV file ({error})") from None
    if not table:
        raise fail("the groups file is empty")
    header = table[0]
    file_col = _header_index(header, _FILE_COLUMNS)
    group_col = _header_index(header, _GROUP_COLUMNS)
    source_col = _header_index(header, _SOURCE_COLUMNS)
    if file_col is None or (group_col is None and source_col is None):
        raise fail(f"its header {header} lacks a file_name column and a group (or source) column")

    def cell(row: list[str], col: int | None) -> str | None:
        if col is None or col >= len(row):
            return None
        return row[col].strip() or None

    rows = [
        (row[file_col].strip(), cell(row, group_col), cell(row, source_col)) for row in table[1:] if cell(row, file_col)
    ]
    return GroupsTable(path=path, rows=rows, has_group=group_col is not None, has_source=source_col is not None)


def match_groups(table: GroupsTable, relpaths: Sequence[str]) -> tuple[list[str], list[str | None], dict[str, Any]]:
    """(group per image, "" where none; source per image from the file, None where none;
    the report's `groups` part) for images with these relative paths.

    A row names an image by its relative path if one matches, else by its file name if
    exactly one image has it. Rows matching nothing or several images are counted (the
    first few named), not applied. One image given two different groups (or sources) is
    a GroupsFileError.
    """
    by_path: dict[str, list[int]] = collections.defaultdict(list)
    by_name: dict[str, list[int]] = collections.defaultdict(list)
    for index, relpath in enumerate(relpaths):
        by_path[name_key(relpath)].append(index)
        by_name[name_key(relpath.rsplit("/", 1)[-1])].append(index)
    groups: list[str] = [""] * len(relpaths)
    sources: list[str | None] = [None] * len(relpaths)
    unmatched, ambiguous = [], []
    for name, group, source in table.rows:
        key = name_key(name)
        candidates = by_path.get(key) or by_name.get(key) or []
        if len(candidates) != 1:
            (ambiguous if candidates else unmatched).append(name)
            continue
        index = candidates[0]
        for values, value, what in ((groups, group, "groups"), (sources, source, "sources")):
            if value is None:
                continue
            if values[index] not in ("", None) and values[index] != value:
                raise GroupsFileError(
                    f"{table.path}: {relpaths[index]} is given two {what} ({values[index]!r} and {value!r}); "
                    "give each image one."
                )
            values[index] = value
    grouped = [g for g in groups if g]
    report = {
        "file": str(table.path),
        "rows": len(table.rows),
        "groups": len(set(grouped)),
        "images_with_group": len(grouped),
        "images_without_group": len(groups) - len(grouped),
        "unmatched_rows": len(unmatched),
        "unmatched_examples": unmatched[:5],
        "ambiguous_rows": len(ambiguous),
        "ambiguous_examples": ambiguous[:5],
    }
    return groups, sources, report


def groups_warnings(report: dict[str, Any]) -> list[str]:
    """Warning lines for rows of a groups file that were not applied."""
    lines = []
    if report["unmatched_rows"]:
        lines.append(
            f"{report['file']}: {report['unmatched_rows']} of {report['rows']} rows name no prepared image "
            f"(e.g. {', '.join(report['unmatched_examples'])}); they were ignored. Check the names (a path "
            "relative to the dataset folder, a file name, or a name without extension)."
        )
    if report["ambiguous_rows"]:
        lines.append(
            f"{report['file']}: {report['ambiguous_rows']} rows name a file found in several folders "
            f"(e.g. {', '.join(report['ambiguous_examples'])}); they were ignored. Give the path relative "
            "to the dataset folder instead."
        )
    return lines

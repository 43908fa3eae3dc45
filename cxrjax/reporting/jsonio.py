"""Strict JSON files written atomically: every report, run file and summary of cxrjax.

JSON has no NaN or infinity, and numpy scalars are not JSON: :func:`json_ready` turns the
first into ``null`` and the second into Python numbers, so every file cxrjax writes is
strict JSON that any reader accepts. Files are written to a temporary name and renamed,
so a kill never leaves half a file behind.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable


def json_ready(value: Any) -> Any:
    """Replace NaN/inf by None and numpy scalars by Python ones, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | Path, value: Any) -> None:
    """Write ``value`` as indented strict JSON, atomically (tmp file + rename)."""
    _replace(Path(path), json.dumps(json_ready(value), indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Write one strict-JSON line per record, atomically."""
    _replace(Path(path), "".join(json.dumps(json_ready(r)) + "\n" for r in records))


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(json_ready(record)) + "\n")


def read_jsonl(path: str | Path, *, allow_torn_tail: bool = False) -> list[dict[str, Any]]:
    """Every record of a JSON-lines file ([] when it does not exist); blank lines skipped.

    ``allow_torn_tail``: a last line that is not valid JSON (what a kill during
    :func:`append_jsonl` leaves) is dropped. Any other invalid line: ValueError naming it.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if allow_torn_tail and i == len(lines) - 1:
                break
            raise ValueError(f"{path}, line {i + 1}: not valid JSON ({err})") from err
    return records

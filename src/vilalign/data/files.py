"""Reading dataset files with errors that name the file, the line and the field."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from vilalign.data.images import DataFormatError


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing or malformed file raises DataFormatError naming it."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}:{err.lineno}: not valid JSON: {err.msg}") from None


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; a broken line names file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{path}:{lineno}: not valid JSON: {err.msg}") from None
            if not isinstance(obj, dict):
                raise DataFormatError(f"{path}:{lineno}: expected a JSON object")
            yield lineno, obj


def read_csv_rows(path: str | Path, columns: int) -> Iterator[tuple[int, list[str]]]:
    """(line number, row) of a header-less CSV whose rows must have ``columns`` fields."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        for row in reader:
            if not row:
                continue
            if len(row) != columns:
                raise DataFormatError(
                    f"{path}:{reader.line_num}: expected {columns} fields, got {len(row)}"
                )
            yield reader.line_num, row


def require(obj: Mapping[str, Any], field: str, where: str) -> Any:
    """``obj[field]``, or DataFormatError naming the field and where (file:line)."""
    if field not in obj or obj[field] is None:
        raise DataFormatError(f"{where}: missing field {field!r}")
    return obj[field]

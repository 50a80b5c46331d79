"""Reading dataset files with errors that name the file, the line and the field.

Problems with one record (a broken JSON line, a row with the wrong number of fields, a
line that is not UTF-8) go through the reader's :class:`~vilalign.data.records.BadRecords`
when it passes one: an error naming the file and line by default, a counted skip under
``data.on_bad_record: skip``. Problems with a whole file (missing, empty, not JSON) are
always errors.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from vilalign.data.images import DataFormatError
from vilalign.data.records import BadRecords


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing, non-UTF-8 or malformed file is a DataFormatError naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    try:
        return json.loads(decode_utf8(data, str(path)))
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}:{err.lineno}: not valid JSON: {err.msg}") from None


def decode_utf8(data: bytes, where: str, whole_file: bool = True) -> str:
    """``data`` as UTF-8 text; a bad byte is a DataFormatError naming ``where`` and the byte
    (its line and column in a ``whole_file``, its column in a single line)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        byte = data[err.start : err.start + 1].hex()
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        lineno = data.count(b"\n", 0, err.start) + 1
        line = f"line {lineno}, " if whole_file else ""
        raise DataFormatError(
            f"{where}: not UTF-8: byte 0x{byte} at {line}column {column} (re-save it as UTF-8)"
        ) from None


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of a file that must exist and hold at least one non-blank line."""
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    found = False
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if raw.strip():
                found = True
                yield lineno, raw
    if not found:
        raise DataFormatError(f"{path}: empty file (no records)")


def _text_lines(path: Path, bad: BadRecords) -> Iterator[tuple[int, str, str]]:
    """(line number, "file:line", text) of every non-blank line; a line that is not UTF-8
    is rejected through ``bad`` (an error, or skipped and counted)."""
    for lineno, raw in _lines(path):
        where = f"{path}:{lineno}"
        try:
            yield lineno, where, decode_utf8(raw, where, whole_file=False).rstrip("\r\n")
        except DataFormatError as err:
            bad.reject(str(err))


def read_jsonl(
    path: str | Path, bad: BadRecords | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; a broken line names file and line."""
    bad = bad or BadRecords()
    for lineno, where, line in _text_lines(Path(path), bad):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            bad.reject(f"{where}: not valid JSON: {err.msg}")
            continue
        if not isinstance(obj, dict):
            bad.reject(f"{where}: expected a JSON object")
            continue
        yield lineno, obj


def read_csv_rows(
    path: str | Path, columns: int, bad: BadRecords | None = None
) -> Iterator[tuple[int, list[str]]]:
    """(line number, row) of a header-less CSV with one row per line, ``columns`` fields each.

    Each line is parsed on its own: a quote left open is reported on the line that opens it
    (a whole-file parse would carry it on, swallowing the lines after it, and report the
    end of the file).
    """
    bad = bad or BadRecords()
    for lineno, where, line in _text_lines(Path(path), bad):
        try:
            row = next(csv.reader([line], strict=True))
        except csv.Error as err:
            reason = "a quote is opened and never closed" if "end of data" in str(err) else err
            bad.reject(f"{where}: {reason}")
            continue
        if len(row) != columns:
            bad.reject(f"{where}: expected {columns} fields, got {len(row)}")
            continue
        yield lineno, row


def require(obj: Mapping[str, Any], field: str, where: str) -> Any:
    """``obj[field]``, or DataFormatError naming the field and where (file:line)."""
    if field not in obj or obj[field] is None:
        raise DataFormatError(f"{where}: missing field {field!r}")
    return obj[field]

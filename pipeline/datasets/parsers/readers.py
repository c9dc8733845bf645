"""Tolerant readers of annotation files: text lists, CSV and JSON with line numbers.

Official annotation files come with CRLF line endings, a UTF-8 byte-order mark, blank trailing
lines and quoted CSV fields holding commas, quotes and newlines; these readers absorb all of
that once, so that each parser only deals with its dataset's own layout. They never raise on
bad content: problems go to the :class:`~pipeline.datasets.parsers.common.ProblemLog` with file and
line, and the reader carries on or returns ``None``.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pipeline.datasets.parsers.common import ProblemLog

__all__ = ["JsonLocator", "read_csv", "read_json", "read_lines", "sniff_delimiter"]


def _decode(path: Path, log: ProblemLog) -> str | None:
    # utf-8-sig drops a byte-order mark; files are read whole so line numbers stay exact.
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        log.add(path, None, f"not UTF-8 text: {err}")
    except OSError as err:
        log.add(path, None, f"cannot read: {err}")
    return None


def _split_lines(text: str) -> list[str]:
    # Not str.splitlines(): that also breaks at U+2028 and friends, which JSON strings may
    # hold raw, and would shift every later line number.
    return [line.removesuffix("\r") for line in text.split("\n")]


def read_lines(path: Path, log: ProblemLog) -> list[tuple[int, str]]:
    """Non-blank lines of a text file, stripped, with their 1-based line numbers."""
    text = _decode(path, log)
    if text is None:
        return []
    return [(n, s.strip()) for n, s in enumerate(_split_lines(text), 1) if s.strip()]


# Delimiters recognised in a .csv file; on a tie the earlier wins: a tab or a semicolon inside
# a caption is rarer than a comma.
_DELIMITERS = ("\t", ";", ",")
_SNIFF_RECORDS = 50


def _records(text: str, delimiter: str) -> list[list[str]]:
    """The first non-blank records of ``text`` split by ``delimiter`` (empty if it fails)."""
    out: list[list[str]] = []
    try:
        for cells in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter):
            if any(c.strip() for c in cells):
                out.append(cells)
            if len(out) == _SNIFF_RECORDS:
                break
    except csv.Error:
        return []
    return out


def sniff_delimiter(text: str, names: Iterable[str], width: int | None = None) -> str:
    """The delimiter of a CSV text: comma, semicolon or tab.

    Args:
        text: the file's text.
        names: column names a header may hold.
        width: for a file without a header, the number of columns each record has.

    Returns:
        With a header, the delimiter that splits the first record into the most known column
        names; without one, the delimiter that splits the most of the first 50 records into
        ``width`` fields. Ties go to tab, then semicolon, then comma.
    """
    known = set(names)

    def score(delimiter: str) -> tuple[int, int]:
        records = _records(text, delimiter)
        if not records:
            return (-1, 0)
        if width is not None:
            return (sum(len(r) == width for r in records), 0)
        return (sum(c.strip() in known for c in records[0]), len(records[0]))

    return max(_DELIMITERS, key=score)


def read_csv(
    path: Path, log: ProblemLog, required: Iterable[str], one_of: Iterable[str] = (),
    delimiter: str | None = ",", columns: Sequence[str] = (),
) -> list[tuple[int, dict[str, str]]] | None:
    """Rows of a CSV file, keyed by column name, with their first line number.

    Args:
        path: the file; quoted fields may hold delimiters, doubled quotes and newlines.
        log: where problems go.
        required: columns that must be in the header.
        one_of: columns of which at least one must be in the header.
        delimiter: the field delimiter; ``None`` recognises it (see :func:`sniff_delimiter`).
        columns: the column names of a file without a header row (then every row is data);
            empty when the first row is the header.

    Returns:
        ``(line, row)`` pairs (blank rows skipped), or ``None`` when the header lacks a column.
    """
    text = _decode(path, log)
    if text is None:
        return None
    required, one_of = list(required), list(one_of)
    if delimiter is None:
        delimiter = sniff_delimiter(text, [*required, *one_of, *columns],
                                    len(columns) if columns else None)
    # newline="" keeps each line's own ending, so CRLF files and newlines inside quoted
    # fields parse as the csv module expects, and line_num counts physical lines.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = list(columns) or None
    rows: list[tuple[int, dict[str, str]]] = []
    start = 1
    shown = {",": "comma", ";": "semicolon", "\t": "tab"}.get(delimiter, repr(delimiter))
    try:
        for cells in reader:
            line, start = start, reader.line_num + 1
            if not any(c.strip() for c in cells):
                continue
            if header is None:
                header = [c.strip() for c in cells]
                missing = [c for c in required if c not in header]
                if one_of and not set(one_of) & set(header):
                    missing.append(" or ".join(one_of))
                if missing:
                    log.add(path, line, f"missing column(s) {', '.join(missing)}; header "
                                        f"({shown}-delimited) is {delimiter.join(header)}")
                    return None
                continue
            if len(cells) != len(header):
                log.add(path, line, f"{len(cells)} fields ({shown}-delimited), "
                                    f"{'--columns gives' if columns else 'the header has'} "
                                    f"{len(header)}")
                continue
            rows.append((line, dict(zip(header, cells, strict=True))))
    except csv.Error as err:
        log.add(path, reader.line_num, f"malformed CSV: {err}")
        return None
    if header is None:
        log.add(path, None, "empty file: no header")
        return None
    return rows


class JsonLocator:
    """Finds the line on which a value of a parsed JSON document starts.

    Parsers report problems by path (``locator.line("sentences", 17)``); the offsets of a
    container's children are worked out on the first problem inside it and cached, so a
    clean file costs nothing beyond ``json.loads``.
    """

    _WS = re.compile(r"[ \t\n\r]*")

    def __init__(self, text: str) -> None:
        self._text = text
        self._decoder = json.JSONDecoder()
        self._newlines: list[int] | None = None
        self._children: dict[tuple, dict[Any, int]] = {}

    def _skip(self, pos: int) -> int:
        return self._WS.match(self._text, pos).end()

    def _offsets(self, path: tuple) -> dict[Any, int]:
        if path in self._children:
            return self._children[path]
        pos = self._skip(0) if not path else self._offsets(path[:-1])[path[-1]]
        text, decode, out = self._text, self._decoder.raw_decode, {}
        closing = {"[": "]", "{": "}"}.get(text[pos])
        pos = self._skip(pos + 1)
        index = 0
        while closing is not None and text[pos] != closing:
            if closing == "}":
                key, pos = decode(text, pos)
                pos = self._skip(self._skip(pos) + 1)  # past the colon
            else:
                key, index = index, index + 1
            out[key] = pos
            pos = self._skip(decode(text, pos)[1])
            if text[pos] == ",":
                pos = self._skip(pos + 1)
        self._children[path] = out
        return out

    def line(self, *path: str | int) -> int | None:
        """1-based line of the value at ``path`` (object keys and array indices)."""
        try:
            offset = self._offsets(tuple(path[:-1]))[path[-1]] if path else self._skip(0)
        except (KeyError, IndexError, ValueError):
            return None
        if self._newlines is None:
            self._newlines = [m.start() for m in re.finditer("\n", self._text)]
        return bisect.bisect_left(self._newlines, offset) + 1


def read_json(path: Path, log: ProblemLog) -> tuple[Any, JsonLocator] | None:
    """A JSON document and a locator for its values' lines, or ``None`` if it does not parse."""
    text = _decode(path, log)
    if text is None:
        return None
    try:
        return json.loads(text), JsonLocator(text)
    except json.JSONDecodeError as err:
        log.add(path, err.lineno, f"invalid JSON: {err.msg} (column {err.colno})")
        return None

"""The generic annotation format: a ``.csv``, ``.tsv`` or ``.jsonl`` file naming each video's path.

Each row (CSV/TSV) or line (JSONL) has ``path`` (relative to the dataset root) and optionally a
``split``, a ``caption`` string or a ``captions`` list (in CSV, a JSON list in one cell) and a
``video_id`` (default: the path without its last extension). A row with a path only is a video
without captions: it can be sharded, indexed and searched, not trained or evaluated on. Rows
that share a video id accumulate their captions in file order, duplicates kept. The
``synthetic`` dataset's ``annotations.jsonl`` is a file of this format.

Dialects found in the wild: a ``.csv`` may be delimited by commas, semicolons (spreadsheets in
many locales) or tabs, and the delimiter is recognised from the file; a ``.tsv`` is
tab-delimited. A file without a header row (``caption<TAB>path``, as Conceptual Captions and
the tools built on it write them) is read with its column names given by the descriptor's
``columns`` (``--columns caption,path``). A file without a ``split`` column holds one split:
its rows belong to the split asked for (``DEFAULT_SPLIT`` when none is).

Default ids that collide (``clip.mp4`` and ``clip.avi`` in one folder) keep their extension
(``clip.mp4``, ``clip.avi``); ids are worked out over the whole file, so a video has the same
id whichever split is read.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.datasets.parsers.common import (
    Descriptor,
    Entry,
    Format,
    FormatSchema,
    ProblemLog,
    check_relative_path,
)
from pipeline.datasets.parsers.readers import read_csv, read_lines

__all__ = [
    "COLUMNS",
    "CSV",
    "DEFAULT_SPLIT",
    "JSONL",
    "SCHEMA",
    "TSV",
    "default_video_id",
    "parse_csv",
    "parse_jsonl",
    "parse_tsv",
]

SCHEMA = FormatSchema(annotations={"file": True}, videos=False)
#: The split of a row that names none: videos listed for searching, not for training.
DEFAULT_SPLIT = "test"

#: Columns a generic file may have.
COLUMNS = ("video_id", "path", "caption", "captions", "split")

# A parsed row that passed its checks: line, row, normalised path, captions.
_Row = tuple[int, dict[str, Any], str, list[str]]


def default_video_id(path: str) -> str:
    """The path without the last extension of its file name (``videos/a.mp4`` -> ``videos/a``)."""
    folder, _, name = path.rpartition("/")
    stem = name.rsplit(".", 1)[0] if name.rfind(".") > 0 else name
    return f"{folder}/{stem}" if folder else stem


def _captions(row: dict[str, Any]) -> tuple[list[str], str | None]:
    """The row's captions (``captions`` first, then ``caption``; none at all is allowed) or why
    they are unusable."""
    found: list[Any] = []
    if "captions" in row:
        if not isinstance(row["captions"], list):
            return [], f"'captions' must be a list of strings, got {row['captions']!r}"
        found.extend(row["captions"])
    if "caption" in row:
        found.append(row["caption"])
    if "captions" in row and not found and "caption" not in row:
        return [], "'captions' lists no caption: leave it out for a video without captions"
    bad = [c for c in found if not isinstance(c, str) or not c.strip()]
    if bad:
        return [], f"captions must be non-empty strings, got {bad[0]!r}"
    return [c.strip() for c in found], None


def _row_problems(desc: Descriptor, row: dict[str, Any]) -> list[str]:
    problems = [p for p in [check_relative_path(row.get("path"))] if p]
    split = row.setdefault("split", DEFAULT_SPLIT)
    if split not in desc.split_names:
        problems.append(f"unknown split {split!r}; {desc.name} has "
                        f"{', '.join(desc.split_names)}")
    video_id = row.get("video_id")
    if video_id is not None and (not isinstance(video_id, str) or not video_id.strip()):
        problems.append(f"'video_id' must be a non-empty string, got {video_id!r}")
    return problems


def _checked_rows(
    desc: Descriptor, file: Path, rows: list[tuple[int, dict[str, Any]]], log: ProblemLog,
    splits: tuple[str, ...], fill: str | None,
) -> list[_Row]:
    """Rows that pass their checks, of every split; problems of rows in ``splits`` are logged.

    A row whose split is not a split of the dataset belongs to none, so its problems are
    always reported; other splits' rows are checked only when those splits are read. ``fill``
    is the split of every row of a file without a split column.
    """
    good = []
    for line, row in rows:
        if fill is not None:
            row = {**row, "split": fill}
        problems = _row_problems(desc, row)
        captions, caption_problem = _captions(row)
        problems += [caption_problem] if caption_problem else []
        if row.get("split") in splits or row.get("split") not in desc.split_names:
            for message in problems:
                log.add(file, line, message)
        if not problems:
            good.append((line, row, PurePosixPath(row["path"].strip()).as_posix(), captions))
    return good


def _video_ids(rows: list[_Row]) -> list[str]:
    """Each row's video id: its ``video_id``, else its default id.

    Default ids that two different files would share keep their extension (the whole path),
    so ``clip.mp4`` and ``clip.avi`` become two videos instead of one conflict.
    """
    paths_of: dict[str, set[str]] = defaultdict(set)
    for _, row, path, _ in rows:
        if "video_id" not in row:
            paths_of[default_video_id(path)].add(path)
    ids = []
    for _, row, path, _ in rows:
        if "video_id" in row:
            ids.append(row["video_id"].strip())
        else:
            stem = default_video_id(path)
            ids.append(path if len(paths_of[stem]) > 1 else stem)
    return ids


def _collect(
    desc: Descriptor, file: Path, rows: list[tuple[int, dict[str, Any]]], log: ProblemLog,
    splits: tuple[str, ...],
) -> list[Entry]:
    """Rows -> one entry per video id of ``splits``; conflicting paths or splits are problems.

    Conflicts are looked for over the whole file, since it is read whole anyway: a video of
    the split read that another split also lists is reported.
    """
    one_split = bool(rows) and all("split" not in row for _, row in rows)
    if one_split and len(splits) > 1:
        log.add(file, None, "no 'split' column: the file holds one split; name it (--split)")
        return []
    checked = _checked_rows(desc, file, rows, log, splits, splits[0] if one_split else None)
    videos: dict[str, Entry] = {}
    owner_of_path: dict[str, str] = {}
    shown = log.show(file)

    def report(line: int, first: Entry, split: str, message: str) -> None:
        # A conflict with a row of another split is a problem of the split read.
        if split in splits or first.split in splits:
            log.add(file, line, message, "duplicate")

    for (line, row, path, captions), video_id in zip(checked, _video_ids(checked), strict=True):
        split, known = row["split"], videos.get(video_id)
        if known is None:
            if path in owner_of_path:
                first = videos[owner_of_path[path]]
                report(line, first, split, f"path {path!r} is already video "
                                           f"{first.video_id!r} ({first.source})")
                continue
            owner_of_path[path] = video_id
            videos[video_id] = Entry(video_id, split, captions, f"{shown}:{line}", path)
        elif known.path != path:
            report(line, known, split, f"video id {video_id!r} names both {known.path} "
                                       f"({known.source}) and {path}; give each file its own "
                                       "id in a 'video_id' column")
        elif known.split != split:
            report(line, known, split, f"video {video_id!r} is {split}/{path} here but "
                                       f"{known.split}/{known.path} at {known.source}")
        else:
            known.captions.extend(captions)
    return [entry for entry in videos.values() if entry.split in splits]


def _annotation_file(desc: Descriptor, root: Path, log: ProblemLog) -> Path | None:
    return desc.expect(root, desc.annotations["file"][0], log)


def parse_jsonl(
    desc: Descriptor, root: Path, log: ProblemLog, splits: tuple[str, ...]
) -> list[Entry]:
    """Entries of ``splits`` in a JSON-lines file (one object per line; blank lines skipped)."""
    file = _annotation_file(desc, root, log)
    if file is None:
        return []
    rows = []
    for line, text in read_lines(file, log):
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            log.add(file, line, f"invalid JSON: {err.msg} (column {err.colno})")
            continue
        if not isinstance(row, dict):
            log.add(file, line, f"expected a JSON object, got {type(row).__name__}")
            continue
        rows.append((line, row))
    return _collect(desc, file, rows, log, splits)


def _parse_table(
    desc: Descriptor, root: Path, log: ProblemLog, splits: tuple[str, ...],
    delimiter: str | None,
) -> list[Entry]:
    file = _annotation_file(desc, root, log)
    if file is None:
        return []
    table = read_csv(file, log, required=("path",), delimiter=delimiter, columns=desc.columns)
    rows = []
    for line, cells in table or []:
        row: dict[str, Any] = {k: v.strip() for k, v in cells.items() if v.strip()}
        if "captions" in row:
            try:
                row["captions"] = json.loads(row["captions"])
            except json.JSONDecodeError as err:
                log.add(file, line, f"'captions' is not a JSON list: {err.msg}")
                continue
        rows.append((line, row))
    return _collect(desc, file, rows, log, splits)


def parse_csv(
    desc: Descriptor, root: Path, log: ProblemLog, splits: tuple[str, ...]
) -> list[Entry]:
    """Entries of ``splits`` in a CSV file delimited by commas, semicolons or tabs.

    Empty cells count as absent; ``captions`` cells hold JSON lists.
    """
    return _parse_table(desc, root, log, splits, delimiter=None)


def parse_tsv(
    desc: Descriptor, root: Path, log: ProblemLog, splits: tuple[str, ...]
) -> list[Entry]:
    """Entries of ``splits`` in a tab-separated file; cells as in :func:`parse_csv`."""
    return _parse_table(desc, root, log, splits, delimiter="\t")


CSV = Format(SCHEMA, parse_csv)
TSV = Format(SCHEMA, parse_tsv)
JSONL = Format(SCHEMA, parse_jsonl)

"""The generic annotation format: a ``.csv`` or ``.jsonl`` file that names each video's path.

Each row (CSV) or line (JSONL) has ``path`` (relative to the dataset root) and optionally a
``split`` (default ``DEFAULT_SPLIT``), a ``caption`` string or a ``captions`` list (in CSV, a
JSON list in one cell) and a ``video_id`` (default: the path without its last extension). A row
with a path only is a video without captions: it can be sharded, indexed and searched, not
trained or evaluated on. Rows that share a video id accumulate their captions in file order,
duplicates kept. The ``synthetic`` dataset's ``annotations.jsonl`` is a file of this format.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.parsers.common import (
    Descriptor,
    Entry,
    Format,
    FormatSchema,
    ProblemLog,
    check_relative_path,
)
from pipeline.parsers.readers import read_csv, read_lines

__all__ = ["CSV", "DEFAULT_SPLIT", "JSONL", "SCHEMA", "default_video_id", "parse_csv", "parse_jsonl"]

SCHEMA = FormatSchema(annotations={"file": True}, videos=False)
#: The split of a row that names none: videos listed for searching, not for training.
DEFAULT_SPLIT = "test"


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


def _collect(
    desc: Descriptor, file: Path, rows: list[tuple[int, dict[str, Any]]], log: ProblemLog
) -> list[Entry]:
    """Rows -> one entry per video id; conflicting paths or splits of one id are problems."""
    videos: dict[str, Entry] = {}
    owner_of_path: dict[str, str] = {}
    shown = log.show(file)
    for line, row in rows:
        problems = _row_problems(desc, row)
        captions, caption_problem = _captions(row)
        problems += [caption_problem] if caption_problem else []
        for message in problems:
            log.add(file, line, message)
        if problems:
            continue
        path = PurePosixPath(row["path"].strip()).as_posix()
        video_id = row["video_id"].strip() if "video_id" in row else default_video_id(path)
        known = videos.get(video_id)
        if known is None:
            if path in owner_of_path:
                first = videos[owner_of_path[path]]
                log.add(file, line, f"path {path!r} is already video {first.video_id!r} "
                                    f"({first.source})")
                continue
            owner_of_path[path] = video_id
            videos[video_id] = Entry(video_id, row["split"], captions, f"{shown}:{line}", path)
        elif known.split != row["split"] or known.path != path:
            log.add(file, line, f"video {video_id!r} is {row['split']}/{path} here but "
                                f"{known.split}/{known.path} at {known.source}")
        else:
            known.captions.extend(captions)
    return list(videos.values())


def _annotation_file(desc: Descriptor, root: Path, log: ProblemLog) -> Path | None:
    return desc.expect(root, desc.annotations["file"][0], log)


def parse_jsonl(desc: Descriptor, root: Path, log: ProblemLog) -> list[Entry]:
    """Entries of a JSON-lines file (one object per line; blank lines skipped)."""
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
    return _collect(desc, file, rows, log)


def parse_csv(desc: Descriptor, root: Path, log: ProblemLog) -> list[Entry]:
    """Entries of a CSV file; empty cells count as absent, ``captions`` cells hold JSON lists."""
    file = _annotation_file(desc, root, log)
    if file is None:
        return []
    table = read_csv(file, log, required=("path",))
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
    return _collect(desc, file, rows, log)


CSV = Format(SCHEMA, parse_csv)
JSONL = Format(SCHEMA, parse_jsonl)

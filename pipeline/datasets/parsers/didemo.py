"""DiDeMo: LocalizingMoments' ``{split}_data.json`` with optional collaborative-experts lists.

Each ``{split}_data.json`` is a list of moments ``{"video", "description", "times", ...}``;
a video has several moments. A video's captions are its descriptions in file order; the
``paragraph`` query rule joins them with single spaces into one query per video, as CLIP4Clip
does (timestamps are not used). When ``{split}_list.txt`` exists it selects the split's videos
(8392 / 1065 / 1004); videos of the JSON missing from it are left out, and listed videos
without descriptions are problems. Video ids are full file names, extension included, and are
never altered: names may end in a bare dot or carry ``.mov``, ``.m4v``, ``.3gp`` and the like.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipeline.datasets.parsers.common import (
    Descriptor,
    Entry,
    Format,
    FormatSchema,
    ProblemLog,
    assign_splits,
    check_video_id,
)
from pipeline.datasets.parsers.readers import read_json, read_lines

__all__ = ["DIDEMO", "SCHEMA", "parse"]

SCHEMA = FormatSchema(split_files={"captions": True, "list": False})


def _read_moments(file: Path, log: ProblemLog) -> tuple[dict[str, list[str]], Callable]:
    """video -> descriptions in file order, and ``where(video)``: ``file:line`` of its first.

    Lines are looked up only when asked for (no list file), since locating every moment of a
    large JSON costs more than parsing it.
    """
    loaded = read_json(file, log)
    if loaded is None:
        return {}, str
    data, locate = loaded
    if not isinstance(data, list):
        log.add(file, 1, f"expected a JSON list of moments, got {type(data).__name__}")
        return {}, str
    videos: dict[str, list[str]] = {}
    first: dict[str, int] = {}
    for i, moment in enumerate(data):
        video = moment.get("video") if isinstance(moment, dict) else None
        text = moment.get("description") if isinstance(moment, dict) else None
        problem = check_video_id(video)
        if problem is None and (not isinstance(text, str) or not text.strip()):
            problem = f"moment of {video!r} has no description"
        if problem:
            log.add(file, locate.line(i), f"moment {i}: {problem}")
            continue
        if video not in videos:
            videos[video], first[video] = [], i
        videos[video].append(text.strip())
    shown = log.show(file)
    return videos, lambda video: f"{shown}:{locate.line(first[video])}"


def _split_members(
    desc: Descriptor, root: Path, split: str, moments: tuple[dict, Callable], log: ProblemLog
) -> list[tuple[str, str]]:
    """``(video, "file:line")`` of a split: its list when present, else its JSON's videos."""
    name = desc.splits[split].files.get("list")
    file = desc.find(root, name) if name else None
    moments, where = moments
    if file is None:
        return [(video, where(video)) for video in moments]
    members = []
    shown = log.show(file)
    for line, video in read_lines(file, log):
        problem = check_video_id(video)
        if problem is None and video not in moments:
            problem = f"{video!r} is listed in {split} but has no descriptions in " \
                      f"{desc.splits[split].files['captions']}"
        if problem:
            log.add(file, line, problem)
        else:
            members.append((video, f"{shown}:{line}"))
    return members


def parse(
    desc: Descriptor, root: Path, log: ProblemLog, splits: tuple[str, ...]
) -> list[Entry]:
    """Entries of ``splits``; a video in two of them is a problem."""
    moments: dict[str, dict[str, list[str]]] = {}
    members: dict[str, list[tuple[str, str]]] = {}
    for split in splits:
        file = desc.expect(root, desc.splits[split].files["captions"], log)
        found = _read_moments(file, log) if file else ({}, str)
        moments[split] = found[0]
        # Without its JSON, the list's videos cannot be checked: one problem, not one each.
        members[split] = _split_members(desc, root, split, found, log) if file else []
    owner = assign_splits(members, log)
    return [
        Entry(video, split, moments[split][video], where)
        for video, (split, where) in owner.items()
    ]


DIDEMO = Format(SCHEMA, parse)

"""A folder of videos as a dataset: every video file under it, no annotation, no captions.

``mof-cli shard --videos DIR`` shards such a folder for indexing and search. Video ids are the
paths relative to the folder without their extension (``trips/day1.mp4`` -> ``trips/day1``),
as in the generic annotation format; every video is in one split (``test`` by default).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pipeline.datasets.parsers.common import ManifestError, Problem
from pipeline.datasets.parsers.generic import DEFAULT_SPLIT, default_video_id
from pipeline.datasets.records import VideoRecord

__all__ = ["VIDEO_EXTENSIONS", "folder_dataset_name", "folder_records"]

#: File name extensions listed as videos (compared without case).
VIDEO_EXTENSIONS = (".3gp", ".avi", ".flv", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg",
                    ".ogv", ".ts", ".webm", ".wmv")


def folder_dataset_name(folder: str | Path) -> str:
    """A shard-name-safe dataset name from the folder's name (``My Clips`` -> ``My_Clips``)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(folder).resolve().name).strip("._")
    return name or "videos"


def folder_records(folder: str | Path, split: str = DEFAULT_SPLIT) -> list[VideoRecord]:
    """Every video file under ``folder`` (recursively; hidden files and folders skipped).

    Returns:
        One caption-less :class:`VideoRecord` per video, sorted by video id.

    Raises:
        ManifestError: no video under the folder, or two files with the same id
            (``a.mp4`` and ``a.mkv``), naming both.
    """
    folder = Path(folder)
    found: dict[str, str] = {}
    problems = []
    for parent, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or not name.lower().endswith(VIDEO_EXTENSIONS):
                continue
            path = (Path(parent) / name).relative_to(folder).as_posix()
            video_id = default_video_id(path)
            if video_id in found:
                problems.append(Problem(str(folder / path), None, f"video id {video_id!r} is "
                                        f"also {found[video_id]}; rename one of them"))
                continue
            found[video_id] = path
    if not found and not problems:
        problems.append(Problem(str(folder), None, "no video file (extensions "
                                f"{' '.join(VIDEO_EXTENSIONS)}) under this folder"))
    if problems:
        raise ManifestError(problems, f"the video folder {folder}")
    return [VideoRecord(video_id, path, (), split, {"source": "folder listing"})
            for video_id, path in sorted(found.items())]

"""Pieces every annotation parser shares: problems, descriptors, entries, split bookkeeping.

No parser raises on bad content: it records a :class:`Problem` (file and line) in a
:class:`ProblemLog` and carries on, so that one :class:`ManifestError` can list every problem
of an annotation set at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from pipeline.errors import MofError

__all__ = [
    "KNOWN_SPLITS",
    "QUERY_RULES",
    "Descriptor",
    "Entry",
    "Format",
    "FormatSchema",
    "ManifestError",
    "Problem",
    "ProblemLog",
    "SplitSpec",
    "assign_splits",
    "check_relative_path",
    "check_video_id",
]

KNOWN_SPLITS = ("train", "val", "test")
# How a video's captions become queries: every caption is one query, only the first is, or
# all of them joined by a single space into one paragraph (DiDeMo).
QUERY_RULES = ("all", "first", "paragraph")

# The message of a ManifestError lists at most this many problems; `.problems` keeps all.
_MAX_LISTED = 200


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a descriptor or an annotation file.

    Attributes:
        file: the file as shown to the user (relative to the dataset root when inside it).
        line: 1-based line number, or ``None`` where the format has no lines (a pickle).
        message: what is wrong, naming the item.
        kind: ``duplicate`` for a video listed twice (or in two splits, or two entries naming
            one file), else ``error``; ``mof-cli check`` counts the two apart.
    """

    file: str
    line: int | None
    message: str
    kind: str = "error"

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.message}"


class ManifestError(MofError, ValueError):
    """A descriptor or an annotation set is unusable; the message lists every problem.

    Attributes:
        problems: every :class:`Problem` found, in the order they were found.
    """

    def __init__(self, problems: Iterable[Problem], context: str = "") -> None:
        self.problems = list(problems)
        self.context = context
        head = f"{len(self.problems)} problem(s)" + (f" in {context}" if context else "")
        lines = [f"  {p}" for p in self.problems[:_MAX_LISTED]]
        if len(self.problems) > _MAX_LISTED:
            lines.append(f"  ... and {len(self.problems) - _MAX_LISTED} more")
        super().__init__(head + ":\n" + "\n".join(lines))

    def __reduce__(self):
        # Rebuild from the problems, not the message, when sent between processes.
        return type(self), (self.problems, self.context)


class ProblemLog:
    """Collects problems while parsing; files inside ``root`` are shown relative to it."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root
        self.problems: list[Problem] = []

    def show(self, path: Path | str) -> str:
        """``path`` as it appears in messages: relative to the root where possible."""
        path = Path(path)
        if self.root is not None:
            try:
                return path.relative_to(self.root).as_posix()
            except ValueError:
                pass
        return str(path)

    def add(self, file: Path | str, line: int | None, message: str, kind: str = "error") -> None:
        """Record one problem (``kind``: see :class:`Problem`)."""
        self.problems.append(Problem(self.show(file), line, message, kind))

    def raise_if_any(self, context: str) -> None:
        """Raise one :class:`ManifestError` listing every recorded problem, if there is any."""
        if self.problems:
            raise ManifestError(self.problems, context)


@dataclass(frozen=True)
class FormatSchema:
    """What a descriptor of one annotation format may and must say.

    Attributes:
        annotations: role of a dataset-wide annotation file -> whether it is required.
        split_files: per-split file key -> whether it is required.
        split_options: per-split option -> its allowed values (the option is required).
        videos: whether ids map to files through ``videos`` (otherwise the annotation file
            names each video's path).
    """

    annotations: Mapping[str, bool] = field(default_factory=dict)
    split_files: Mapping[str, bool] = field(default_factory=dict)
    split_options: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    videos: bool = True


@dataclass(frozen=True)
class SplitSpec:
    """One split of a descriptor.

    Attributes:
        name: ``train``, ``val`` or ``test``.
        queries: one of :data:`QUERY_RULES`.
        files: per-split annotation files by key (e.g. ``list``), relative names.
        options: format-specific choices (e.g. MSR-VTT's ``captions: list``).
        alias_of: another split whose videos this one reuses (MSR-VTT has no val set).
    """

    name: str
    queries: str = "all"
    files: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, str] = field(default_factory=dict)
    alias_of: str | None = None


@dataclass(frozen=True)
class Descriptor:
    """A validated dataset descriptor (``manifests/<name>.yaml``).

    Attributes:
        name: the dataset name; also the stem of the descriptor file.
        format: the parser that reads the annotation files (see ``pipeline.datasets.parsers``).
        description: one line for listings.
        annotation_dirs: folders under the root searched, in order, for annotation files.
        annotations: dataset-wide annotation files by role; a role may need several files.
        splits: split name -> :class:`SplitSpec`, aliases included.
        video_dirs: folders under the root searched, in order, for ``<id><extension>``.
        video_extensions: suffixes appended to the id, in order; ``""`` is the id as it is.
        expected_videos: split -> the number of videos the official files list.
        source: where the official files come from (names only).
        path: the descriptor file, ``None`` for a generic annotation file.
        columns: the column names of a generic ``.csv`` / ``.tsv`` file without a header row
            (``("caption", "path")``); empty when the first row is the header.
    """

    name: str
    format: str
    description: str = ""
    annotation_dirs: tuple[str, ...] = (".",)
    annotations: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    splits: Mapping[str, SplitSpec] = field(default_factory=dict)
    video_dirs: tuple[str, ...] = ()
    video_extensions: tuple[str, ...] = ()
    expected_videos: Mapping[str, int] = field(default_factory=dict)
    source: str = ""
    path: Path | None = None
    columns: tuple[str, ...] = ()

    @property
    def split_names(self) -> tuple[str, ...]:
        """Splits that own their videos (aliases left out)."""
        return tuple(s for s, spec in self.splits.items() if spec.alias_of is None)

    def find(self, root: Path, name: str) -> Path | None:
        """The first ``<root>/<annotation dir>/<name>`` that is a file, else ``None``."""
        for folder in self.annotation_dirs:
            candidate = root / folder / name
            if candidate.is_file():
                return candidate
        return None

    def expect(self, root: Path, name: str, log: ProblemLog) -> Path | None:
        """Like :meth:`find`, but a missing file is recorded as a problem."""
        found = self.find(root, name)
        if found is None:
            where = ", ".join(f"{d}/" for d in self.annotation_dirs)
            log.add(root / name, None, f"annotation file not found (looked in {where})")
        return found


@dataclass
class Entry:
    """A video as a parser found it, before query rules and file lookup.

    Attributes:
        video_id: the dataset's id.
        split: the split that lists it.
        captions: its captions in file order, duplicates kept.
        source: ``file:line`` of the line that put the video in its split.
        path: the video file relative to the root when the annotation names it, else ``None``.
    """

    video_id: str
    split: str
    captions: list[str]
    source: str
    path: str | None = None


@dataclass(frozen=True)
class Format:
    """A parser: its descriptor schema and ``parse(descriptor, root, log, splits) -> entries``.

    ``splits`` names the splits to read (never aliases): a parser opens only the files those
    splits need, so a user holding one split's annotations can shard or check that split.
    """

    schema: FormatSchema
    parse: Callable[[Descriptor, Path, ProblemLog, tuple[str, ...]], list[Entry]]


def check_video_id(video_id: Any) -> str | None:
    """Why ``video_id`` cannot name a file under the root, or ``None`` when it can."""
    if not isinstance(video_id, str) or not video_id.strip():
        return f"video id must be a non-empty string, got {video_id!r}"
    if "/" in video_id or "\\" in video_id or "\0" in video_id or video_id in (".", ".."):
        return f"video id {video_id!r} must not contain path separators"
    return None


def check_relative_path(path: Any) -> str | None:
    """Why ``path`` cannot name something inside the dataset root, or ``None`` when it can."""
    if not isinstance(path, str) or not path.strip():
        return f"path must be a non-empty string, got {path!r}"
    posix = PurePosixPath(path.strip())
    if posix.is_absolute() or PureWindowsPath(path).drive or ".." in posix.parts:
        return f"path {path!r} must be relative to the dataset root and stay inside it"
    return None


def assign_splits(
    members: Mapping[str, Iterable[tuple[str, str]]], log: ProblemLog
) -> dict[str, tuple[str, str]]:
    """Give each video id its split, reporting ids listed twice or in two splits.

    Args:
        members: split -> ``(video_id, "file:line")`` pairs in list order.
        log: where duplicates and conflicts go.

    Returns:
        video id -> ``(split, "file:line")`` of its first listing.
    """
    owner: dict[str, tuple[str, str]] = {}
    for split, pairs in members.items():
        for video_id, where in pairs:
            file, _, line = where.rpartition(":")
            if video_id not in owner:
                owner[video_id] = (split, where)
            elif owner[video_id][0] == split:
                log.add(file, int(line), f"{video_id!r} is listed twice in {split} "
                                         f"(first at {owner[video_id][1]})", "duplicate")
            else:
                log.add(file, int(line), f"{video_id!r} is in both {owner[video_id][0]} "
                                         f"({owner[video_id][1]}) and {split}", "duplicate")
    return owner

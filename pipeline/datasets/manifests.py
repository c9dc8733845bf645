"""Dataset manifests: which videos and which queries a split of a dataset has.

A dataset is described by a YAML descriptor in ``manifests/`` (``msrvtt``, ``msvd``,
``didemo``, ``synthetic``): the annotation files expected under the dataset root, the splits,
how captions become queries and how video ids map to files. ``--dataset`` may instead be the
path of a generic ``.csv`` / ``.tsv`` / ``.jsonl`` annotation file. Descriptors and annotation
sets are validated up front and every problem is reported at once in one :class:`ManifestError`.
Reading a split opens only the annotation files that split needs (and those it shares).

Example::

    records = load_records("msvd", Path("/data/msvd"), "test")
    absent = missing_files(records, Path("/data/msvd"))
"""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath

from pipeline.datasets.parsers import FORMATS
from pipeline.datasets.parsers.common import (
    KNOWN_SPLITS,
    Descriptor,
    Entry,
    ManifestError,
    Problem,
    ProblemLog,
    SplitSpec,
)
from pipeline.datasets.parsers.descriptor import list_datasets, load_descriptor
from pipeline.datasets.parsers.generic import COLUMNS
from pipeline.datasets.records import VideoRecord

__all__ = [
    "GENERIC_SUFFIXES",
    "load_records",
    "load_splits",
    "missing_files",
    "parse_columns",
    "read_split",
    "resolve_dataset",
]

_log = logging.getLogger(__name__)

# Suffix of a generic annotation file -> its parser.
_GENERIC = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}
GENERIC_SUFFIXES = tuple(_GENERIC)


def parse_columns(value: str | None) -> tuple[str, ...]:
    """The column names of ``--columns`` (``"caption,path"``), checked.

    Raises:
        ValueError: an unknown or repeated name, or no ``path`` or caption column.
    """
    if not value:
        return ()
    names = tuple(n.strip() for n in value.split(","))
    problems = [f"unknown column {n!r}" for n in names if n not in COLUMNS]
    if len(set(names)) != len(names):
        problems.append("a column is named twice")
    if "path" not in names or not {"caption", "captions"} & set(names):
        problems.append("needs a path column and a caption (or captions) column")
    if problems:
        raise ValueError(f"--columns {value!r}: {'; '.join(problems)} (columns are "
                         f"{', '.join(COLUMNS)})")
    return names


def _unsupported(dataset: str) -> ManifestError:
    suffix = Path(dataset).suffix
    return ManifestError([Problem(dataset, None, (
        f"unsupported annotation file format {suffix!r}: generic annotation files are "
        f"{', '.join(GENERIC_SUFFIXES)}; a dataset descriptor is a .yaml file or one of the "
        f"names {', '.join(list_datasets())}"))])


def resolve_dataset(dataset: str | Path, root: Path, columns: tuple[str, ...] = ()) -> Descriptor:
    """The descriptor behind a ``--dataset`` value.

    Args:
        dataset: a descriptor name (see :func:`list_datasets`), the path of a ``.yaml``
            descriptor, or the path of a generic ``.csv`` / ``.tsv`` / ``.jsonl`` file
            (absolute, relative to the working directory, or relative to ``root``).
        root: the dataset root.
        columns: the columns of a ``.csv`` / ``.tsv`` file without a header row (see
            :func:`parse_columns`); empty when the file has a header.

    Returns:
        The validated descriptor; a generic file gets one named after its stem, with the splits
        train, val and test and one query per caption.

    Raises:
        ManifestError: unknown name, unsupported file format, missing file or invalid
            descriptor.
    """
    file = Path(dataset)
    suffix = file.suffix.lower()
    if suffix not in _GENERIC:
        if columns:
            raise ManifestError([Problem(str(dataset), None, "--columns applies to generic "
                                         ".csv / .tsv files only")])
        named = suffix in (".yaml", ".yml") or (not suffix and "/" not in str(dataset))
        if not named and (file.is_file() or (Path(root) / file).is_file() or suffix):
            raise _unsupported(str(dataset))
        return load_descriptor(dataset)
    if columns and suffix == ".jsonl":
        raise ManifestError([Problem(str(dataset), None, "--columns applies to .csv / .tsv "
                                     "files; JSON lines name their fields")])
    if not file.is_absolute() and not file.is_file() and (Path(root) / file).is_file():
        file = Path(root) / file
    if not file.is_file():
        raise ManifestError([Problem(str(dataset), None, "annotation file not found (looked "
                                     f"in the working directory and in {root})")])
    return Descriptor(
        name=file.stem,
        format=_GENERIC[suffix],
        description=f"generic annotation file {file}",
        annotations={"file": (str(file.resolve()),)},
        splits={s: SplitSpec(s) for s in KNOWN_SPLITS},
        columns=tuple(columns),
    )


def _file_names(folder: Path) -> set[str]:
    try:
        with os.scandir(folder) as listing:
            return {item.name for item in listing if item.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def _video_paths(desc: Descriptor, root: Path, entries: list[Entry]) -> list[str]:
    """Each entry's video file relative to the root.

    The first ``<dir>/<id><extension>`` that exists wins, dirs outer, extensions inner; when
    none does, the first candidate is returned so that :func:`missing_files` can name it.
    Each folder is listed once rather than probed per video.
    """
    names = {folder: _file_names(root / folder) for folder in desc.video_dirs}
    prefix = {f: "" if PurePosixPath(f) == PurePosixPath(".") else PurePosixPath(f).as_posix()
              + "/" for f in desc.video_dirs}
    paths = []
    for entry in entries:
        if entry.path is not None:
            paths.append(entry.path)
            continue
        candidates = [(folder, entry.video_id + ext)
                      for folder in desc.video_dirs for ext in desc.video_extensions]
        folder, name = next((c for c in candidates if c[1] in names[c[0]]), candidates[0])
        paths.append(prefix[folder] + name)
    return paths


def _queries(rule: str, captions: list[str]) -> tuple[str, ...]:
    if rule == "paragraph":
        return (" ".join(captions),)
    if rule == "first":
        return (captions[0],)
    return tuple(captions)


def _parse(desc: Descriptor, root: Path, splits: tuple[str, ...]) -> list[Entry]:
    """The entries of ``splits``, or one ManifestError listing every problem found in them."""
    if not root.is_dir():
        raise ManifestError([Problem(str(root), None, "the dataset root is not a directory")])
    log = ProblemLog(root)
    entries = FORMATS[desc.format].parse(desc, root, log, splits)
    log.raise_if_any(f"the {desc.name} annotations under {root}")
    return entries


def _records(desc: Descriptor, root: Path, entries: list[Entry], split: str) -> list[VideoRecord]:
    """The records of ``split`` (an alias takes its target's videos and query rule)."""
    target = desc.splits[split].alias_of or split
    chosen = sorted((e for e in entries if e.split == target), key=lambda e: e.video_id)
    rule = desc.splits[target].queries
    alias = {"alias_of": target} if target != split else {}
    records = [
        VideoRecord(e.video_id, path, _queries(rule, e.captions), split,
                    {"source": e.source, **alias})
        for e, path in zip(chosen, _video_paths(desc, root, chosen), strict=True)
    ]
    expected = desc.expected_videos.get(target)
    if records and expected is not None and expected != len(records):
        _log.warning("%s %s: %d videos listed, the official annotations list %d",
                     desc.name, split, len(records), expected)
    return records


def load_records(
    dataset: str | Path, root: Path, split: str, columns: tuple[str, ...] = ()
) -> list[VideoRecord]:
    """The videos of one split with their queries, sorted by video id.

    Only the annotation files of ``split`` (or of the split it is an alias of) and the files
    it shares with other splits are read, and every problem found in them is reported at
    once. A video listed in this split and another is caught by :func:`load_splits` (and
    ``mof-cli check``), which read every split.

    Args:
        dataset: a descriptor name (``msrvtt``, ``msvd``, ``didemo``, ``synthetic``), a
            descriptor ``.yaml`` path, or a generic ``.csv`` / ``.tsv`` / ``.jsonl`` file.
        root: the dataset root; annotation files and video paths are relative to it.
        split: ``train``, ``val`` or ``test``, as the descriptor lists them.
        columns: the columns of a generic file without a header row.

    Returns:
        One :class:`VideoRecord` per video; ``captions`` are its queries under the split's
        rule; ``extra["source"]`` is the ``file:line`` that lists it. Videos listed but absent
        on disk are included (see :func:`missing_files`).

    Raises:
        ManifestError: listing every problem of the descriptor or annotation set with its
            file and line; also for an unknown or empty split.
    """
    root = Path(root)
    desc = resolve_dataset(dataset, root, columns)
    where = str(desc.path or desc.annotations["file"][0])
    if split not in desc.splits:
        raise ManifestError([Problem(where, None, f"unknown split {split!r}; {desc.name} has "
                                                  f"{', '.join(desc.splits)}")])
    records = read_split(desc, root, split)
    if not records:
        raise ManifestError([Problem(where, None, f"split {split!r} has no videos")])
    return records


def read_split(desc: Descriptor, root: Path, split: str) -> list[VideoRecord]:
    """The records of ``split`` of a resolved descriptor, possibly none.

    Like :func:`load_records`, for callers that hold the descriptor (``mof-cli check``).

    Raises:
        ManifestError: every problem of the split's annotation files.
    """
    target = desc.splits[split].alias_of or split
    return _records(desc, Path(root), _parse(desc, Path(root), (target,)), split)


def load_splits(
    dataset: str | Path, root: Path, columns: tuple[str, ...] = ()
) -> dict[str, list[VideoRecord]]:
    """Every non-empty split (aliases included) -> its records, reading the annotations once.

    Every split's files must be present; a video listed in two splits is a problem. Same
    arguments and errors as :func:`load_records`, without ``split``.
    """
    root = Path(root)
    desc = resolve_dataset(dataset, root, columns)
    entries = _parse(desc, root, desc.split_names)
    found = {split: _records(desc, root, entries, split) for split in desc.splits}
    return {split: records for split, records in found.items() if records}


def missing_files(records: list[VideoRecord], root: Path) -> list[VideoRecord]:
    """The records whose video file is not on disk under ``root``, in their given order."""
    root = Path(root)
    return [r for r in records if not (root / r.path).is_file()]

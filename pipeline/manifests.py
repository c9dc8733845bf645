"""Dataset manifests: which videos and which queries a split of a dataset has.

A dataset is described by a YAML descriptor in ``manifests/`` (``msrvtt``, ``msvd``,
``didemo``, ``synthetic``): the annotation files expected under the dataset root, the splits,
how captions become queries and how video ids map to files. ``--dataset`` may instead be the
path of a generic ``.csv`` / ``.jsonl`` annotation file. Descriptors and annotation sets are
validated up front and every problem is reported at once in one :class:`ManifestError`.

Example::

    records = load_records("msvd", Path("/data/msvd"), "test")
    absent = missing_files(records, Path("/data/msvd"))
"""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath

from pipeline.parsers import FORMATS
from pipeline.parsers.common import (
    KNOWN_SPLITS,
    Descriptor,
    Entry,
    ManifestError,
    Problem,
    ProblemLog,
    SplitSpec,
)
from pipeline.parsers.descriptor import MANIFEST_DIR, list_datasets, load_descriptor
from pipeline.records import VideoRecord

__all__ = [
    "MANIFEST_DIR",
    "Descriptor",
    "ManifestError",
    "list_datasets",
    "load_descriptor",
    "load_records",
    "load_splits",
    "missing_files",
    "resolve_dataset",
]

_log = logging.getLogger(__name__)

# Suffix of a generic annotation file -> its parser.
_GENERIC = {".csv": "csv", ".jsonl": "jsonl"}


def resolve_dataset(dataset: str | Path, root: Path) -> Descriptor:
    """The descriptor behind a ``--dataset`` value.

    Args:
        dataset: a descriptor name (see :func:`list_datasets`), the path of a ``.yaml``
            descriptor, or the path of a generic ``.csv`` / ``.jsonl`` file (absolute, relative
            to the working directory, or relative to ``root``).
        root: the dataset root.

    Returns:
        The validated descriptor; a generic file gets one named after its stem, with the splits
        train, val and test and one query per caption.

    Raises:
        ManifestError: unknown name, missing file or invalid descriptor.
    """
    file = Path(dataset)
    if file.suffix.lower() not in _GENERIC:
        return load_descriptor(dataset)
    if not file.is_absolute() and not file.is_file() and (Path(root) / file).is_file():
        file = Path(root) / file
    if not file.is_file():
        raise ManifestError([Problem(str(dataset), None, "annotation file not found (looked "
                                     f"in the working directory and in {root})")])
    return Descriptor(
        name=file.stem,
        format=_GENERIC[file.suffix.lower()],
        description=f"generic annotation file {file}",
        annotations={"file": (str(file.resolve()),)},
        splits={s: SplitSpec(s) for s in KNOWN_SPLITS},
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


def _parse(desc: Descriptor, root: Path) -> list[Entry]:
    """Every split's entries, or one ManifestError listing every problem of the set."""
    if not root.is_dir():
        raise ManifestError([Problem(str(root), None, "the dataset root is not a directory")])
    log = ProblemLog(root)
    entries = FORMATS[desc.format].parse(desc, root, log)
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


def load_records(dataset: str | Path, root: Path, split: str) -> list[VideoRecord]:
    """The videos of one split with their queries, sorted by video id.

    Every split of the annotation set is read and checked (a video may belong to one split
    only), so a problem anywhere in the set is reported, together with all the others.

    Args:
        dataset: a descriptor name (``msrvtt``, ``msvd``, ``didemo``, ``synthetic``), a
            descriptor ``.yaml`` path, or a generic ``.csv`` / ``.jsonl`` file.
        root: the dataset root; annotation files and video paths are relative to it.
        split: ``train``, ``val`` or ``test``, as the descriptor lists them.

    Returns:
        One :class:`VideoRecord` per video; ``captions`` are its queries under the split's
        rule; ``extra["source"]`` is the ``file:line`` that lists it. Videos listed but absent
        on disk are included (see :func:`missing_files`).

    Raises:
        ManifestError: listing every problem of the descriptor or annotation set with its
            file and line; also for an unknown or empty split.
    """
    root = Path(root)
    desc = resolve_dataset(dataset, root)
    where = str(desc.path or desc.annotations["file"][0])
    if split not in desc.splits:
        raise ManifestError([Problem(where, None, f"unknown split {split!r}; {desc.name} has "
                                                  f"{', '.join(desc.splits)}")])
    records = _records(desc, root, _parse(desc, root), split)
    if not records:
        raise ManifestError([Problem(where, None, f"split {split!r} has no videos")])
    return records


def load_splits(dataset: str | Path, root: Path) -> dict[str, list[VideoRecord]]:
    """Every non-empty split (aliases included) -> its records, reading the annotations once.

    Same arguments and errors as :func:`load_records`, without ``split``.
    """
    root = Path(root)
    desc = resolve_dataset(dataset, root)
    entries = _parse(desc, root)
    found = {split: _records(desc, root, entries, split) for split in desc.splits}
    return {split: records for split, records in found.items() if records}


def missing_files(records: list[VideoRecord], root: Path) -> list[VideoRecord]:
    """The records whose video file is not on disk under ``root``, in their given order."""
    root = Path(root)
    return [r for r in records if not (root / r.path).is_file()]

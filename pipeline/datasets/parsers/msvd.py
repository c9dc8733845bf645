"""MSVD: ``raw-captions.pkl`` plus one id list per split, as collaborative-experts ships them.

``raw-captions.pkl`` maps each video id to a list of captions, each a list of tokens; a
caption is its tokens joined by single spaces. ``train_list.txt``, ``val_list.txt`` and
``test_list.txt`` hold one id per line (1200 / 100 / 670). Every caption, duplicates
included, is one query. The pickle is read by an unpickler that can build only dicts, lists
and strings, so a tampered file cannot run code.
"""

from __future__ import annotations

import builtins
import pickle
from pathlib import Path
from typing import Any, ClassVar

from pipeline.datasets.parsers.common import (
    Descriptor,
    Entry,
    Format,
    FormatSchema,
    ProblemLog,
    assign_splits,
    check_video_id,
)
from pipeline.datasets.parsers.readers import read_lines

__all__ = ["MSVD", "SCHEMA", "load_caption_pickle", "parse"]

SCHEMA = FormatSchema(annotations={"captions": True}, split_files={"list": True})


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the builtins ``dict``, ``list`` and ``str``; refuses every other global."""

    _ALLOWED: ClassVar[frozenset[str]] = frozenset({"dict", "list", "str"})

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 pickles name the module __builtin__.
        if module in ("builtins", "__builtin__") and name in self._ALLOWED:
            return getattr(builtins, name)
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: only dict, list and str are allowed")


def load_caption_pickle(file: Path) -> Any:
    """Unpickle ``file`` allowing nothing but dicts, lists, strings (and plain scalars).

    Raises:
        pickle.UnpicklingError: the file references any other class or function.
        EOFError, ValueError: the file is truncated or not a pickle.
    """
    with open(file, "rb") as handle:
        # Python 2 pickles hold byte strings; decode them as UTF-8 text.
        return _RestrictedUnpickler(handle, encoding="utf-8").load()


def _captions_of(video_id: Any, value: Any) -> tuple[list[str], str | None]:
    """A video's captions, or why its pickle value is unusable."""
    if not isinstance(value, list) or not value:
        return [], f"video {video_id!r} has no captions (value {type(value).__name__})"
    captions = []
    for i, tokens in enumerate(value):
        try:  # join raises on a non-string token; cheaper than checking each of ~400k
            caption = " ".join(tokens).strip() if isinstance(tokens, list) else None
        except TypeError:
            caption = None
        if caption is None:
            return [], f"video {video_id!r}: caption {i} is not a list of token strings"
        if not caption:
            return [], f"video {video_id!r}: caption {i} is empty"
        captions.append(caption)
    return captions, None


def _read_pickle(
    desc: Descriptor, root: Path, log: ProblemLog, wanted: set[str]
) -> dict[str, list[str] | None]:
    """video id -> captions; ``None`` for an id whose captions are unusable.

    The problems of the ``wanted`` ids (the videos of the splits read) are reported, and those
    of keys that cannot be video ids at all; another split's bad captions are its own problem.
    """
    file = desc.expect(root, desc.annotations["captions"][0], log)
    if file is None:
        return {}
    try:
        data = load_caption_pickle(file)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError) as err:
        log.add(file, None, f"cannot load the caption pickle: {err}")
        return {}
    if not isinstance(data, dict):
        log.add(file, None, f"expected a dict of video id -> captions, got {type(data).__name__}")
        return {}
    out = {}
    for video_id, value in data.items():
        bad_id = check_video_id(video_id)
        captions, problem = ([], bad_id) if bad_id else _captions_of(video_id, value)
        if bad_id or (problem and video_id in wanted):
            log.add(file, None, problem)
        out[video_id] = None if problem else captions
    return out


def parse(
    desc: Descriptor, root: Path, log: ProblemLog, splits: tuple[str, ...]
) -> list[Entry]:
    """Entries of ``splits``; listed ids missing from the pickle are problems."""
    members: dict[str, list[tuple[str, str]]] = {}
    for split in splits:
        file = desc.expect(root, desc.splits[split].files["list"], log)
        lines = read_lines(file, log) if file else []
        shown = log.show(file) if file else ""
        members[split] = []
        for line, video_id in lines:
            problem = check_video_id(video_id)
            if problem:
                log.add(file, line, problem)
            else:
                members[split].append((video_id, f"{shown}:{line}"))
    owner = assign_splits(members, log)
    captions = _read_pickle(desc, root, log, set(owner))
    entries = []
    for video_id, (split, where) in owner.items():
        if captions.get(video_id):
            entries.append(Entry(video_id, split, captions[video_id], where))
        elif captions and video_id not in captions:  # each problem is reported once
            file, _, line = where.rpartition(":")
            log.add(file, int(line), f"{video_id!r} is listed in {split} but has no captions "
                                     f"in {desc.annotations['captions'][0]}")
    return entries


MSVD = Format(SCHEMA, parse)

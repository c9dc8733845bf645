"""Crash-safe writes: a file or a directory is seen whole under its final name, or not at all.

Every writer of the toolkit whose output must not be seen half-written goes through here:

1. write under a temporary name in the destination's own directory (a rename is atomic only
   within one file system), ``<name>.<pid>-<hex>.tmp``, unique so that two processes (two
   nodes on a shared directory) writing the same file never share a temporary;
2. flush and ``fsync`` the data (a rename can reach the disk before the data it names);
3. ``os.replace`` onto the final name;
4. ``fsync`` the directory, so that the rename itself survives a power cut.

A directory (a checkpoint, a saved model, a frame store) is built the same way and swapped in
with two renames; a crash between them leaves the previous version under
:func:`previous_version`'s name, where readers look for it.

This module imports only the standard library (and PyYAML for :func:`atomic_write_yaml`), so
every application of ``mof`` can use it; the model library stays torch/numpy only and writes
plain files into a directory it is given (see ``docs/writes.md``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "TEMP_SUFFIX",
    "atomic_directory",
    "atomic_open",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_write_yaml",
    "fsync_directory",
    "fsync_tree",
    "previous_version",
    "remove_temporaries",
    "temporaries",
]

#: Every temporary this module creates ends so; sweepers match it.
TEMP_SUFFIX = ".tmp"


def _temporary(path: Path) -> Path:
    return path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")


def temporaries(path: str | Path) -> list[Path]:
    """The temporaries that writers of ``path`` may have left behind (killed mid-write)."""
    path = Path(path)
    own = re.compile(rf"{re.escape(path.name)}\.\d+-[0-9a-f]{{8}}{re.escape(TEMP_SUFFIX)}")
    return sorted(p for p in path.parent.glob(f"{path.name}.*{TEMP_SUFFIX}")
                  if own.fullmatch(p.name))


def remove_temporaries(directory: str | Path) -> int:
    """Delete every ``*.tmp`` file or directory directly under ``directory``; returns how many.

    Only for a directory that no other process is writing into at the same time.
    """
    removed = 0
    for stale in Path(directory).glob(f"*{TEMP_SUFFIX}"):
        _remove(stale)
        removed += 1
    return removed


def previous_version(path: str | Path) -> Path:
    """Where :func:`atomic_directory` keeps the old ``path`` while it swaps the new one in."""
    path = Path(path)
    return path.with_name(f".{path.name}.old")


def fsync_directory(directory: str | Path) -> None:
    """Make renames inside ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (and Windows) refuse fsync on a directory
    finally:
        os.close(fd)


def fsync_tree(directory: str | Path) -> None:
    """``fsync`` every file under ``directory``, then every directory, deepest first."""
    directory = Path(directory)
    folders = [directory]
    for path in directory.rglob("*"):
        if path.is_dir():
            folders.append(path)
        elif path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        fsync_directory(folder)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that needs a name (an encoder, a tar file).

    The block writes the file at the yielded path; on a normal exit it is fsynced and renamed to
    ``path``; on an exception it is deleted and ``path`` is left as it was.

    Raises:
        FileNotFoundError: the block wrote nothing at the yielded path.
    """
    path = Path(path)
    tmp = _temporary(path)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", *,
                encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open ``path`` for writing through a temporary; the file appears when the block ends.

    Args:
        path: the final file name (its directory must exist).
        mode: ``"wb"`` or ``"w"`` (text; ``encoding`` defaults to UTF-8).
        encoding: text encoding for ``"w"``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a new file: mode must be 'w' or 'wb', not {mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as fh:
        yield fh
        fh.flush()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON ending in a newline."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_yaml(path: str | Path, obj: Any, *, sort_keys: bool = False) -> None:
    """Write ``obj`` as block-style YAML (``yaml.safe_dump``, keys in the given order)."""
    import yaml

    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=sort_keys))


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name and swap it in as ``path`` when the block ends.

    The block fills the yielded (new, empty) directory. On a normal exit every file is fsynced,
    an existing ``path`` is moved to :func:`previous_version`, the new directory is renamed to
    ``path`` and the previous version deleted. A crash between the two renames leaves no
    ``path`` but a whole previous version, which readers such as
    :func:`mof.train.checkpoint.find_checkpoint` fall back to. On an exception the temporary is
    deleted and ``path`` is left as it was. One writer per ``path`` at a time: temporaries left
    by a killed writer of the same ``path`` are swept first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in temporaries(path):
        _remove(stale)
    tmp = _temporary(path)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = previous_version(path)
    if path.exists():
        _remove(old)
        path.rename(old)
    tmp.rename(path)
    fsync_directory(path.parent)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)

"""Samples from tar shards, without torch: resolve shard sources, stream, group, decode.

Small generator stages, as WebDataset has them: tar members → samples grouped by key →
:class:`~pipeline.records.ShardSample` dicts. :mod:`pipeline.reader` builds the torch dataset on
them; ``mof-cli inspect`` uses them directly. Damage raises :class:`ShardReadError` naming the
shard and, where known, the sample key.
"""

from __future__ import annotations

import glob
import io
import json
import os
import random
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import MofError
from pipeline.index import read_index
from pipeline.records import ShardSample

__all__ = [
    "ShardReadError",
    "decode_sample",
    "group_samples",
    "iter_members",
    "iter_shard",
    "resolve_shards",
    "shuffle_buffer",
]


class ShardReadError(MofError, RuntimeError):
    """A shard or one of its samples cannot be read; the message names shard and key."""


def resolve_shards(source: str | Path | Iterable[str | Path]) -> list[str]:
    """Turn a shard source into a list of tar paths.

    Args:
        source: a shard directory (its ``index.json`` lists the shards in order), an
            ``index.json`` file, a brace pattern (``dir/msrvtt-train-{000000..000009}.tar``),
            a glob pattern, one ``.tar`` file, or a list of any of these.

    Returns:
        Shard paths, in index (or expansion) order.

    Raises:
        FileNotFoundError: a directory without ``index.json`` (an unfinished run) or a named
            shard that does not exist.
    """
    if not isinstance(source, (str, Path)):
        return [p for item in source for p in resolve_shards(item)]
    text = str(source)
    path = Path(text)
    if path.is_dir() or path.name == "index.json":
        directory = path if path.is_dir() else path.parent
        paths = [str(directory / s["name"]) for s in read_index(path)["shards"]]
    elif "{" in text:
        from braceexpand import braceexpand

        paths = list(braceexpand(text))
    elif glob.has_magic(text):
        paths = sorted(glob.glob(text))
        if not paths:
            raise FileNotFoundError(f"no shard matches {text!r}")
    else:
        paths = [text]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard(s) not found, e.g. {missing[:3]}")
    return paths


def iter_members(shard: str) -> Iterator[tuple[str, bytes]]:
    """Yield ``(member name, bytes)`` of a tar, streaming; raise naming the shard on damage."""
    last = "<start of file>"
    try:
        with tarfile.open(shard, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                handle = tar.extractfile(member)
                data = handle.read() if handle is not None else b""
                if len(data) != member.size:
                    raise tarfile.ReadError(f"member {member.name} is truncated")
                last = member.name
                yield member.name, data
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ShardReadError(
            f"{shard}: corrupt or truncated tar after member {last!r} ({exc})"
        ) from exc


def group_samples(
    members: Iterable[tuple[str, bytes]], shard: str
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Group consecutive members by key (the base name up to its first dot), as WebDataset does."""
    key: str | None = None
    fields: dict[str, bytes] = {}
    for name, data in members:
        base = name.rsplit("/", 1)[-1]
        if "." not in base:
            raise ShardReadError(f"{shard}: member {name!r} has no extension")
        member_key, ext = base.split(".", 1)
        if member_key != key:
            if key is not None:
                yield key, fields
            key, fields = member_key, {}
        if ext in fields:
            raise ShardReadError(f"{shard}: sample {key!r} has two {ext!r} members")
        fields[ext] = data
    if key is not None:
        yield key, fields


def decode_sample(
    shard: str, key: str, fields: dict[str, bytes], decode: bool = True
) -> ShardSample:
    """Turn a sample's members into a :class:`ShardSample`.

    With ``decode=False`` ``frames`` stays the raw ``.npy`` bytes (the json is still parsed).

    Raises:
        ShardReadError: a member is missing or does not hold uint8 ``(R, S, S, 3)`` frames and a
            json object, naming shard and key.
    """
    missing = {"frames.npy", "json"} - set(fields)
    if missing:
        raise ShardReadError(f"{shard}: sample {key!r} lacks {sorted(missing)}")
    try:
        meta = json.loads(fields["json"])
        frames: Any = fields["frames.npy"]
        if decode:
            frames = np.lib.format.read_array(io.BytesIO(frames), allow_pickle=False)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise ShardReadError(f"{shard}: sample {key!r} cannot be decoded ({exc})") from exc
    if not isinstance(meta, dict):
        raise ShardReadError(f"{shard}: sample {key!r} json is not an object")
    if decode and (frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3):
        raise ShardReadError(
            f"{shard}: sample {key!r} frames are {frames.dtype} {frames.shape}, "
            "expected uint8 (R, S, S, 3)"
        )
    return ShardSample(key=key, frames=frames, meta=meta)


def iter_shard(shard: str, decode: bool = True) -> Iterator[ShardSample]:
    """Every sample of one shard, in file order."""
    for key, fields in group_samples(iter_members(shard), shard):
        yield decode_sample(shard, key, fields, decode)


def shuffle_buffer(samples: Iterable[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Shuffle a stream through a buffer of ``size`` items (each item is yielded once)."""
    buffer: list[Any] = []
    for item in samples:
        buffer.append(item)
        if len(buffer) >= size:
            j = rng.randrange(len(buffer))
            buffer[j], buffer[-1] = buffer[-1], buffer[j]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer

"""Samples from tar shards through WebDataset: resolve shard sources, read, decode.

WebDataset's tar stages stream a shard's members and group them by key into raw samples
(``{"__key__", "__url__", "frames.npy", "json"}``). This module adds what is ours: shard
sources (a shard directory read through its ``index.json``), the decoded
:class:`~pipeline.datasets.records.ShardSample`, and errors that name the shard and the sample
key (:class:`ShardReadError`). :mod:`pipeline.sharding.reader` builds the training pipeline on
these stages; ``mof-cli inspect`` and ``mof-cli export-frames`` use them directly.
"""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from webdataset.shardlists import expand_urls
from webdataset.tariterators import group_by_keys, tar_file_expander

from pipeline.datasets.records import ShardSample
from pipeline.errors import MofError
from pipeline.sharding.index import read_index

__all__ = [
    "ShardReadError",
    "decode_sample",
    "decode_samples",
    "iter_shard",
    "read_shard_samples",
    "resolve_shards",
]


class ShardReadError(MofError, RuntimeError):
    """A shard or one of its samples cannot be read; the message names shard and key."""


def resolve_shards(source: str | Path | Iterable[str | Path]) -> list[str]:
    """Turn a shard source into a list of tar paths.

    Args:
        source: a shard directory (its ``index.json`` lists the shards in order), an
            ``index.json`` file, a brace pattern (``dir/msrvtt-train-{000000..000009}.tar``,
            expanded by WebDataset), a glob pattern, one ``.tar`` file, or a list of any of these.

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
        paths = expand_urls(text)
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


def read_shard_samples(sources: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """WebDataset stage: ``{"url": shard path}`` items → raw samples, shard after shard.

    WebDataset's ``tarfile_samples`` without its opener: tarfile's stream mode reads 10 KB
    records, and through the 8 KB buffered file ``wds.gopen`` returns each is copied once more
    (measured: 30 % slower without decoding, see docs/shards.md); an unbuffered file avoids it.
    Each shard is read on its own so that damage raises naming it (WebDataset's handlers see
    the exception, not which shard it came from).

    Raises:
        ShardReadError: a truncated or corrupt tar, or a sample with two members of one name.
    """
    for source in sources:
        shard = source["url"]
        try:
            with open(shard, "rb", buffering=0) as stream:
                yield from group_by_keys(tar_file_expander([{"url": shard, "stream": stream}]))
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            # WebDataset appends the stream and url to the exception's args; keep the reason.
            reason = str(exc.args[0]).split(" @ ")[0] if exc.args else type(exc).__name__
            raise ShardReadError(f"{shard}: corrupt or truncated tar ({reason})") from exc


def decode_sample(sample: dict[str, Any], decode: bool = True) -> ShardSample:
    """Turn a raw WebDataset sample into a :class:`ShardSample`.

    With ``decode=False`` ``frames`` stays the raw ``.npy`` bytes (the json is still parsed).

    Raises:
        ShardReadError: a member is missing or does not hold uint8 ``(R, S, S, 3)`` frames and a
            json object, naming shard and key.
    """
    shard, key = sample.get("__url__"), sample["__key__"]
    missing = {"frames.npy", "json"} - set(sample)
    if missing:
        raise ShardReadError(f"{shard}: sample {key!r} lacks {sorted(missing)}")
    try:
        meta = json.loads(sample["json"])
        frames: Any = sample["frames.npy"]
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


def decode_samples(samples: Iterable[dict[str, Any]], decode: bool = True) -> Iterator[ShardSample]:
    """WebDataset stage: raw samples → :class:`ShardSample` (see :func:`decode_sample`).

    Not ``wds.map``: it would add a ``__key__`` entry to every returned dict.
    """
    for sample in samples:
        yield decode_sample(sample, decode)


def iter_shard(shard: str, decode: bool = True) -> Iterator[ShardSample]:
    """Every sample of one shard, in file order."""
    return decode_samples(read_shard_samples([{"url": shard}]), decode)

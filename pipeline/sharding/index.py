"""The shard directory's bookkeeping: file names, ``index.json`` and errors.

A shard directory written by :func:`pipeline.sharding.write.write_shards` holds

- ``<dataset>-<split>-%06d.tar``: the shards, each present only once complete;
- ``<dataset>-<split>-%06d.errors.jsonl``: the error records of one shard, only when it had any;
- ``shard_config.json``: the resolved config of the run, written before the first shard;
- ``samples.jsonl``: one line per sample in shard order (key, video id, captions, shard), so
  that a reader can list the videos and their captions without opening a shard; written just
  before ``index.json``, which names it (see :func:`read_listed_samples`);
- ``index.json``: every shard with its sample count and bytes, the totals and the resolved
  config, written last, once every shard of the plan exists;
- ``errors.jsonl``: the error records of all shards, in shard order (possibly empty);
- ``index.node-KKKKK-of-NNNNN.json``: the partial index of one node of a multi-node run, joined
  into ``index.json`` by :func:`merge_indexes`.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webdataset.tariterators import base_plus_ext

from pipeline.atomic import atomic_write_bytes, atomic_write_json
from pipeline.errors import MofError

__all__ = [
    "CONTENT_KEYS",
    "ERRORS_NAME",
    "INDEX_NAME",
    "RUN_CONFIG_NAME",
    "SAMPLES_NAME",
    "ListedSamples",
    "ShardIndexError",
    "build_index",
    "config_differences",
    "describe_shard",
    "errors_sidecar",
    "merge_indexes",
    "partial_index_name",
    "read_errors",
    "read_index",
    "read_listed_samples",
    "shard_name",
    "write_errors",
    "write_index",
]

INDEX_NAME = "index.json"
ERRORS_NAME = "errors.jsonl"
RUN_CONFIG_NAME = "shard_config.json"
SAMPLES_NAME = "samples.jsonl"

# The settings that decide what a shard holds. Two runs agreeing on these produce the same
# samples, so one may resume the other; workers, strictness and node layout do not matter.
CONTENT_KEYS = (
    "dataset",
    "root",
    "split",
    "frames",
    "size",
    "backend",
    "shard_size",
    "format_version",
    "num_videos",
    "num_shards",
    "videos_sha1",
)


class ShardIndexError(MofError, RuntimeError):
    """An index or a set of partial indexes is inconsistent with the shards on disk."""


def shard_name(dataset: str, split: str, index: int) -> str:
    """The file name of shard ``index``: ``<dataset>-<split>-%06d.tar``."""
    return f"{dataset}-{split}-{index:06d}.tar"


def errors_sidecar(name: str) -> str:
    """The error file beside shard ``name``: ``x-000003.tar`` → ``x-000003.errors.jsonl``."""
    return name.removesuffix(".tar") + ".errors.jsonl"


def partial_index_name(node_rank: int, num_nodes: int) -> str:
    """The partial index written by node ``node_rank`` of a ``num_nodes``-node run."""
    return f"index.node-{node_rank:05d}-of-{num_nodes:05d}.json"


def describe_shard(path: str | Path, listed: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Count the samples of a finished shard (one ``json`` member each) and its bytes.

    Reading the headers also proves the tar is whole: a truncated file raises here.

    Args:
        path: the shard.
        listed: when given, one ``{"key", "video_id", "captions", "shard"}`` per sample is
            appended, read from the ``json`` members only (the frames are skipped, not read).

    Raises:
        ShardIndexError: the shard cannot be read as a tar, or a ``json`` member is not JSON,
            naming the file and the member.
    """
    path = Path(path)
    samples = 0
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not (member.isfile() and member.name.rsplit("/", 1)[-1].endswith(".json")):
                    continue
                samples += 1
                if listed is not None:
                    listed.append(_listed_sample(path, tar, member))
    except (tarfile.TarError, OSError) as exc:
        raise ShardIndexError(f"{path}: not a readable tar ({exc})") from exc
    return {"name": path.name, "samples": samples, "bytes": path.stat().st_size}


def _listed_sample(path: Path, tar: tarfile.TarFile, member: tarfile.TarInfo) -> dict[str, Any]:
    # The key as WebDataset's reader groups members (up to the first dot of the file name), so
    # the list equals what streaming the shard yields.
    key = base_plus_ext(member.name)[0]
    try:
        meta = json.loads(tar.extractfile(member).read())
    except (ValueError, AttributeError) as exc:
        raise ShardIndexError(f"{path}: member {member.name} is not JSON ({exc})") from exc
    return {"key": key, "video_id": meta.get("video_id", key),
            "captions": list(meta.get("captions", [])), "shard": path.name}


def read_errors(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``*.jsonl`` error file; an absent file has none."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build_index(
    out: str | Path,
    names: list[str],
    config: dict[str, Any],
    node: dict[str, int] | None = None,
    listed: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The index of shards ``names`` of directory ``out``.

    Args:
        out: the shard directory.
        names: shard file names in shard order.
        config: the resolved run config (saved verbatim under ``config``).
        node: ``{"rank": k, "num_nodes": n}`` for a partial index of a multi-node run.
        listed: when given, every sample of the shards is appended (see
            :func:`describe_shard`), in shard order.

    Returns:
        The index dict: ``shards`` (``name``, ``samples``, ``bytes``, ``errors``), ``totals``
        (``shards``, ``samples``, ``bytes``, ``errors``, ``videos``) and ``config``.
    """
    out = Path(out)
    shards = []
    for name in names:
        entry = describe_shard(out / name, listed)
        entry["errors"] = len(read_errors(out / errors_sidecar(name)))
        shards.append(entry)
    totals = {
        "shards": len(shards),
        "samples": sum(s["samples"] for s in shards),
        "bytes": sum(s["bytes"] for s in shards),
        "errors": sum(s["errors"] for s in shards),
    }
    totals["videos"] = totals["samples"] + totals["errors"]
    index: dict[str, Any] = {
        "format_version": config["format_version"],
        "dataset": config["dataset"],
        "split": config["split"],
        "shards": shards,
        "totals": totals,
        "config": config,
    }
    if node is not None:
        index["node"] = dict(node)
    return index


def write_index(out: str | Path, names: list[str], config: dict[str, Any]) -> dict[str, Any]:
    """Write ``samples.jsonl`` and then ``index.json`` for shards ``names`` of ``out``.

    Both are written atomically; the index comes last and names the sidecar with its line
    count, so a reader that finds the index finds a whole sidecar that matches it.

    Returns:
        The index written.
    """
    out = Path(out)
    listed: list[dict[str, Any]] = []
    index = build_index(out, names, config, listed=listed)
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in listed)
    atomic_write_bytes(out / SAMPLES_NAME, data.encode())
    index["samples_file"] = {"name": SAMPLES_NAME, "samples": len(listed)}
    atomic_write_json(out / INDEX_NAME, index)
    return index


def read_index(path: str | Path) -> dict[str, Any]:
    """Read ``index.json`` from a shard directory or the file itself.

    Raises:
        FileNotFoundError: no index, i.e. the run has not finished (or never ran) there.
    """
    path = Path(path)
    if path.is_dir():
        path = path / INDEX_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: the shard run into {path.parent} has not finished "
            "(re-run `mof-cli shard` with the same options to complete it)"
        )
    return json.loads(path.read_text())


def write_errors(out: str | Path, names: list[str]) -> int:
    """Join the per-shard error sidecars of ``names`` into ``errors.jsonl``; return the count."""
    out = Path(out)
    records = [r for name in names for r in read_errors(out / errors_sidecar(name))]
    data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    atomic_write_bytes(out / ERRORS_NAME, data.encode())
    return len(records)


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The content settings on which two resolved configs disagree, as readable lines."""
    return [
        f"{key}: {saved.get(key)!r} (existing) != {current.get(key)!r} (this run)"
        for key in CONTENT_KEYS
        if saved.get(key) != current.get(key)
    ]


def merge_indexes(out: str | Path) -> dict[str, Any]:
    """Join the partial indexes of a multi-node run in ``out`` into ``index.json``.

    Every node's partial index must be present, all must share one plan, and together they
    must list every shard of the plan exactly once. ``errors.jsonl`` is written first and
    ``index.json`` last.

    Returns:
        The merged index.

    Raises:
        ShardIndexError: listing every problem found (missing nodes, mixed configs, missing or
            duplicated shards).
    """
    out = Path(out)
    partials = [json.loads(p.read_text()) for p in sorted(out.glob("index.node-*-of-*.json"))]
    if not partials:
        raise ShardIndexError(f"{out}: no partial indexes (index.node-*-of-*.json) to merge")
    problems: list[str] = []
    config = partials[0]["config"]
    counts = {p["node"]["num_nodes"] for p in partials}
    if len(counts) > 1:
        problems.append(f"partial indexes from runs with different node counts: {sorted(counts)}")
    ranks = {p["node"]["rank"] for p in partials}
    missing_ranks = sorted(set(range(max(counts))) - ranks)
    if missing_ranks:
        problems.append(f"no partial index yet from node rank(s) {missing_ranks} of {max(counts)}")
    for p in partials[1:]:
        problems += [
            f"node {p['node']['rank']}: {d}" for d in config_differences(config, p["config"])
        ]
    names = [s["name"] for p in partials for s in p["shards"]]
    expected = [
        shard_name(config["dataset"], config["split"], k) for k in range(config["num_shards"])
    ]
    if sorted(names) != expected:
        dup = sorted({n for n in names if names.count(n) > 1})
        absent = sorted(set(expected) - set(names))
        problems.append(f"shards listed twice: {dup}; shards not listed: {absent}")
    problems += [f"{out / n} is missing" for n in expected if not (out / n).exists()]
    if problems:
        raise ShardIndexError(f"cannot merge the indexes in {out}:\n  " + "\n  ".join(problems))
    write_errors(out, expected)
    return write_index(out, expected, config)


@dataclass
class ListedSamples:
    """The samples of a list of shards, from their directories' ``samples.jsonl``.

    Attributes:
        rows: one ``{"key", "video_id", "captions", "shard"}`` per sample, in shard order.
        per_shard: samples of each shard, in the order the shards were given.
        frames_shape: ``(R, S, S, 3)``, the stored frames of every sample (from the indexes).
        dataset: the dataset name the indexes record.
    """

    rows: list[dict[str, Any]]
    per_shard: list[int]
    frames_shape: tuple[int, int, int, int]
    dataset: str


def read_listed_samples(shards: list[str]) -> tuple[ListedSamples | None, str]:
    """The samples of ``shards`` from their directories' sidecars, opening no shard.

    Args:
        shards: shard paths (as :func:`pipeline.sharding.samples.resolve_shards` returns them).

    Returns:
        ``(listed, "")``, or ``(None, reason)`` when some shard's directory has no usable
        sidecar (no ``index.json``, an index that does not name ``samples.jsonl`` or does not
        list the shard, or a sidecar whose line count differs from the index's): the caller
        then reads the shards themselves.
    """
    by_dir: dict[Path, tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]] = {}
    rows: list[dict[str, Any]] = []
    per_shard: list[int] = []
    shapes, datasets = set(), set()
    for shard in shards:
        path = Path(shard)
        if path.parent not in by_dir:
            found = _load_sidecar(path.parent)
            if isinstance(found, str):
                return None, found
            by_dir[path.parent] = found
        index, grouped = by_dir[path.parent]
        counts = {s["name"]: s["samples"] for s in index["shards"]}
        own = grouped.get(path.name, [])
        if path.name not in counts:
            return None, f"{path.parent / INDEX_NAME} does not list {path.name}"
        if len(own) != counts[path.name]:
            return None, (f"{path.parent / SAMPLES_NAME} lists {len(own)} samples of {path.name}, "
                          f"{INDEX_NAME} {counts[path.name]}")
        rows += own
        per_shard.append(len(own))
        config = index["config"]
        shapes.add((config["frames"], config["size"], config["size"], 3))
        datasets.add(index["dataset"])
    if len(shapes) > 1 or len(datasets) > 1:
        return None, f"the shards' indexes record different frames or datasets: {sorted(shapes)}"
    return ListedSamples(rows, per_shard, shapes.pop(), datasets.pop()), ""


def _load_sidecar(directory: Path):
    """``(index, rows by shard name)`` of a directory, or the reason it has no usable sidecar."""
    index_path = directory / INDEX_NAME
    if not index_path.is_file():
        return f"no {INDEX_NAME} in {directory}"
    try:
        index = json.loads(index_path.read_text())
        named = index.get("samples_file")
        if not named or not (directory / named["name"]).is_file():
            return f"no {SAMPLES_NAME} beside {index_path}"
        grouped: dict[str, list[dict[str, Any]]] = {}
        lines = (directory / named["name"]).read_text().splitlines()
        for line in lines:
            row = json.loads(line)
            grouped.setdefault(row["shard"], []).append(row)
    except (ValueError, KeyError, TypeError) as exc:
        return f"{index_path} or its {SAMPLES_NAME} cannot be read ({exc!r})"
    if len(lines) != named["samples"]:
        return f"{directory / named['name']} has {len(lines)} lines, {index_path} says " \
               f"{named['samples']}"
    return index, grouped

"""The shard directory's bookkeeping: file names, ``index.json`` and errors.

A shard directory written by :func:`pipeline.shards.write.write_shards` holds

- ``<dataset>-<split>-%06d.tar``: the shards, each present only once complete;
- ``<dataset>-<split>-%06d.errors.jsonl``: the error records of one shard, only when it had any;
- ``shard_config.json``: the resolved config of the run, written before the first shard;
- ``index.json``: every shard with its sample count and bytes, the totals and the resolved
  config, written last, once every shard of the plan exists;
- ``errors.jsonl``: the error records of all shards, in shard order (possibly empty);
- ``index.node-KKKKK-of-NNNNN.json``: the partial index of one node of a multi-node run, joined
  into ``index.json`` by :func:`merge_indexes`.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_write_bytes, atomic_write_json
from pipeline.errors import MofError

__all__ = [
    "CONTENT_KEYS",
    "ERRORS_NAME",
    "INDEX_NAME",
    "RUN_CONFIG_NAME",
    "ShardIndexError",
    "build_index",
    "config_differences",
    "describe_shard",
    "errors_sidecar",
    "merge_indexes",
    "partial_index_name",
    "read_errors",
    "read_index",
    "shard_name",
    "write_errors",
]

INDEX_NAME = "index.json"
ERRORS_NAME = "errors.jsonl"
RUN_CONFIG_NAME = "shard_config.json"

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


def describe_shard(path: str | Path) -> dict[str, Any]:
    """Count the samples of a finished shard (one ``json`` member each) and its bytes.

    Reading the headers also proves the tar is whole: a truncated file raises here.

    Raises:
        ShardIndexError: the shard cannot be read as a tar, naming the file.
    """
    path = Path(path)
    try:
        with tarfile.open(path, "r:") as tar:
            samples = sum(
                1 for m in tar if m.isfile() and m.name.rsplit("/", 1)[-1].endswith(".json")
            )
    except (tarfile.TarError, OSError) as exc:
        raise ShardIndexError(f"{path}: not a readable tar ({exc})") from exc
    return {"name": path.name, "samples": samples, "bytes": path.stat().st_size}


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
) -> dict[str, Any]:
    """The index of shards ``names`` of directory ``out``.

    Args:
        out: the shard directory.
        names: shard file names in shard order.
        config: the resolved run config (saved verbatim under ``config``).
        node: ``{"rank": k, "num_nodes": n}`` for a partial index of a multi-node run.

    Returns:
        The index dict: ``shards`` (``name``, ``samples``, ``bytes``, ``errors``), ``totals``
        (``shards``, ``samples``, ``bytes``, ``errors``, ``videos``) and ``config``.
    """
    out = Path(out)
    shards = []
    for name in names:
        entry = describe_shard(out / name)
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
    index = build_index(out, expected, config)
    atomic_write_json(out / INDEX_NAME, index)
    return index

"""``mof-cli shard --retry-failed``: re-attempt the videos recorded in ``errors.jsonl``.

Videos that decode now go into new shards numbered after the plan's (``<dataset>-<split>-
%06d.tar`` with a number >= the plan's shard count), written like any other shard: to a
temporary name, their error sidecar first, then renamed. A retry shard is committed only when
at least one of its videos now decodes, so retrying videos that still fail writes nothing.

The current errors are derived, never stored alone: walking the shards in number order, a
shard's sidecar records the errors of the videos it attempted, and a retry shard's samples
clear the errors of the videos it holds. :func:`reconcile_errors` then rewrites each sidecar to
hold exactly the current errors it owns, so that ``index.json`` and ``errors.jsonl`` count each
failing video once. Every step is idempotent: a run killed anywhere is finished by running the
same command again.
"""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_write_bytes
from pipeline.sharding.index import errors_sidecar, read_errors
from pipeline.sharding.worker import ShardTask

__all__ = ["current_errors", "reconcile_errors", "retry_shards", "retry_tasks", "shard_names"]


def _prefix(plan: list[ShardTask]) -> str:
    """``<dataset>-<split>-``: the shard names' common part (see
    :func:`pipeline.sharding.index.shard_name`)."""
    return plan[0].name[: -len("000000.tar")]


def shard_names(out: Path, plan: list[ShardTask]) -> list[str]:
    """The plan's shard names, then those of the retry shards present in ``out``, in order."""
    if not plan:
        return []
    prefix = _prefix(plan)
    pattern = re.compile(re.escape(prefix) + r"(\d{6,})\.tar$")
    numbers = sorted(
        int(m.group(1)) for p in out.glob(f"{prefix}*.tar")
        if (m := pattern.match(p.name)) and int(m.group(1)) >= len(plan)
    )
    return [t.name for t in plan] + [p for p in (f"{prefix}{k:06d}.tar" for k in numbers)]


def _sample_keys(path: Path) -> list[str]:
    """The keys of the samples of a shard (one ``<key>.json`` member each)."""
    with tarfile.open(path, "r:") as tar:
        return [m.name[: -len(".json")] for m in tar if m.isfile() and m.name.endswith(".json")]


def current_errors(
    out: Path, names: list[str], plan: list[ShardTask]
) -> dict[str, tuple[str, dict[str, Any]]]:
    """Video id -> ``(shard that owns its error, error record)`` for every failing video.

    Args:
        out: the shard directory.
        names: :func:`shard_names` of the run.
        plan: the run's plan (its keys map retry shards' samples back to video ids).
    """
    id_of = {key: r.video_id for t in plan for key, r in zip(t.keys, t.records, strict=True)}
    in_plan = {t.name for t in plan}
    state: dict[str, tuple[str, dict[str, Any]]] = {}
    for name in names:
        if name not in in_plan:
            for key in _sample_keys(out / name):  # now decoded: no longer an error
                state.pop(id_of.get(key, key), None)
        for error in read_errors(out / errors_sidecar(name)):
            state.pop(error["video_id"], None)  # re-inserted: the latest attempt goes last
            state[error["video_id"]] = (name, error)
    return state


def reconcile_errors(out: Path, names: list[str], plan: list[ShardTask]) -> int:
    """Rewrite each shard's sidecar to hold exactly the current errors it owns.

    Returns:
        The number of failing videos.
    """
    state = current_errors(out, names, plan)
    owned: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for name, error in state.values():
        owned[name].append(error)
    for name, errors in owned.items():
        sidecar = out / errors_sidecar(name)
        if read_errors(sidecar) == errors:
            continue
        if errors:
            data = "".join(json.dumps(e, sort_keys=True) + "\n" for e in errors)
            atomic_write_bytes(sidecar, data.encode())
        else:
            sidecar.unlink(missing_ok=True)
    return len(state)


def retry_tasks(
    out: Path, plan: list[ShardTask], shard_size: int
) -> list[ShardTask]:
    """The shards that re-attempt every failing video, numbered after the last shard."""
    names = shard_names(out, plan)
    failing = current_errors(out, names, plan)
    if not failing or not plan:
        return []
    by_id = {r.video_id: (r, key) for t in plan for r, key in zip(t.records, t.keys, strict=True)}
    todo = sorted(v for v in failing if v in by_id)  # plan order: sorted by video id
    prefix = _prefix(plan)
    first = max(len(plan), int(names[-1][len(prefix) : -len(".tar")]) + 1)
    tasks = []
    for k, start in enumerate(range(0, len(todo), shard_size)):
        chunk = [by_id[v] for v in todo[start : start + shard_size]]
        tasks.append(ShardTask(
            index=first + k,
            name=f"{prefix}{first + k:06d}.tar",
            records=tuple(r for r, _ in chunk),
            keys=tuple(key for _, key in chunk),
        ))
    return tasks


def retry_shards(out: Path, plan: list[ShardTask], shard_size: int) -> list[ShardTask]:
    """Prepare a retry: finish any interrupted one's bookkeeping, then plan the new shards.

    Returns:
        The retry shards to write (none when no video is failing).
    """
    reconcile_errors(out, shard_names(out, plan), plan)
    return retry_tasks(out, plan, shard_size)

"""The unit of work of ``mof-cli shard``: one whole shard, decoded and written crash-safely.

The plan is deterministic: records sorted by video id, video ``k`` in shard ``k // shard_size``.
A worker writes a shard with WebDataset's ``TarWriter`` under a temporary name
(:func:`pipeline.atomic.atomic_path`), commits the shard's error records beside it and only then
fsyncs and renames the tar to its final name, so a shard under its final name is always complete
and its errors are always on disk with it.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

from pipeline.atomic import atomic_path, atomic_write_bytes
from pipeline.datasets.records import SHARD_FORMAT_VERSION, VideoRecord
from pipeline.sharding.index import errors_sidecar, shard_name

__all__ = [
    "ShardResult",
    "ShardTask",
    "WorkerSettings",
    "make_plan",
    "sanitise_keys",
    "write_one_shard",
]

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class ShardTask:
    """One shard of the plan.

    Attributes:
        index: shard number (the ``%06d`` in the file name).
        name: the shard's file name.
        records: its videos, in plan order.
        keys: the sanitised WebDataset key of each record.
    """

    index: int
    name: str
    records: tuple[VideoRecord, ...]
    keys: tuple[str, ...]


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs to turn records into samples (all resolved, picklable).

    ``commit_empty``: commit a shard none of whose videos decoded (a plan shard must exist;
    a retry shard that would hold nothing is dropped, so retrying what still fails writes
    nothing).
    """

    dataset: str
    split: str
    root: str
    out: str
    frames: int
    size: int
    backend: str
    commit_empty: bool = True


@dataclass(frozen=True)
class ShardResult:
    """What one shard's writing produced: videos attempted, samples written, errors recorded,
    and whether the shard was committed (see ``WorkerSettings.commit_empty``)."""

    name: str
    videos: int
    samples: int
    errors: int
    committed: bool = True


def sanitise_keys(video_ids: list[str]) -> list[str]:
    """WebDataset keys for ``video_ids``: every character outside ``[A-Za-z0-9_-]`` becomes ``_``.

    WebDataset splits a member name at the first dot of its base name, so a key must hold no
    dot (nor a slash). Ids that would collide after sanitising get ``-`` and 8 hex digits of
    the SHA-1 of the original id appended, so keys stay unique and deterministic.
    """
    plain = [_UNSAFE.sub("_", v) or "_" for v in video_ids]
    seen: dict[str, int] = {}
    for key in plain:
        seen[key] = seen.get(key, 0) + 1
    return [
        f"{key}-{hashlib.sha1(vid.encode()).hexdigest()[:8]}" if seen[key] > 1 else key
        for key, vid in zip(plain, video_ids)
    ]


def make_plan(
    records: list[VideoRecord], dataset: str, split: str, shard_size: int
) -> list[ShardTask]:
    """Split ``records`` (sorted here by video id) into shards of ``shard_size`` videos."""
    records = sorted(records, key=lambda r: r.video_id)
    keys = sanitise_keys([r.video_id for r in records])
    return [
        ShardTask(
            index=k,
            name=shard_name(dataset, split, k),
            records=tuple(records[start : start + shard_size]),
            keys=tuple(keys[start : start + shard_size]),
        )
        for k, start in enumerate(range(0, len(records), shard_size))
    ]


def _error(record: VideoRecord, reason: str, stage: str) -> dict[str, Any]:
    return {"video_id": record.video_id, "source": record.path, "reason": reason, "stage": stage}


def _encode_video(
    record: VideoRecord, key: str, settings: WorkerSettings
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Decode one video into a sample dict, or describe why not (errors are values here)."""
    from pipeline.decode.common import DecodeError
    from pipeline.decode.video import decode_video

    path = Path(settings.root) / record.path
    if not path.is_file():
        return None, _error(record, f"file not found: {path}", "read")
    try:
        video = decode_video(str(path), settings.frames, settings.size, backend=settings.backend)
    except DecodeError as exc:
        return None, _error(record, str(getattr(exc, "reason", exc)) or repr(exc), "decode")
    except Exception as exc:  # noqa: BLE001 - a decoder crash on one file must not end the run
        return None, _error(record, f"{type(exc).__name__}: {exc}", "decode")
    frames = np.ascontiguousarray(video.frames, dtype=np.uint8)
    expected = (settings.frames, settings.size, settings.size, 3)
    if frames.shape != expected:
        reason = f"decoder returned frames of shape {frames.shape}, expected {expected}"
        return None, _error(record, reason, "decode")
    meta = {
        "video_id": record.video_id,
        "captions": list(record.captions),
        "split": record.split,
        "dataset": settings.dataset,
        "source": record.path,
        "fps": float(video.fps),
        "num_frames": int(video.num_frames),
        "duration_s": float(video.duration_s),
        "indices": [int(i) for i in video.indices],
        "backend": str(video.backend),
        "format_version": SHARD_FORMAT_VERSION,
    }
    npy = io.BytesIO()
    np.lib.format.write_array(npy, frames, allow_pickle=False)
    sample = {
        "__key__": key,
        "frames.npy": npy.getvalue(),
        "json": json.dumps(meta, sort_keys=True).encode(),
    }
    return sample, None


# Members carry mtime 0, mode 0444 and no owner, in a PAX tar (the format tarfile writes by
# default, which lifts ustar's 100-character name limit): a shard is a function of its samples,
# so a re-run writes identical bytes. No encoder: samples arrive as bytes.
_TAR_OPTIONS: dict[str, Any] = {
    "user": "", "group": "", "mode": 0o444, "mtime": 0, "format": "PAX_FORMAT", "encoder": False,
}


class _NothingToCommit(Exception):
    """A retry shard whose videos all failed again: no shard is committed."""


def write_one_shard(
    task: ShardTask, settings: WorkerSettings, on_video: Callable[[bool], None] | None = None
) -> ShardResult:
    """Decode and write one shard, committing it atomically.

    Args:
        task: the shard to write.
        settings: decode and output settings.
        on_video: called after each video with ``True`` when it failed (for progress bars).

    Returns:
        The shard's counts.
    """
    out = Path(settings.out)
    sidecar = out / errors_sidecar(task.name)
    # A sidecar left by an interrupted attempt could describe errors that no longer occur.
    sidecar.unlink(missing_ok=True)
    errors: list[dict[str, Any]] = []
    samples = 0
    try:
        with atomic_path(out / task.name) as tmp:
            # Each sample's members adjacent, in field order (TarWriter sorts them).
            with open(tmp, "wb") as stream, wds.TarWriter(stream, **_TAR_OPTIONS) as tar:
                for record, key in zip(task.records, task.keys):
                    sample, error = _encode_video(record, key, settings)
                    if error is None:
                        tar.write(sample)
                        samples += 1
                    else:
                        errors.append({**error, "shard": task.name})
                    if on_video is not None:
                        on_video(error is not None)
            if not samples and not settings.commit_empty:
                raise _NothingToCommit
            if errors:  # committed before the tar is renamed: a final shard has its errors
                atomic_write_bytes(
                    sidecar,
                    "".join(json.dumps(e, sort_keys=True) + "\n" for e in errors).encode())
    except _NothingToCommit:  # atomic_path has removed the temporary tar
        return ShardResult(task.name, len(task.records), 0, len(errors), committed=False)
    return ShardResult(task.name, len(task.records), samples, len(errors))


# --- worker processes ----------------------------------------------------------------------

_PROGRESS: Any = None


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this worker when its parent dies.

    A parent killed with SIGKILL cannot stop its workers; an orphan still writing a temporary
    files would race with the re-run that sweeps and rewrites them.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def init_worker(queue: Any, parent: int) -> None:
    """Pool initializer: tie the worker's life to the parent, keep the progress queue."""
    global _PROGRESS
    _die_with_parent(parent)
    # Ctrl-C reaches the whole process group: the parent alone handles it (and stops us), so
    # the user sees one message saying how to resume, not a traceback per worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _PROGRESS = queue


def run_in_worker(task: ShardTask, settings: WorkerSettings) -> ShardResult:
    """Entry point of a pool worker: write ``task``, reporting each video on the queue."""
    return write_one_shard(
        task, settings, on_video=_PROGRESS.put if _PROGRESS is not None else None
    )

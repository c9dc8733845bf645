"""Encoding a test split: every video with U uniform frames and every caption, in batches.

The helpers :func:`mof.evaluate.evaluate_model` times and ranks with. Videos are read from the
shards in order on one process (an evaluation reads every shard even inside a DDP job);
embeddings come back in float32 whatever the autocast.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mof.frames import to_model_input
from mof.models.contract import RetrievalModel

__all__ = ["encode_texts", "encode_videos", "eval_mode", "sync"]


@contextlib.contextmanager
def eval_mode(model: RetrievalModel) -> Iterator[None]:
    """Eval mode with fused attention, restoring both afterwards (the trainer's model)."""
    was_training, attention = model.training, model.attention
    model.eval()
    model.set_attention("fused")
    try:
        yield
    finally:
        model.train(was_training)
        model.set_attention(attention)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _count_videos(shards: list[str]) -> int | None:
    """Videos in ``shards`` from their directories' ``index.json`` (for the progress bar)."""
    from pipeline.index import read_index

    counts: dict[str, int] = {}
    for parent in {str(Path(s).parent) for s in shards}:
        try:
            counts.update({str(Path(parent) / e["name"]): e["samples"]
                           for e in read_index(parent)["shards"]})
        except (FileNotFoundError, KeyError, ValueError):
            return None
    try:
        return sum(counts[s] for s in shards)
    except KeyError:
        return None


def encode_videos(model, shards, frames, batch_size, device, autocast, progress):
    """Encode every video: embeddings ``(V, D)`` float32, captions per video, and stats."""
    from pipeline.reader import ShardDataset
    from pipeline.sampling import uniform_subset

    embeddings, batch, captions, seen = [], [], [], set()
    stats: dict[str, Any] = {"read_s": 0.0, "encode_video_s": 0.0, "stored": set(),
                             "datasets": set(), "splits": set()}

    def flush() -> None:
        start = time.perf_counter()
        with autocast:
            embeddings.append(model.encode_video(torch.stack(batch)).float())
        sync(device)
        stats["encode_video_s"] += time.perf_counter() - start
        batch.clear()

    bar = tqdm(total=_count_videos(shards), desc="videos", unit="video", disable=not progress)
    start = time.perf_counter()
    # rank/world_size fixed: an evaluation reads every shard even inside a DDP job.
    for sample in ShardDataset(shards, shuffle=0, rank=0, world_size=1):
        key, meta, stored = sample["key"], sample["meta"], sample["frames"].shape[0]
        if key in seen:
            raise ValueError(f"video {key!r} appears twice in the shards")
        if not meta.get("captions"):
            raise ValueError(f"video {key!r} has no caption: nothing to query it with")
        seen.add(key)
        captions.append(list(meta["captions"]))
        for name, value in (("stored", stored), ("datasets", meta.get("dataset", "")),
                            ("splits", meta.get("split", ""))):
            stats[name].add(value)
        batch.append(to_model_input(sample["frames"], model.contract,
                                    uniform_subset(stored, frames), device))
        stats["read_s"] += time.perf_counter() - start
        if len(batch) == batch_size:
            flush()
        bar.update(1)
        start = time.perf_counter()
    if batch:
        flush()
    bar.close()
    if not captions:
        raise ValueError(f"no video in the shards {shards[:3]}")
    return torch.cat(embeddings), captions, stats


def encode_texts(model, texts, batch_size, device, autocast, progress):
    """Encode captions: embeddings ``(Q, D)`` float32 and the seconds it took."""
    embeddings = []
    start = time.perf_counter()
    for i in tqdm(range(0, len(texts), batch_size), desc="queries", unit="batch",
                  disable=not progress):
        tokens = {k: v.to(device) for k, v in model.tokenize(texts[i : i + batch_size]).items()}
        with autocast:
            embeddings.append(model.encode_text(**tokens).float())
    sync(device)
    return torch.cat(embeddings), time.perf_counter() - start

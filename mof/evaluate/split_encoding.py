"""Encoding a test split: every video with U uniform frames and every caption, in batches.

The helpers :func:`mof.evaluate.evaluate.evaluate_model` times and ranks with. Videos are read
from the shards in order on one process (an evaluation reads every shard even inside a DDP job);
embeddings come back in float32 whatever the autocast.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mof.frames import to_model_input
from mof.models.contract import RetrievalModel
from pipeline.datasets.records import ShardSample

__all__ = ["autocast_for", "count_videos", "device_problem", "encode_texts", "encode_video_batches",
           "encode_videos", "eval_mode", "resolve_device", "sync"]


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


def device_problem(name: str) -> str | None:
    """Why ``--device name`` cannot be used here, or ``None`` when it can."""
    if name not in ("auto", "cpu", "cuda"):
        return f"--device must be auto, cpu or cuda, got {name!r}"
    if name == "cuda" and not torch.cuda.is_available():
        return "--device cuda: no CUDA device is available"
    return None


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu`` and ``cuda`` as they are."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_videos(shards: list[str]) -> int | None:
    """Videos in ``shards`` from their directories' ``index.json`` (for the progress bar)."""
    from pipeline.sharding.index import read_index

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


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on a CUDA device, nothing elsewhere (embeddings are cast back to float32)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def encode_video_batches(
    model: RetrievalModel,
    samples: Iterable[ShardSample],
    frames: int,
    batch_size: int,
    stats: dict[str, float] | None = None,
) -> Iterator[tuple[torch.Tensor, list[ShardSample]]]:
    """Encode shard samples with ``frames`` uniform frames each, a batch at a time.

    The one video encoder loop: the evaluator and the search index both run it.

    Args:
        model: the model, in eval mode, on the device to run on (bf16 autocast on CUDA).
        samples: shard samples (``frames`` uint8 ``(R, S, S, 3)``).
        frames: U, frames per video at the segment midpoints of the stored ones.
        batch_size: videos per encoder call.
        stats: if given, ``read_s`` (reading and preparing frames) and ``encode_video_s``
            (the model's share) accumulate into it, in seconds.

    Yields:
        ``(embeddings, batch)``: float32 ``(B, D)`` embeddings of the ``B`` samples of ``batch``
        in the order they came.
    """
    from pipeline.sampling import uniform_subset

    stats = {} if stats is None else stats
    for name in ("read_s", "encode_video_s"):
        stats.setdefault(name, 0.0)
    device = next(model.parameters()).device
    batch: list[ShardSample] = []
    inputs: list[torch.Tensor] = []
    start = time.perf_counter()
    for sample in itertools.chain(samples, [None]):
        if sample is not None:
            inputs.append(to_model_input(sample["frames"], model.contract,
                                         uniform_subset(sample["frames"].shape[0], frames),
                                         device))
            batch.append(sample)
        stats["read_s"] += time.perf_counter() - start
        if batch and (sample is None or len(batch) == batch_size):
            start = time.perf_counter()
            with autocast_for(device):
                embeddings = model.encode_video(torch.stack(inputs)).float()
            sync(device)
            stats["encode_video_s"] += time.perf_counter() - start
            yield embeddings, batch
            batch, inputs = [], []
        start = time.perf_counter()


def _checked(samples: Iterable[ShardSample], captions: list[list[str]],
             stats: dict[str, Any]) -> Iterator[ShardSample]:
    """Pass test samples on, refusing a repeated video or one without caption."""
    seen: set[str] = set()
    for sample in samples:
        key, meta = sample["key"], sample["meta"]
        if key in seen:
            raise ValueError(f"video {key!r} appears twice in the shards")
        if not meta.get("captions"):
            raise ValueError(f"video {key!r} has no caption: nothing to query it with")
        seen.add(key)
        captions.append(list(meta["captions"]))
        for name, value in (("stored", sample["frames"].shape[0]),
                            ("datasets", meta.get("dataset", "")),
                            ("splits", meta.get("split", ""))):
            stats[name].add(value)
        yield sample


def encode_videos(model, shards, frames, batch_size, progress):
    """Encode every video: embeddings ``(V, D)`` float32, captions per video, and stats."""
    from pipeline.sharding.reader import ShardDataset

    captions: list[list[str]] = []
    stats: dict[str, Any] = {"stored": set(), "datasets": set(), "splits": set()}
    # rank/world_size fixed: an evaluation reads every shard even inside a DDP job.
    samples = _checked(ShardDataset(shards, shuffle=0, rank=0, world_size=1), captions, stats)
    embeddings = []
    with tqdm(total=count_videos(shards), desc="videos", unit="video",
              disable=not progress) as bar:
        for batch_embeddings, batch in encode_video_batches(model, samples, frames,
                                                            batch_size, stats):
            embeddings.append(batch_embeddings)
            bar.update(len(batch))
    if not captions:
        raise ValueError(f"no video in the shards {shards[:3]}")
    return torch.cat(embeddings), captions, stats


def encode_texts(model, texts, batch_size, progress):
    """Encode captions: embeddings ``(Q, D)`` float32 and the seconds it took."""
    device = next(model.parameters()).device
    embeddings = []
    start = time.perf_counter()
    for i in tqdm(range(0, len(texts), batch_size), desc="queries", unit="batch",
                  disable=not progress):
        tokens = {k: v.to(device) for k, v in model.tokenize(texts[i : i + batch_size]).items()}
        with autocast_for(device):
            embeddings.append(model.encode_text(**tokens).float())
    sync(device)
    return torch.cat(embeddings), time.perf_counter() - start

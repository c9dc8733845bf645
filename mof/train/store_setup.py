"""Before the first phase: list the training videos and fill the MOF store from the shards.

The store needs every video id up front (one row each), and the word-level tokenizer of the
tiny models needs every caption, so each rank scans its shards once without decoding frames
and the ranks exchange what they saw. Rows are then initialised **before training** from the
U frames at the segment midpoints of the stored R (``uniform_subset``), each rank writing the
rows of its own shards. Initialisation resumes: only rows the store reports missing are
written, so a run killed while filling the store continues where it stopped.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mof.frames import to_model_input
from mof.models.contract import InputContract
from mof.train.distributed import DistInfo, all_gather_objects, barrier
from pipeline.framestore import FrameStore
from pipeline.reader import ShardDataset
from pipeline.sampling import uniform_subset

__all__ = ["TrainIndex", "init_store_rows", "open_frame_store", "scan_train_shards"]


@dataclass
class TrainIndex:
    """What the scan of the training shards found.

    Attributes:
        keys: every training video's shard key, sorted (the store's row order).
        captions: every caption of every training video (tokenizer vocabulary).
        stored_frames: R_stored, frames per sample in the shards.
        frame_side: S, the stored frames' side in pixels.
        dataset: the dataset name recorded in the samples.
        rank_samples: number of samples each rank read, in rank order.
    """

    keys: list[str]
    captions: list[str]
    stored_frames: int
    frame_side: int
    dataset: str
    rank_samples: list[int]


def _npy_shape(raw: bytes) -> tuple[int, ...]:
    buf = io.BytesIO(raw)
    major, _ = np.lib.format.read_magic(buf)
    read_header = (np.lib.format.read_array_header_1_0 if major == 1
                   else np.lib.format.read_array_header_2_0)
    shape, _, _ = read_header(buf)  # the header only: the frame bytes stay unparsed
    return tuple(shape)


def _summary(sample: dict) -> dict:
    # In the worker: keep the few fields the scan needs, drop the frame bytes.
    return {"key": sample["key"], "captions": list(sample["meta"].get("captions", [])),
            "dataset": sample["meta"].get("dataset", ""), "shape": _npy_shape(sample["frames"])}


def scan_train_shards(shards: list[str], dist: DistInfo, workers: int,
                      progress: bool = True) -> TrainIndex:
    """Read keys, captions and frame shapes of the training shards (every rank its own part).

    Raises:
        ValueError: samples with different stored shapes, or the same key twice.
    """
    dataset = ShardDataset(shards, shuffle=0, rank=dist.rank, world_size=dist.world_size,
                           decode=False)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=_summary)
    local = [s for s in tqdm(loader, desc="scan shards", unit="video", leave=False,
                             disable=not (progress and dist.is_main))]
    gathered = all_gather_objects(local)
    rows = [s for part in gathered for s in part]
    shapes = {s["shape"] for s in rows}
    keys = sorted(s["key"] for s in rows)
    problems = []
    if not rows:
        problems.append(f"no training samples in {len(shards)} shard(s)")
    if len(shapes) > 1:
        problems.append(f"training samples store different frame shapes {sorted(shapes)}")
    if len(set(keys)) != len(keys):
        dupes = sorted({k for k in keys if keys.count(k) > 1})[:10]
        problems.append(f"duplicate training keys {dupes}")
    if problems:
        raise ValueError("; ".join(problems))
    stored, side = next(iter(shapes))[0], next(iter(shapes))[1]
    return TrainIndex(keys=keys, captions=[c for s in rows for c in s["captions"]],
                      stored_frames=stored, frame_side=side, dataset=rows[0]["dataset"],
                      rank_samples=[len(part) for part in gathered])


def open_frame_store(path: Path, index: TrainIndex, contract: InputContract, *, num_frames: int,
                     regular_frames: int, shards: list[str], dtype: str,
                     dist: DistInfo) -> FrameStore:
    """Open the run's store, creating it on rank 0 if absent; checks it matches the run.

    Raises:
        FrameStoreMismatchError: an existing store was built for another run.
    """
    expect = {"U": num_frames, "R": regular_frames, "H": contract.frame_size,
              "mean": list(contract.mean), "std": list(contract.std), "dataset": index.dataset,
              "shards": list(shards), "num_videos": len(index.keys), "dtype": dtype}
    if dist.is_main and not (path / "zarr.json").is_file():
        FrameStore.create(path, index.keys, num_frames=num_frames,
                          frame_size=contract.frame_size, mean=contract.mean, std=contract.std,
                          regular_frames=regular_frames, shards=shards, dataset=index.dataset,
                          dtype=dtype)
    barrier()
    store = FrameStore.open(path, mode="r+", expect=expect)
    if store.video_ids != index.keys:
        raise ValueError(f"frame store {path} lists other videos than the training shards")
    return store


def _decoded(sample: dict) -> dict:
    return {"key": sample["key"], "frames": torch.from_numpy(sample["frames"])}


def init_store_rows(store: FrameStore, shards: list[str], contract: InputContract, *,
                    num_frames: int, dist: DistInfo, workers: int, chunk: int = 32,
                    progress: bool = True) -> int:
    """Write U uniform frames into every row the store reports missing; returns rows written.

    Every rank fills the rows of the shards it reads; rank 0 then records the count.
    """
    missing = set(store.missing_rows().tolist())
    written = 0
    if missing:
        dataset = ShardDataset(shards, shuffle=0, rank=dist.rank, world_size=dist.world_size)
        loader = DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=_decoded)
        rows, frames = [], []
        bar = tqdm(loader, desc="init MOF store", unit="video", leave=False,
                   disable=not (progress and dist.is_main))
        for sample in bar:
            row = int(store.row_of([sample["key"]])[0])
            if row not in missing:
                continue
            positions = uniform_subset(sample["frames"].shape[0], num_frames)
            rows.append(row)
            frames.append(to_model_input(sample["frames"], contract, positions).numpy())
            if len(rows) == chunk:
                store.init_rows(np.asarray(rows), np.stack(frames))
                written, rows, frames = written + len(rows), [], []
        if rows:
            store.init_rows(np.asarray(rows), np.stack(frames))
            written += len(rows)
    barrier()
    if dist.is_main:
        store.finish_init()
    barrier()
    return written

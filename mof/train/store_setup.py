"""Before the first phase: list the training videos and fill the MOF store from the shards.

The store needs every video id up front (one row each), and the word-level tokenizer of the
tiny models needs every caption. Both come from the ``samples.jsonl`` the shard writer leaves
beside ``index.json``, so listing them opens no shard; for shards without it, each rank scans
its shards once without decoding frames and the ranks exchange what they saw. Rows are then
initialised **before training** from the U frames at the segment midpoints of the stored R
(``uniform_subset``), each rank writing the rows of its own shards. Initialisation resumes: only
rows the store reports missing are written, so a run killed while filling the store continues
where it stopped.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mof.frame_mix import initial_mix_logits, mix_frames
from mof.frames import to_model_input
from mof.models.contract import InputContract
from mof.train.data import anchor_positions
from mof.train.distributed import DistInfo, all_gather_objects, barrier
from pipeline.framestore.store import FrameStore
from pipeline.sampling import uniform_subset
from pipeline.sharding.index import read_listed_samples
from pipeline.sharding.reader import ShardDataset, shards_for_worker

__all__ = [
    "TrainIndex",
    "check_store_resolution",
    "frozen_fraction",
    "init_store_rows",
    "open_frame_store",
    "scan_train_shards",
]


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


_log = logging.getLogger(__name__)


def scan_train_shards(shards: list[str], dist: DistInfo, workers: int,
                      progress: bool = True) -> TrainIndex:
    """Keys, captions and frame shapes of the training shards.

    Read from the shard directories' ``samples.jsonl`` when every directory has one; otherwise
    from the shards themselves, every rank its own part (with a one-line notice).

    Raises:
        ValueError: samples with different stored shapes, or the same key twice.
    """
    listed, reason = read_listed_samples(shards)
    if listed is not None:
        rows = [{"key": r["key"], "captions": r["captions"], "dataset": listed.dataset,
                 "shape": listed.frames_shape} for r in listed.rows]
        # The samples each rank will read: its shards as the reader splits them by rank.
        counts = [sum(listed.per_shard[i] for i in _rank_shards(len(shards), r, dist))
                  for r in range(dist.world_size)]
        return _train_index(rows, counts, len(shards))
    if dist.is_main:
        _log.warning("listing the training videos by reading the shards: %s", reason)
    dataset = ShardDataset(shards, shuffle=0, rank=dist.rank, world_size=dist.world_size,
                           decode=False)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=_summary)
    local = [s for s in tqdm(loader, desc="scan shards", unit="video", leave=False,
                             disable=not (progress and dist.is_main))]
    gathered = all_gather_objects(local)
    return _train_index([s for part in gathered for s in part], [len(p) for p in gathered],
                        len(shards))


def _rank_shards(count: int, rank: int, dist: DistInfo) -> list[int]:
    return shards_for_worker(list(range(count)), rank, dist.world_size, 0, 1)


def _train_index(rows: list[dict], rank_samples: list[int], num_shards: int) -> TrainIndex:
    """Check the listed samples (one stored shape, unique keys) and sort their keys."""
    shapes = {s["shape"] for s in rows}
    keys = sorted(s["key"] for s in rows)
    problems = []
    if not rows:
        problems.append(f"no training samples in {num_shards} shard(s)")
    if len(shapes) > 1:
        problems.append(f"training samples store different frame shapes {sorted(shapes)}")
    if len(set(keys)) != len(keys):
        dupes = sorted(k for k, n in Counter(keys).items() if n > 1)[:10]
        problems.append(f"duplicate training keys {dupes}")
    if problems:
        raise ValueError("; ".join(problems))
    stored, side = next(iter(shapes))[0], next(iter(shapes))[1]
    return TrainIndex(keys=keys, captions=[c for s in rows for c in s["captions"]],
                      stored_frames=stored, frame_side=side, dataset=rows[0]["dataset"],
                      rank_samples=rank_samples)


def open_frame_store(path: Path, index: TrainIndex, contract: InputContract, *, num_frames: int,
                     regular_frames: int, shards: list[str], dtype: str,
                     dist: DistInfo, frame_param: str = "pixels") -> FrameStore:
    """Open the run's store, creating it on rank 0 if absent; checks it matches the run.

    Raises:
        FrameStoreMismatchError: an existing store was built for another run.
    """
    expect = {"U": num_frames, "R": regular_frames, "H": contract.frame_size,
              "mean": list(contract.mean), "std": list(contract.std), "dataset": index.dataset,
              "shards": list(shards), "num_videos": len(index.keys), "dtype": dtype,
              "frame_param": frame_param}
    if dist.is_main and not (path / "zarr.json").is_file():
        FrameStore.create(path, index.keys, num_frames=num_frames,
                          frame_size=contract.frame_size, mean=contract.mean, std=contract.std,
                          regular_frames=regular_frames, shards=shards, dataset=index.dataset,
                          dtype=dtype, frame_param=frame_param)
    barrier()
    store = FrameStore.open(path, mode="r+", expect=expect)
    if store.video_ids != index.keys:
        raise ValueError(f"frame store {path} lists other videos than the training shards")
    return store


def _decoded(sample: dict) -> dict:
    return {"key": sample["key"], "frames": torch.from_numpy(sample["frames"])}


def _initial_row(frames: torch.Tensor, contract: InputContract, num_frames: int,
                 mix: tuple[int, float] | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The first learnable frames ``(U, 3, H, W)`` of a video, and its mixing logits ``(U, R)``.

    ``pixels``: the uniform frames. ``mix`` (``(R, peak)``): the mix of the R anchors with
    logits peaked at the anchor nearest each uniform position, residual 0.
    """
    positions = uniform_subset(frames.shape[0], num_frames)
    if mix is None:
        return to_model_input(frames, contract, positions).numpy(), None
    regular, peak = mix
    anchors = anchor_positions(frames.shape[0], regular)
    logits = initial_mix_logits(positions, anchors, peak)
    composed = mix_frames(torch.from_numpy(logits)[None], None,
                          to_model_input(frames, contract, anchors)[None])[0]
    return composed.numpy(), logits


def init_store_rows(store: FrameStore, shards: list[str], contract: InputContract, *,
                    num_frames: int, dist: DistInfo, workers: int, chunk: int = 32,
                    progress: bool = True, mix: tuple[int, float] | None = None) -> int:
    """Write U uniform frames into every row the store reports missing; returns rows written.

    Every rank fills the rows of the shards it reads; rank 0 then records the count.
    ``mix``: ``(R, peak logit)`` of a ``mix`` store (see :func:`_initial_row`).
    """
    missing = set(store.missing_rows().tolist())
    written = 0
    if missing:
        dataset = ShardDataset(shards, shuffle=0, rank=dist.rank, world_size=dist.world_size)
        loader = DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=_decoded)
        rows, frames, logits = [], [], []
        bar = tqdm(loader, desc="init MOF store", unit="video", leave=False,
                   disable=not (progress and dist.is_main))
        for sample in bar:
            row = int(store.row_of([sample["key"]])[0])
            if row not in missing:
                continue
            first, first_logits = _initial_row(sample["frames"], contract, num_frames, mix)
            rows.append(row)
            frames.append(first)
            logits.append(first_logits)
            if len(rows) == chunk:
                store.init_rows(np.asarray(rows), np.stack(frames),
                                np.stack(logits) if mix else None)
                written, rows, frames, logits = written + len(rows), [], [], []
        if rows:
            store.init_rows(np.asarray(rows), np.stack(frames), np.stack(logits) if mix else None)
            written += len(rows)
    barrier()
    if dist.is_main:
        store.finish_init()
    barrier()
    return written


#: A float16 store that rounds away more than this share of the first Adam steps is refused;
#: above ``_WARN_FROZEN`` it is allowed with a warning.
_REFUSE_FROZEN, _WARN_FROZEN = 0.5, 0.01


def frozen_fraction(frames: np.ndarray, step: float, dtype: str) -> float:
    """Share of frame elements that an update of size ``step`` cannot change once stored.

    A value stored as ``dtype`` changes only if the update exceeds half its spacing there
    (round to nearest): in float16 a normalised pixel of magnitude 2-4 has spacing 2**-9, so
    steps under 9.8e-4 (the paper's β = 8e-4 among them) round back to the same value.

    Args:
        frames: float frames ``(..., 3, H, W)`` in normalised model-input units.
        step: the size of one update (Adam's first step is β).
        dtype: the store's dtype, ``float32`` or ``float16``.
    """
    stored = np.asarray(frames).astype(dtype)
    return float((np.spacing(np.abs(stored)).astype(np.float64) / 2 > step).mean())


def check_store_resolution(store: FrameStore, frame_lr: float, dtype: str,
                           sample_rows: int = 64) -> float:
    """Refuse, or warn about, a store dtype too coarse for the frames' Adam steps.

    Reads the first ``sample_rows`` initialised rows and measures :func:`frozen_fraction` at
    β = ``frame_lr``.

    Returns:
        The measured share of elements that one step of β cannot move.

    Raises:
        ValueError: more than half the elements are frozen (the run would train a baseline
            while reporting MOF).
    """
    rows = np.arange(min(sample_rows, store.num_videos))
    frames = store.read(rows, fields=("frames",)).frames
    share = frozen_fraction(frames, frame_lr, dtype)
    advice = (f"{100 * share:.1f} % of the learnable frames' elements (measured on "
              f"{len(rows)} videos) are too large for a {dtype} store to record an Adam step of "
              f"--frame-lr {frame_lr:g}: they would never move. Use --store-dtype float32")
    if share > _REFUSE_FROZEN:
        raise ValueError(advice + ".")
    if share > _WARN_FROZEN:
        warnings.warn(advice + " (or a larger --frame-lr).", RuntimeWarning, stacklevel=2)
    return share

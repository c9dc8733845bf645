"""Training batches from the shards, and the per-phase random draws made from them.

The reader streams each rank's shards through DataLoader workers; batches are assembled in the
main process (``drop_last``: a contrastive batch of one video has no negatives, and every rank
must run the same number of steps). Everything random about a phase (which caption, which
regular frames, which crop) comes from one generator seeded by ``(seed, epoch, batch, rank)``,
so a resumed run draws exactly what the uninterrupted run drew without saving generator state.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import DataLoader

from mof.frames import to_model_input
from mof.models.contract import InputContract, RetrievalModel
from mof.train.augment import VideoAugment, apply_augment, draw_augment
from pipeline.sampling import uniform_subset
from pipeline.sharding.reader import ShardDataset

__all__ = [
    "PhaseDraw",
    "RawBatch",
    "TrainStream",
    "anchor_positions",
    "draw_and_crop",
    "draw_phase",
    "phase_seed",
    "regular_positions",
]


@dataclass
class RawBatch:
    """B training videos as stored in the shards.

    Attributes:
        keys: shard keys (the store's video ids), ``B``.
        frames: uint8 ``(B, R_stored, S, S, 3)``.
        captions: every caption of each video.
    """

    keys: list[str]
    frames: torch.Tensor
    captions: list[list[str]]


def _as_sample(sample: dict) -> dict:
    if not sample["meta"].get("captions"):
        raise ValueError(f"video {sample['key']!r} has no caption to train with (videos without "
                         "captions can be indexed and searched, not trained on)")
    # Runs in the DataLoader worker: a torch tensor crosses to the main process through shared
    # memory, a numpy array would be pickled through a pipe.
    return {"key": sample["key"], "frames": torch.from_numpy(np.ascontiguousarray(
        sample["frames"])), "captions": list(sample["meta"]["captions"])}


class TrainStream:
    """Batches of this rank's shards, in a deterministic order per ``(seed, epoch)``.

    Args:
        shards: shard paths (from ``pipeline.sharding.samples.resolve_shards``).
        batch_size: videos per batch on this rank.
        seed: shuffling seed.
        rank: this process's rank; ``world_size`` the number of processes.
        workers: DataLoader worker processes (0 reads in the main process).
        shuffle: reader shuffle-buffer size (0 keeps shard order).
    """

    def __init__(self, shards: list[str], *, batch_size: int, seed: int, rank: int,
                 world_size: int, workers: int, shuffle: int):
        self.batch_size = batch_size
        self.workers = workers
        self.dataset = ShardDataset(shards, shuffle=shuffle, seed=seed, rank=rank,
                                    world_size=world_size)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[RawBatch]:
        """Yield the full batches of ``epoch``, leaving out the first ``skip`` (resume).

        Raises:
            ValueError: two samples of a batch differ in stored frame count or size.
        """
        self.dataset.set_epoch(epoch)
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.workers,
                            collate_fn=_as_sample, persistent_workers=False)
        pending: list[dict] = []
        index = 0
        for sample in loader:
            pending.append(sample)
            if len(pending) < self.batch_size:
                continue
            if index >= skip:
                yield _collate(pending)
            pending, index = [], index + 1


def _collate(samples: list[dict]) -> RawBatch:
    shapes = {tuple(s["frames"].shape) for s in samples}
    if len(shapes) != 1:
        detail = ", ".join(f"{s['key']}: {tuple(s['frames'].shape)}" for s in samples)
        raise ValueError(f"a batch mixes stored frame shapes ({detail}); shard all training "
                         "videos with the same --frames and --size")
    return RawBatch(keys=[s["key"] for s in samples],
                    frames=torch.stack([s["frames"] for s in samples]),
                    captions=[s["captions"] for s in samples])


def phase_seed(seed: int, epoch: int, batch: int, rank: int, stream: int = 0) -> int:
    """A 63-bit seed for one phase: independent across epochs, batches, ranks and streams."""
    state = np.random.SeedSequence([seed, epoch, batch, rank, stream]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def regular_positions(rng: np.random.Generator, stored: int, regular: int) -> np.ndarray:
    """R positions among the ``stored`` frames, one drawn uniformly inside each of R segments.

    Segment edges are ``linspace(0, stored, R + 1)`` (as at shard time); with ``R == stored``
    every stored frame is taken in order.

    Raises:
        ValueError: ``regular > stored``.
    """
    if regular > stored:
        raise ValueError(f"R = {regular} regular frames asked for, shards store {stored}")
    if regular == stored:
        return np.arange(stored)
    edges = np.linspace(0, stored, regular + 1).astype(int)
    return rng.integers(edges[:-1], edges[1:])  # high is exclusive: a frame of each segment


@dataclass
class PhaseDraw:
    """The random choices of one phase, and the tensors they select.

    Attributes:
        text: ``input_ids`` and ``attention_mask`` ``(B, L)`` of one caption per video.
        frames_uniform: float ``(B, U, 3, H, W)`` uniform frames (baseline input; store init).
        frames_regular: float ``(B, R, 3, H, W)`` regular frames V^R, or ``None`` (baseline).
        augment: the batch's crops, or ``None``.
        torch_seed: seed of torch's generator for the passes of this phase (dropout).
        regular_augmented: ``frames_regular`` already carries the crops (:func:`draw_and_crop`).
        frames_anchor: float ``(B, R, 3, H, W)`` the fixed anchor frames of the ``mix``
            parametrisation (the R segment midpoints of the stored frames, uncropped), or
            ``None``.
    """

    text: dict[str, torch.Tensor]
    frames_uniform: torch.Tensor | None
    frames_regular: torch.Tensor | None
    augment: VideoAugment | None
    torch_seed: int
    regular_augmented: bool = False
    frames_anchor: torch.Tensor | None = None


def draw_phase(batch: RawBatch, model: RetrievalModel, *, seed: int, num_frames: int,
               regular_frames: int | None, augment: str, crop_scale: float,
               device: torch.device, need_uniform: bool = True,
               anchor_frames: int | None = None) -> PhaseDraw:
    """Draw one caption per video, the regular frames and the crops of a phase.

    Args:
        batch: the stored videos.
        model: gives the tokenizer and the input contract.
        seed: from :func:`phase_seed`.
        num_frames: U. ``regular_frames``: R for MOF, ``None`` for the baseline.
        augment, crop_scale: see :class:`~mof.train.config.TrainConfig`.
        device: where the tensors go.
        need_uniform: build ``frames_uniform`` (not needed once the store holds the frames).
        anchor_frames: R to build ``frames_anchor`` (``mix``), else ``None``. No random draw:
            the draws of a phase are the same with and without it.
    """
    rng = np.random.default_rng(seed)
    captions = [c[int(rng.integers(len(c)))] for c in batch.captions]
    text = {k: v.to(device) for k, v in model.tokenize(captions).items()}
    contract: InputContract = model.contract
    stored = batch.frames.shape[1]
    uniform = None
    if need_uniform:
        uniform = to_model_input(batch.frames, contract, uniform_subset(stored, num_frames),
                                 device=device)
    regular = None
    if regular_frames is not None:
        picks = np.stack([regular_positions(rng, stored, regular_frames)
                          for _ in batch.keys])
        frames = torch.stack([batch.frames[i, picks[i]] for i in range(len(batch.keys))])
        regular = to_model_input(frames, contract, device=device)
    aug = draw_augment(rng, len(batch.keys), augment, crop_scale)
    anchors = None
    if anchor_frames is not None:
        anchors = to_model_input(batch.frames, contract, anchor_positions(stored, anchor_frames),
                                 device=device)
    return PhaseDraw(text=text, frames_uniform=uniform, frames_regular=regular, augment=aug,
                     torch_seed=int(rng.integers(2**62)), frames_anchor=anchors)


def anchor_positions(stored: int, regular: int) -> list[int]:
    """The ``mix`` anchors: R positions at the segment midpoints of the ``stored`` frames.

    Fixed per video (unlike the regular frames V^R, drawn anew each phase), so a mixing logit
    names the same frame in every phase.
    """
    return uniform_subset(stored, regular)


def draw_and_crop(batch: RawBatch, model: RetrievalModel, **kwargs) -> PhaseDraw:
    """:func:`draw_phase` (same arguments) with the crops already applied to the regular frames.

    Everything of a phase that does not depend on the model's weights, so the trainer can run it
    for the next batch on a background thread while the current phase computes.
    """
    draw = draw_phase(batch, model, **kwargs)
    if draw.frames_regular is None or draw.augment is None:
        return draw
    return replace(draw, frames_regular=apply_augment(draw.frames_regular, draw.augment),
                   regular_augmented=True)

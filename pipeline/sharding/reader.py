"""Stream shard samples for training and evaluation.

:class:`ShardDataset` is a torch ``IterableDataset`` over the tar shards written by
``mof-cli shard``. Each pass builds a WebDataset pipeline (``wds.DataPipeline``): the epoch's
shard list, a split by rank, WebDataset's split by DataLoader worker, tar streaming and grouping
by key (:func:`~pipeline.sharding.samples.read_shard_samples`), WebDataset's shuffle buffer and
decoding into :class:`~pipeline.datasets.records.ShardSample` dicts. Work is split at shard
granularity:

- The shard list is put in a ``(seed, epoch)`` order (kept as given when ``shuffle == 0``),
  the same on every rank; rank ``r`` of ``W`` takes shards ``r, r + W, ...`` and worker ``w``
  of ``K`` takes every ``K``-th of those. The parts are disjoint and together cover every
  shard once.
- Fewer shards than ranks is an error (a rank with no data would hang a DDP job). Fewer shards
  than ``ranks x workers`` leaves some workers idle: every sample is still read exactly once,
  just with less parallelism, and a warning says so.
- With ``shuffle = n > 0`` samples also pass a buffer of ``n`` samples seeded by
  ``(seed, epoch, rank, worker)``, so an epoch's order is reproducible for a given
  ``(seed, epoch, world_size, num_workers)``. Call :meth:`ShardDataset.set_epoch` before each
  epoch (with ``persistent_workers=False``, the default, the workers see the new epoch).

The rank split is ours, not ``wds.split_by_node``: that one reads the rank from the
environment or torch.distributed only, and a dataset here may be given its rank explicitly
(one process replaying every rank of a DDP run). The pipeline is built per pass, not once:
the epoch and the worker id it is seeded with are known only then (WebDataset's
``detshuffle`` counts epochs inside the worker, where a non-persistent worker forgets them).

Loading is where errors raise: a truncated tar, a sample missing a member, or an array of the
wrong type raises :class:`ShardReadError` naming the shard and the key.
"""

from __future__ import annotations

import functools
import os
import random
import warnings
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import webdataset as wds

from pipeline.datasets.records import ShardSample
from pipeline.sharding.samples import decode_samples, read_shard_samples, resolve_shards

__all__ = ["ShardDataset", "shards_for_worker", "split_by_rank"]


def split_by_rank(src: Iterable[Any], rank: int, world_size: int) -> Iterator[Any]:
    """WebDataset stage: every ``world_size``-th item of ``src`` from ``rank`` on."""
    return islice(src, rank, None, world_size)


def shards_for_worker(
    shards: list[str], rank: int, world_size: int, worker: int, num_workers: int
) -> list[str]:
    """The shards read by DataLoader ``worker`` of ``num_workers`` on ``rank`` of ``world_size``."""
    return shards[rank::world_size][worker::num_workers]


def _distributed() -> tuple[int, int]:
    """``(rank, world_size)`` from torch.distributed, else ``$RANK``/``$WORLD_SIZE``, else 0/1."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class ShardDataset(torch.utils.data.IterableDataset):
    """Stream :class:`~pipeline.datasets.records.ShardSample` dicts from tar shards.

    Each sample is ``{"key": str, "frames": uint8 (R, S, S, 3), "meta": dict}``.

    Args:
        shards: anything :func:`resolve_shards` accepts.
        shuffle: shuffle-buffer size in samples; 0 keeps file order (and sorted shards).
        seed: base seed of the shard order and the buffer.
        rank: this process's rank; default from torch.distributed or ``$RANK``.
        world_size: number of ranks; default from torch.distributed or ``$WORLD_SIZE``.
        decode: decode ``frames.npy`` into arrays (``False`` yields its raw bytes).
    """

    def __init__(
        self,
        shards: str | Path | Iterable[str | Path],
        *,
        shuffle: int = 0,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        decode: bool = True,
    ) -> None:
        super().__init__()
        if shuffle < 0:
            raise ValueError(f"shuffle is a buffer size and must be >= 0, got {shuffle}")
        self.shards = resolve_shards(shards)
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.decode = decode
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shard and sample order the next iteration follows."""
        self.epoch = epoch

    def _rank_world(self) -> tuple[int, int]:
        rank, world = _distributed()
        rank = rank if self.rank is None else self.rank
        world = world if self.world_size is None else self.world_size
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside world_size {world}")
        return rank, world

    def _shard_seed(self) -> str | None:
        return f"{self.seed}/{self.epoch}/shards" if self.shuffle else None

    def epoch_shards(self) -> list[str]:
        """All shards in this epoch's order (identical on every rank)."""
        if not self.shards:  # SimpleShardList needs at least one
            return []
        return [s["url"] for s in wds.SimpleShardList(self.shards, seed=self._shard_seed())]

    def pipeline(self, rank: int, world_size: int, worker: int) -> wds.DataPipeline:
        """This epoch's WebDataset pipeline for DataLoader ``worker`` on ``rank``."""
        shuffle = None
        if self.shuffle:
            rng = random.Random(f"{self.seed}/{self.epoch}/{rank}/{worker}")
            shuffle = wds.shuffle(self.shuffle, initial=self.shuffle, rng=rng)
        return wds.DataPipeline(
            wds.SimpleShardList(self.shards, seed=self._shard_seed()),
            functools.partial(split_by_rank, rank=rank, world_size=world_size),
            wds.split_by_worker,
            read_shard_samples,
            shuffle,  # None: DataPipeline leaves the stage out
            functools.partial(decode_samples, decode=self.decode),
        )

    def __iter__(self) -> Iterator[ShardSample]:
        rank, world = self._rank_world()
        # The worker id as wds.split_by_worker sees it ($WORKER, else the DataLoader's).
        _, _, worker, num_workers = wds.utils.pytorch_worker_info()
        if len(self.shards) < world:
            raise ValueError(
                f"{len(self.shards)} shards cannot feed {world} ranks (a rank without data hangs "
                "a DDP job); write more, smaller shards (mof-cli shard --shard-size)"
            )
        if not shards_for_worker(self.shards, rank, world, worker, num_workers):
            warnings.warn(
                f"rank {rank} worker {worker}: no shard to read ({len(self.shards)} shards for "
                f"{world} ranks x {num_workers} workers); this worker stays idle",
                stacklevel=2,
            )
            return
        yield from self.pipeline(rank, world, worker)

"""Process-group set-up and the collectives the trainer needs (torchrun, NCCL or gloo).

A plain ``mof-cli train`` is a world of one and every helper here degrades to a no-op.
Under ``torchrun`` the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) selects the rank;
the backend is NCCL on CUDA and gloo on CPU.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "all_gather_objects",
    "all_gather_with_grad",
    "all_reduce_min",
    "barrier",
    "broadcast_object",
    "cleanup_distributed",
    "init_distributed",
    "resolve_device",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, ``device`` it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` → CUDA (this process's local GPU) when available, else CPU.

    Raises:
        RuntimeError: ``cuda`` was asked for on a machine without CUDA.
    """
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda given but CUDA is not available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group when launched by torchrun, else a world of one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        # A rank that dies leaves the others blocked in a collective; a finite timeout turns
        # that into an error instead of a hang.
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_min(value: int) -> int:
    """The smallest ``value`` over all ranks (e.g. whether every rank still has a batch)."""
    if not _active():
        return value
    device = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (picklable objects; small ones only)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class _AllGather(torch.autograd.Function):
    """Concatenate equal-shaped tensors of all ranks; the gradient flows to the local part.

    Each rank computes its own loss on the gathered tensor, so the gradient that belongs to
    this rank's slice is the sum of every rank's gradient for that slice: the backward pass
    all-reduces the incoming gradient and keeps the local rows (a reduce-scatter, spelt with
    all_reduce because gloo has no reduce_scatter).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``(B, D)`` local → ``(world_size * B, D)`` in rank order, differentiable.

    Every rank must pass the same ``B``; in a world of one this returns ``x``.
    """
    if not _active():
        return x
    return _AllGather.apply(x)

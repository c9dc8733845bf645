"""Symmetric InfoNCE (the paper's Eqs. 1-3) over a batch of paired texts and videos.

The model computes the logits (temperature or learnable scale included, see
:meth:`mof.models.contract.RetrievalModel.logits`); this module only turns them into a scalar.

Two reductions cover the two peer recipes:

* ``"sum"`` (Frozen, and the paper's Eq. 3): ``L = L_t2v + L_v2t``, where each term is the mean
  over the batch of ``-log_softmax`` at the positive; Frozen's logits are cosine / 0.05.
* ``"mean"`` (CLIP4Clip): ``L = (L_t2v + L_v2t) / 2`` on logits ``exp(logit_scale) * cos``.

Global batch under DDP. Each rank holds ``B`` local pairs. Rank ``r`` may score its local texts
against the videos all-gathered from every rank, ``logits_t2v`` ``(B, B_global)``, and its local
videos against all texts, ``logits_v2t`` ``(B, B_global)``; the positive of local row ``i`` is
then column ``offset + i`` with ``offset = r * B`` (ranks gather in rank order, equal ``B``). The
loss is the local mean; DDP's gradient averaging over ranks makes the update the global mean.
The other peer layout, every rank scoring the full ``(B_global, B_global)`` matrix of gathered
texts and videos (CLIP4Clip), is simply the square case with ``offset = 0``.

Everything is built from ``log_softmax`` and indexing, so the loss is twice differentiable (the
meta-gradient differentiates through a step taken with it). Half-precision logits are upcast to
float32 first: under bf16 autocast a log-softmax over the batch loses the small differences it is
about.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["ContrastiveLoss", "Reduction", "contrastive_loss", "infonce_terms"]

Reduction = Literal["sum", "mean"]


def _positive_log_prob(logits: torch.Tensor, offset: int, name: str) -> torch.Tensor:
    """Mean over rows of ``log_softmax(logits, dim=1)[i, offset + i]``; ``logits`` ``(B, N)``."""
    if logits.dim() != 2:
        raise ValueError(f"{name} must be 2-D (B, N), got shape {tuple(logits.shape)}")
    rows, cols = logits.shape
    if rows == 0:
        raise ValueError(f"{name} has no rows")
    if offset < 0 or offset + rows > cols:
        raise ValueError(
            f"{name} of shape {tuple(logits.shape)} cannot hold positives at columns "
            f"offset..offset+B-1 with offset={offset}"
        )
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    log_prob = torch.log_softmax(logits, dim=1)
    index = torch.arange(rows, device=logits.device)
    return log_prob[index, index + offset].mean()


def infonce_terms(
    logits: torch.Tensor, logits_v2t: torch.Tensor | None = None, offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two InfoNCE directions, each the mean negative log-likelihood of the positives.

    Args:
        logits: ``(B, N)`` text-to-video logits, rows texts and columns videos; the positive of
            row ``i`` is column ``offset + i``. Square ``(B, B)`` with ``offset = 0`` is the
            ordinary single-process batch.
        logits_v2t: ``(B, N)`` video-to-text logits (rows local videos, columns all texts) for a
            global batch; ``None`` takes the transpose of a square ``logits``.
        offset: column of the first positive, ``rank * B`` for a global batch.

    Returns:
        ``(loss_t2v, loss_v2t)``, scalars (Eqs. 2 and 1), float32 for half-precision logits.

    Raises:
        ValueError: a shape cannot hold the positives, or ``logits`` is not square while
            ``logits_v2t`` is missing.
    """
    if logits_v2t is None:
        if logits.dim() != 2 or logits.shape[0] != logits.shape[1] or offset != 0:
            raise ValueError(
                f"logits of shape {tuple(logits.shape)} with offset={offset}: a global batch "
                "needs logits_v2t (local videos against all texts)"
            )
        logits_v2t = logits.t()
    elif logits_v2t.shape != logits.shape:
        raise ValueError(
            f"logits_v2t shape {tuple(logits_v2t.shape)} != logits shape {tuple(logits.shape)}"
        )
    loss_t2v = -_positive_log_prob(logits, offset, "logits")
    loss_v2t = -_positive_log_prob(logits_v2t, offset, "logits_v2t")
    return loss_t2v, loss_v2t


def contrastive_loss(
    logits: torch.Tensor,
    reduction: Reduction = "sum",
    *,
    logits_v2t: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Symmetric InfoNCE of a batch whose positives sit on the (offset) diagonal.

    Args:
        logits: ``(B, B)`` logits of paired texts (rows) and videos (columns), or ``(B, N)``
            against a gathered global batch (see the module docstring).
        reduction: ``"sum"`` of the two directions (Frozen, Eq. 3) or their ``"mean"``
            (CLIP4Clip).
        logits_v2t: ``(B, N)`` local videos against all texts, for a global batch only.
        offset: column of local row 0's positive in a global batch (``rank * B``).

    Returns:
        A scalar (float32 for half-precision logits, float64 for float64).

    Raises:
        ValueError: unknown ``reduction`` or shapes that cannot hold the positives.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    loss_t2v, loss_v2t = infonce_terms(logits, logits_v2t, offset)
    total = loss_t2v + loss_v2t
    return total if reduction == "sum" else total / 2


class ContrastiveLoss(nn.Module):
    """Module form of :func:`contrastive_loss` with a fixed ``reduction``.

    Args:
        reduction: ``"sum"`` (Frozen) or ``"mean"`` (CLIP4Clip); models publish theirs as
            ``RetrievalModel.loss_reduction``.
    """

    def __init__(self, reduction: Reduction = "sum"):
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        self.reduction: Reduction = reduction

    def forward(
        self,
        logits: torch.Tensor,
        logits_v2t: torch.Tensor | None = None,
        offset: int = 0,
    ) -> torch.Tensor:
        """See :func:`contrastive_loss`."""
        return contrastive_loss(logits, self.reduction, logits_v2t=logits_v2t, offset=offset)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"

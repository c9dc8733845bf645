"""The ``mix`` parametrisation of a learnable frame: a softmax mix of fixed frames plus a residual.

Each of a video's U learnable frames is

    f_u = Σ_r softmax(z_u)_r a_r + ρ_u                                   (a_r: anchor frames)

with z_u ``(R,)`` mixing logits over the video's R *anchor* frames a (fixed: the R segment
midpoints of the stored frames, so a logit means the same frame in every phase) and ρ_u a pixel
residual. Adam on z can move a frame from one moment of the video to another in a few steps,
which Adam on pixels (about β per step per element) cannot. The meta-gradient with respect to
f is pulled back to (z, ρ) by :func:`mix_vjp`. Pure functions of tensors, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["initial_mix_logits", "mix_frames", "mix_residual", "mix_vjp", "mix_weights"]


def mix_weights(logits: Tensor) -> Tensor:
    """softmax over the anchors: ``(..., U, R)`` → ``(..., U, R)``, rows summing to 1."""
    return torch.softmax(logits, dim=-1)


def mix_frames(logits: Tensor, residual: Tensor | None, anchors: Tensor) -> Tensor:
    """The learnable frames f = softmax(z) · a + ρ.

    Args:
        logits: z ``(B, U, R)``.
        residual: ρ ``(B, U, 3, H, W)``, or ``None`` for zero.
        anchors: a ``(B, R, 3, H, W)`` in the model's normalised input space.

    Returns:
        ``(B, U, 3, H, W)`` in the dtype of ``anchors``.
    """
    mixed = torch.einsum("bur,brchw->buchw", mix_weights(logits).to(anchors.dtype), anchors)
    return mixed if residual is None else mixed + residual


def mix_residual(frames: Tensor, logits: Tensor, anchors: Tensor) -> Tensor:
    """ρ = f − softmax(z) · a: the residual of stored frames ``(B, U, 3, H, W)``."""
    return frames - mix_frames(logits, None, anchors)


def mix_vjp(logits: Tensor, anchors: Tensor, grad_frames: Tensor) -> tuple[Tensor, Tensor]:
    """Pull a gradient with respect to f back to the logits and the residual.

    With w = softmax(z_u) and s_r = ⟨g_u, a_r⟩ (a sum over channels and pixels),
    ∂/∂z_u = w ⊙ (s − ⟨w, s⟩) and ∂/∂ρ_u = g_u.

    Args:
        logits: z ``(B, U, R)``.
        anchors: a ``(B, R, 3, H, W)``.
        grad_frames: g = ∇_f of some scalar ``(B, U, 3, H, W)``.

    Returns:
        ``(grad_logits (B, U, R), grad_residual (B, U, 3, H, W))``; the logits' gradient in
        the dtype of ``logits``.
    """
    weights = mix_weights(logits)
    scores = torch.einsum("buchw,brchw->bur", grad_frames, anchors).to(weights.dtype)
    grad_logits = weights * (scores - (weights * scores).sum(-1, keepdim=True))
    return grad_logits, grad_frames


def initial_mix_logits(frame_positions: Sequence[int], anchor_positions: Sequence[int],
                       peak: float) -> np.ndarray:
    """Logits ``(U, R)`` peaked at the anchor nearest each learnable frame's position.

    Args:
        frame_positions: U positions among the stored frames where the learnable frames start
            (the uniform ones).
        anchor_positions: the R anchors' positions among the stored frames.
        peak: the logit of the nearest anchor (ties: the earlier one); the others are 0, so
            the nearest anchor weighs e^peak / (e^peak + R − 1).

    Returns:
        float32 ``(U, R)``.
    """
    frames = np.asarray(frame_positions, dtype=np.float64)[:, None]
    anchors = np.asarray(anchor_positions, dtype=np.float64)[None, :]
    nearest = np.abs(frames - anchors).argmin(axis=1)  # argmin keeps the first of a tie
    logits = np.zeros((len(frame_positions), len(anchor_positions)), dtype=np.float32)
    logits[np.arange(len(frame_positions)), nearest] = peak
    return logits

"""Stored uint8 frames → the float frames a model reads (its input contract's size and mean/std).

Shards store ``R`` RGB frames per video as uint8 ``(R, S, S, 3)``. A model wants float
``(U, 3, H, W)`` normalised with ``contract.mean/std`` at ``H = W = contract.frame_size``. The
evaluator, the trainer and the MOF store initialisation all go through :func:`to_model_input`,
so every consumer sees identical pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mof.models.contract import InputContract

__all__ = ["to_model_input"]


def _resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, 3, h, w)`` float → ``(N, 3, size, size)``: short side to ``size``, centre crop."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    # Antialiasing matters when shrinking (e.g. 256-pixel shards to 224); bilinear on
    # [0, 255] floats then clamping keeps values inside the uint8 range.
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return x[..., top : top + size, left : left + size].clamp_(0.0, 255.0)


def to_model_input(
    frames_uint8: np.ndarray | torch.Tensor,
    contract: InputContract,
    positions: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Select, resize and normalise stored frames.

    Args:
        frames_uint8: uint8 RGB frames ``(R, S, S, 3)``, or with leading batch dimensions
            ``(..., R, S, S, 3)``; non-square frames are resized on the short side and
            centre-cropped.
        contract: the model's input contract (``frame_size``, ``mean``, ``std``).
        positions: frame positions (indices into the ``R`` stored frames, not source-video
            frame indices) to keep, in order; ``None`` keeps all ``R``.
        device: where to do the work; the uint8 frames are moved there first (4x fewer bytes
            to copy than float). ``None`` keeps the input's device.

    Returns:
        float32 ``(..., U, 3, H, W)`` with ``H = W = contract.frame_size``, normalised as
        ``(pixel / 255 - mean) / std``.

    Raises:
        ValueError: wrong dtype or shape, or a position outside ``[0, R)``.
    """
    frames = torch.as_tensor(frames_uint8)
    if frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if frames.dim() < 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (..., R, H, W, 3) RGB, got shape {tuple(frames.shape)}")
    if device is not None:
        frames = frames.to(device, non_blocking=True)
    num_stored = frames.shape[-4]
    if positions is not None:
        index = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
        bad = index[(index < 0) | (index >= num_stored)]
        if len(bad):
            raise ValueError(f"positions {bad.tolist()} outside [0, {num_stored}) stored frames")
        frames = frames.index_select(frames.dim() - 4, index.to(frames.device))
    lead = frames.shape[:-3]
    x = frames.reshape(-1, *frames.shape[-3:]).permute(0, 3, 1, 2).float()
    x = _resize_square(x, contract.frame_size)
    mean = torch.tensor(contract.mean, device=x.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(contract.std, device=x.device).view(1, 3, 1, 1) * 255.0
    x = (x - mean) / std
    return x.reshape(*lead, 3, contract.frame_size, contract.frame_size).contiguous()

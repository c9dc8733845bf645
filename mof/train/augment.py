"""Train-time augmentation: one random resized crop (and flip) per video, the same on all frames.

The parameters are drawn once per video per phase (:func:`draw_augment`) and applied with
:func:`apply_augment`, a differentiable function of the frames. One phase applies the same
draw to the learnable frames (model-level step and the inner step of the frame-level step) and
to the regular frames (the outer loss), so the meta-gradient compares like with like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["VideoAugment", "apply_augment", "draw_augment"]


@dataclass(frozen=True)
class VideoAugment:
    """Per-video crop boxes and flips of a batch.

    Attributes:
        boxes: ``(B, 4)`` float ``(top, left, height, width)`` as fractions of the frame side.
        flips: ``(B,)`` bool, mirror horizontally after the crop.
    """

    boxes: np.ndarray
    flips: np.ndarray


def _crop_box(rng: np.random.Generator, min_scale: float) -> tuple[float, float, float, float]:
    # torchvision's RandomResizedCrop rule (area fraction and log-uniform aspect ratio
    # 3/4..4/3, ten tries, then the full frame), in units of the frame side.
    for _ in range(10):
        area = rng.uniform(min_scale, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = math.sqrt(area * ratio), math.sqrt(area / ratio)
        if w <= 1.0 and h <= 1.0:
            return rng.uniform(0.0, 1.0 - h), rng.uniform(0.0, 1.0 - w), h, w
    return 0.0, 0.0, 1.0, 1.0


def draw_augment(
    rng: np.random.Generator, batch: int, mode: str, min_scale: float
) -> VideoAugment | None:
    """Draw the augmentation of ``batch`` videos.

    Args:
        rng: the phase's generator (the draw is reproducible from the phase seed).
        batch: number of videos B.
        mode: ``none`` (returns ``None``), ``crop`` or ``crop-flip``.
        min_scale: smallest crop area fraction.
    """
    if mode == "none":
        return None
    boxes = np.array([_crop_box(rng, min_scale) for _ in range(batch)], dtype=np.float64)
    flips = rng.random(batch) < 0.5 if mode == "crop-flip" else np.zeros(batch, dtype=bool)
    return VideoAugment(boxes=boxes.reshape(batch, 4), flips=flips)


def apply_augment(video: torch.Tensor, aug: VideoAugment | None) -> torch.Tensor:
    """Crop each video's box from every frame and resize back to the frame size.

    Args:
        video: ``(B, T, 3, H, W)`` float frames (normalised model input).
        aug: from :func:`draw_augment`; ``None`` returns ``video`` unchanged.

    Returns:
        ``(B, T, 3, H, W)``; a linear (hence twice differentiable) function of ``video``.
    """
    if aug is None:
        return video
    b, h, w = video.shape[0], video.shape[-2], video.shape[-1]
    if len(aug.boxes) != b:
        raise ValueError(f"augmentation drawn for {len(aug.boxes)} videos, batch has {b}")
    out = []
    for i in range(b):
        top, left, bh, bw = aug.boxes[i]
        y0, x0 = round(top * h), round(left * w)
        y1, x1 = max(y0 + 1, round((top + bh) * h)), max(x0 + 1, round((left + bw) * w))
        crop = video[i, :, :, y0:min(y1, h), x0:min(x1, w)]
        if crop.shape[-2:] != (h, w):
            crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
        if aug.flips[i]:
            crop = crop.flip(-1)
        out.append(crop)
    return torch.stack(out)

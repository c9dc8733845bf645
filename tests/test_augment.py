"""The crop-and-resize of train-time augmentation as separable matrices (mof.train.augment)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mof.train.augment import VideoAugment, apply_augment, draw_augment


def _reference(video: torch.Tensor, aug: VideoAugment) -> torch.Tensor:
    """Slice each video's pixel box, ``F.interpolate`` it back to the frame size, flip."""
    h, w = video.shape[-2:]
    out = []
    for (top, left, bh, bw), flip in zip(aug.boxes, aug.flips, strict=True):
        y0, x0 = round(top * h), round(left * w)
        y1, x1 = max(y0 + 1, round((top + bh) * h)), max(x0 + 1, round((left + bw) * w))
        crop = video[len(out), :, :, y0:min(y1, h), x0:min(x1, w)]
        if crop.shape[-2:] != (h, w):
            crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
        out.append(crop.flip(-1) if flip else crop)
    return torch.stack(out)


def _boxes(rng: np.random.Generator, h: int, w: int) -> VideoAugment:
    """Random boxes plus the edge cases: 1-pixel boxes, full frames, boxes at the far edge."""
    drawn = draw_augment(rng, 6, "crop-flip", 0.08)
    special = [(0.0, 0.0, 1.0, 1.0), (0.0, 0.0, 1.0, 1.0), (0.5, 0.25, 1 / h, 1 / w),
               (1 - 1 / h, 1 - 1 / w, 1 / h, 1 / w), (0.3, 0.0, 0.7, 1.0),
               (0.0, 0.6, 2.5 / h, 0.4)]
    boxes = np.concatenate([drawn.boxes, np.array(special)])
    flips = np.concatenate([drawn.flips, [False, True, True, False, True, False]])
    return VideoAugment(boxes=boxes, flips=flips)


@pytest.mark.parametrize("size", [(64, 64), (24, 40)])
def test_matches_slicing_and_interpolate(size):
    rng = np.random.default_rng(0)
    h, w = size
    aug = _boxes(rng, h, w)
    video = torch.randn(len(aug.boxes), 3, 3, h, w, generator=torch.Generator().manual_seed(1))
    expected = _reference(video, aug)
    got = apply_augment(video, aug)
    assert got.shape == video.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # The full-frame boxes are the identity (flipped or not), exactly.
    assert torch.equal(got[6], video[6]) and torch.equal(got[7], video[7].flip(-1))


def test_gradients_match_and_double_backward_works():
    rng = np.random.default_rng(2)
    aug = _boxes(rng, 32, 32)
    video = torch.randn(len(aug.boxes), 2, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    weight = torch.randn_like(video)
    (grad,) = torch.autograd.grad((apply_augment(video, aug) * weight).sum(), video)
    (expected,) = torch.autograd.grad((_reference(video, aug) * weight).sum(), video)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-10)
    # A function of the pull-back (as in a meta-gradient through the crop) differentiates again.
    (g,) = torch.autograd.grad((apply_augment(video, aug) ** 2).sum(), video, create_graph=True)
    (gg,) = torch.autograd.grad((g * weight).sum(), video)
    (expected_gg,) = torch.autograd.grad(
        (torch.autograd.grad((_reference(video, aug) ** 2).sum(), video, create_graph=True)[0]
         * weight).sum(), video)
    torch.testing.assert_close(gg, expected_gg, rtol=0, atol=1e-10)


def test_no_augmentation_and_batch_mismatch():
    video = torch.randn(2, 1, 3, 8, 8)
    assert apply_augment(video, None) is video
    aug = draw_augment(np.random.default_rng(0), 3, "crop", 0.5)
    with pytest.raises(ValueError, match="3 videos, batch has 2"):
        apply_augment(video, aug)

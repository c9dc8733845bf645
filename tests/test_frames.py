"""Stored uint8 frames to model input: selection, resize, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mof.frames import to_model_input
from mof.models.contract import InputContract

CONTRACT = InputContract(
    frame_size=16, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
    max_frames=4, max_words=8, tokenizer="wordlevel",
)


def test_same_size_is_exact_normalisation_of_selected_frames():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(6, 16, 16, 3), dtype=np.uint8)
    out = to_model_input(frames, CONTRACT, positions=[5, 0, 2])
    assert out.shape == (3, 3, 16, 16) and out.dtype == torch.float32
    mean, std = np.array(CONTRACT.mean), np.array(CONTRACT.std)
    expected = ((frames[[5, 0, 2]] / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


def test_resize_keeps_flat_colours_and_centre_crops():
    frames = np.zeros((2, 32, 48, 3), dtype=np.uint8)
    frames[:, :, 5:43] = 200  # the centre crop (source columns 8..40) sees only this band
    out = to_model_input(frames, CONTRACT)
    assert out.shape == (2, 3, 16, 16)
    pixel = (out * torch.tensor(CONTRACT.std).view(3, 1, 1) + torch.tensor(CONTRACT.mean).view(
        3, 1, 1)) * 255
    assert torch.allclose(pixel, torch.full_like(pixel, 200.0), atol=0.5)


def test_leading_batch_dimensions_and_errors():
    frames = torch.randint(0, 256, (2, 5, 16, 16, 3), dtype=torch.uint8)
    out = to_model_input(frames, CONTRACT, positions=torch.tensor([1, 3]))
    assert out.shape == (2, 2, 3, 16, 16)
    assert torch.equal(out[1, 0], to_model_input(frames[1], CONTRACT, positions=[1])[0])
    with pytest.raises(ValueError, match=r"positions \[5\]"):
        to_model_input(frames, CONTRACT, positions=[0, 5])
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(frames.float(), CONTRACT)
    with pytest.raises(ValueError, match="RGB"):
        to_model_input(frames[..., :2], CONTRACT)

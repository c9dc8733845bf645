"""Patch embedding as reshape + ``F.linear`` (``mof.models.space_time.patchify_linear``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mof.models import create_model
from mof.models.space_time import PatchConv2d, PatchEmbed, patchify_linear


@pytest.mark.parametrize(("patch", "height", "width"), [(16, 64, 64), (4, 8, 12), (1, 3, 5)])
def test_matches_conv2d_values_and_gradients(patch, height, width):
    gen = torch.Generator().manual_seed(patch)
    images = torch.randn(5, 3, height, width, generator=gen, dtype=torch.float64,
                         requires_grad=True)
    weight = torch.randn(7, 3, patch, patch, generator=gen, dtype=torch.float64,
                         requires_grad=True)
    bias = torch.randn(7, generator=gen, dtype=torch.float64, requires_grad=True)
    expected = F.conv2d(images, weight, bias, stride=patch).flatten(2).transpose(1, 2)
    got = patchify_linear(images, weight, bias)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    out = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad((got * out).sum(), (images, weight, bias))
    want = torch.autograd.grad((expected * out).sum(), (images, weight, bias))
    for g, w in zip(grads, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10)


def test_modules_keep_conv_parameters_and_outputs():
    torch.manual_seed(0)
    embed = PatchEmbed(16, 32)
    assert isinstance(embed.proj, torch.nn.Conv2d)
    assert {k: tuple(v.shape) for k, v in embed.state_dict().items()} == {
        "proj.weight": (32, 3, 16, 16), "proj.bias": (32,)}
    video = torch.randn(2, 3, 3, 64, 64)
    conv = F.conv2d(video.flatten(0, 1), embed.proj.weight, embed.proj.bias, stride=16)
    torch.testing.assert_close(embed(video), conv.flatten(2).transpose(1, 2).reshape(2, 48, 32),
                               rtol=0, atol=3e-6)
    torch.testing.assert_close(embed.proj(video[0]), conv[:3], rtol=0, atol=3e-6)
    odd = PatchConv2d(3, 4, kernel_size=3, stride=2)  # not a patchifier: the convolution
    torch.testing.assert_close(odd(video[0, :, :, :9, :9]),
                               F.conv2d(video[0, :, :, :9, :9], odd.weight, odd.bias, stride=2))


def test_clip4clip_patch_embedding_is_the_linear_form():
    model = create_model("clip4clip-tiny")
    conv = model.clip.vision_model.embeddings.patch_embedding
    assert type(conv) is PatchConv2d
    assert "clip.vision_model.embeddings.patch_embedding.weight" in model.state_dict()
    images = torch.randn(2, 3, model.contract.frame_size, model.contract.frame_size)
    torch.testing.assert_close(conv(images), F.conv2d(images, conv.weight, stride=conv.stride),
                               rtol=0, atol=3e-6)

"""Pieces shared by the frame-pooling families (CLIP4Clip-meanP and the ResNets).

Both encode every valid frame independently with an image encoder and average over time, so
the frame handling lives here once: input checks that name the offending size, encoding of
the valid frames only, a masked mean whose empty case is finite, an L2 normalisation that
stays differentiable twice at zero, and typed-config construction from registry overrides.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from mof.models.contract import InputContract
from mof.models.text import special_tokens_tokenizer
from mof.models.tokenizer import WordTokenizer

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "check_video", "frame_contract", "load_strictly",
    "make_config", "pool_frames",
    "safe_normalize", "tiny_tokenizer",
]

C = TypeVar("C")

#: ImageNet statistics: Frozen normalises with them (even though its IN-21k ViT used 0.5/0.5),
#: and so do the timm ResNets.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def safe_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """L2-normalise the last dimension; a zero vector stays zero.

    ``x · rsqrt(max(‖x‖², eps²))`` equals ``F.normalize`` wherever ``‖x‖ > eps``. Unlike it (and
    unlike ``x / ‖x‖.clamp_min(eps)``) its first *and second* derivatives are finite at
    ``x = 0``: the norm's own backward divides by the norm, which is 0/0 at zero and turns the
    double backward of the bilevel step into NaN for a video without a valid frame.
    """
    return x * (x * x).sum(-1, keepdim=True).clamp_min(eps * eps).rsqrt()


def check_video(
    video: torch.Tensor, video_mask: torch.Tensor | None, contract: InputContract
) -> None:
    """Raise a ``ValueError`` naming the problem when ``video`` breaks the model's contract.

    Args:
        video: ``(B, T, 3, H, W)`` with ``T ≤ contract.max_frames`` and ``H = W = frame_size``.
        video_mask: None or ``(B, T)``.
    """
    if video.dim() != 5 or video.shape[2] != 3:
        raise ValueError(f"video must be (B, T, 3, H, W), got shape {tuple(video.shape)}")
    batch, frames, _, height, width = video.shape
    problems = []
    if frames > contract.max_frames:
        problems.append(f"{frames} frames exceed the model's max_frames {contract.max_frames}")
    if (height, width) != (contract.frame_size, contract.frame_size):
        problems.append(f"frames are {height}x{width}, the model takes "
                        f"{contract.frame_size}x{contract.frame_size}")
    if video_mask is not None and tuple(video_mask.shape) != (batch, frames):
        problems.append(f"video_mask has shape {tuple(video_mask.shape)}, expected "
                        f"{(batch, frames)}")
    if problems:
        raise ValueError("; ".join(problems))


def pool_frames(
    encode: Callable[[torch.Tensor], torch.Tensor], video: torch.Tensor,
    video_mask: torch.Tensor | None, dim: int, normalize: bool,
) -> torch.Tensor:
    """Encode each valid frame on its own and take the masked mean over time.

    Masked frames never reach ``encode``: the result for the valid ones is what encoding every
    frame and weighting by the mask gives (CLIP4Clip's ``sum(f·m)/sum(m)``), without the cost,
    and garbage or non-finite padding cannot leak into values or gradients. A video without a
    valid frame pools to the zero vector (its mask sum counts as 1, as in CLIP4Clip).

    Args:
        encode: ``(N, 3, H, W)`` frames → ``(N, dim)`` features.
        video: ``(B, T, 3, H, W)``.
        video_mask: ``(B, T)`` bool (True = valid) or None (all valid).
        dim: feature width, for the all-masked batch that encodes nothing.
        normalize: L2-normalise each frame's feature before the mean (CLIP4Clip-meanP).

    Returns:
        ``(B, dim)`` mean features.
    """
    batch, frames = video.shape[:2]
    if video_mask is None:
        feats = encode(video.flatten(0, 1))
        feats = safe_normalize(feats) if normalize else feats
        return feats.unflatten(0, (batch, frames)).mean(1)
    mask = video_mask.to(device=video.device, dtype=torch.bool)
    keep = mask.flatten()
    if not bool(keep.any()):
        return video.new_zeros(batch, dim)
    feats = encode(video.flatten(0, 1)[keep])  # (N, dim), N valid frames
    feats = safe_normalize(feats) if normalize else feats
    owner = torch.arange(batch, device=video.device).repeat_interleave(frames)[keep]
    counts = mask.sum(1).clamp_min(1).to(feats.dtype)
    # (B, N) averaging matrix: a matmul is twice differentiable and keeps one graph node.
    weights = F.one_hot(owner, batch).to(feats.dtype).t() / counts[:, None]
    return weights @ feats


def make_config(cls: type[C], defaults: dict[str, Any], overrides: dict[str, Any],
                nested: tuple[str, ...] = ()) -> C:
    """Build the dataclass ``cls`` from a family's defaults and a user's overrides.

    Dict-valued fields named in ``nested`` merge key by key instead of being replaced.

    Raises:
        TypeError: an override names no field of ``cls`` (lists the valid ones).
    """
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown {cls.__name__} option(s) {unknown}; valid: {sorted(names)}")
    merged = {**defaults, **overrides}
    for key in nested:
        merged[key] = {**defaults.get(key, {}), **overrides.get(key, {})}
    return cls(**merged)


def load_strictly(module: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """``module.load_state_dict(state, strict=True)`` with one error listing every problem.

    Tensors are cast to the dtype and device of the parameter or buffer they replace (fp16
    files load into fp32 models); parameters keep their ``requires_grad``.

    Raises:
        ValueError: missing or unexpected keys, or shape mismatches, naming ``source``.
    """
    ours = module.state_dict()
    problems = []
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    if missing:
        problems.append(f"missing {len(missing)} key(s), e.g. {missing[:5]}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s), e.g. {unexpected[:5]}")
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(ours[k].shape)}"
              for k in sorted(set(ours) & set(state)) if state[k].shape != ours[k].shape]
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es), e.g. {shapes[:3]}")
    if problems:
        raise ValueError(f"{source}: weights do not fit {type(module).__name__}: "
                         + "; ".join(problems))
    # assign=True adopts the (converted) tensors instead of copying them into freshly allocated
    # parameters: loading a ViT-B/32 that way costs no second copy of its 600 MB.
    adopted = {k: v.to(device=ours[k].device, dtype=ours[k].dtype) for k, v in state.items()}
    module.load_state_dict(_own_storage(adopted), strict=True, assign=True)


def _own_storage(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with each tensor that does not own its storage alone replaced by a copy.

    Adopted as parameters, a view into a larger storage (a q/k/v row block chunked out of a
    fp32 ``in_proj_weight``) or a storage held under two keys would leave parameters sharing
    memory: safetensors refuses to save them and an optimiser would update them together.
    Tensors that already own their storage (every cast from fp16) are kept as they are.
    """
    seen: set[int] = set()
    out = {}
    for key, value in state.items():
        storage = value.untyped_storage()
        whole = value.is_contiguous() and value.numel() * value.element_size() == storage.nbytes()
        if not whole or storage.data_ptr() in seen:
            value = value.clone()
        seen.add(value.untyped_storage().data_ptr())
        out[key] = value
    return out


def frame_contract(config: Any, mean: tuple[float, float, float],
                   std: tuple[float, float, float], tokenizer: str) -> InputContract:
    """The input contract of a family config with ``frame_size``/``max_frames``/``max_words``."""
    return InputContract(frame_size=config.frame_size, mean=mean, std=std,
                         max_frames=config.max_frames, max_words=config.max_words,
                         tokenizer=tokenizer)


def tiny_tokenizer(tokenizer: WordTokenizer | None, overrides: dict[str, Any]) -> WordTokenizer:
    """A tiny model's tokenizer: the given one, or one of special tokens only.

    Raises:
        ValueError: ``overrides`` sets a ``max_words`` other than the tokenizer's.
    """
    tokenizer = tokenizer if tokenizer is not None else special_tokens_tokenizer()
    if "max_words" in overrides and overrides["max_words"] != tokenizer.max_words:
        raise ValueError(f"max_words {overrides['max_words']} differs from the tokenizer's "
                         f"{tokenizer.max_words}; set it on the WordTokenizer")
    return tokenizer

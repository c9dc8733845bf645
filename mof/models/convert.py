"""Foreign weights → our Frozen modules: Frozen's released checkpoints and timm ViT weights.

Our module names are Frozen's, so a Frozen checkpoint maps key for key once ``module.``
prefixes (DataParallel) are stripped from every key and ``*.position_ids`` buffers are dropped;
only the temporal embeddings may need resizing to the configured frame count. A timm
``vit_base_patch16_224`` state_dict fills the space attention, MLPs, norms and embeddings of the
SpaceTimeTransformer; the time attention, ``norm3`` and ``temporal_embed`` keep their
initialisation (``time_init``), exactly as Frozen initialises from ImageNet.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mof.models.common import load_strictly
from mof.models.io import read_state_dict, safe_torch_load
from mof.models.space_time import SpaceTimeTransformer

__all__ = [
    "TemporalFix",
    "frozen_state_dict",
    "load_frozen_checkpoint",
    "load_timm_vit",
    "read_timm_vit",
    "resize_pos_embed",
    "resize_temporal_embed",
]

TemporalFix = Literal["zeros", "nearest", "bilinear"]

# Keys of a timm ViT that the SpaceTimeTransformer has no use for (classifier head).
_TIMM_DROPPED = re.compile(r"^(head|pre_logits)\.")
# Keys a timm state_dict never provides: left at their initialisation.
_TIME_ONLY = re.compile(
    r"^(temporal_embed|blocks\.\d+\.(timeattn\.(qkv|proj)|norm3)\.(weight|bias))$")


def frozen_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``module.`` from every key that has it and drop ``*.position_ids`` buffers.

    Frozen's own fix looks at the first key only; a checkpoint mixing prefixed and plain keys
    loads here too.
    """
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if not key.endswith("position_ids"):
            out[key] = value
    return out


def resize_temporal_embed(
    embed: torch.Tensor, frames: int, mode: TemporalFix = "zeros"
) -> torch.Tensor:
    """Resize ``(1, T, D)`` temporal embeddings to ``(1, frames, D)``.

    More rows than ``frames`` are truncated. Fewer are zero-padded (``zeros``, Frozen's
    default: the first T frames keep their embedding) or interpolated along time
    (``nearest`` or ``bilinear``, as Frozen's ``interp``/``bilinear`` options do).

    Raises:
        ValueError: unknown ``mode``.
    """
    if mode not in ("zeros", "nearest", "bilinear"):
        raise ValueError(f"temporal_fix must be 'zeros', 'nearest' or 'bilinear', got {mode!r}")
    current = embed.shape[1]
    if current >= frames:
        return embed[:, :frames].clone()
    if mode == "zeros":
        out = embed.new_zeros(embed.shape[0], frames, embed.shape[2])
        out[:, :current] = embed
        return out
    # An image of one channel, T × D, resized to frames × D (D unchanged).
    return F.interpolate(embed[None], size=(frames, embed.shape[2]), mode=mode)[0]


def resize_pos_embed(pos_embed: torch.Tensor, patches_per_frame: int) -> torch.Tensor:
    """Resample ``(1, 1 + N, D)`` spatial position embeddings to another patch grid.

    The CLS row is kept; the square patch grid is resized bicubically (timm's method).
    """
    from timm.layers import resample_abs_pos_embed

    side = round(patches_per_frame ** 0.5)
    return resample_abs_pos_embed(pos_embed, new_size=[side, side], num_prefix_tokens=1)


def _fit_video_embeddings(state: dict[str, torch.Tensor], prefix: str, video: SpaceTimeTransformer,
                          temporal_fix: TemporalFix) -> None:
    temporal = state.get(prefix + "temporal_embed")
    if temporal is not None and temporal.shape[1] != video.max_frames:
        state[prefix + "temporal_embed"] = resize_temporal_embed(
            temporal, video.max_frames, temporal_fix)
    pos = state.get(prefix + "pos_embed")
    if pos is not None and pos.shape[1] != video.pos_embed.shape[1]:
        state[prefix + "pos_embed"] = resize_pos_embed(pos, video.patches_per_frame)


def load_frozen_checkpoint(
    model: nn.Module, path: str | Path, temporal_fix: TemporalFix = "zeros"
) -> dict[str, Any]:
    """Load a Frozen in Time checkpoint (``.pth.tar``) into a ``FrozenInTime`` model, strictly.

    The file is read with :func:`~mof.models.io.safe_torch_load` (its pickled
    ``parse_config.ConfigParser`` becomes an inert stand-in; nothing in it runs). Only
    ``state_dict`` is used.

    Args:
        model: a ``FrozenInTime`` whose architecture matches the checkpoint.
        path: the checkpoint file.
        temporal_fix: see :func:`resize_temporal_embed`.

    Returns:
        The checkpoint's other fields (``arch``, ``epoch``, ``monitor_best``, ``config``, ...),
        the optimizer state excluded.

    Raises:
        ValueError: no ``state_dict``, or keys/shapes that do not match (names the file).
        mof.models.io.UnsafePickleError: the file tries to run code.
    """
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(f"{path}: not a Frozen checkpoint (no 'state_dict' dict)")  # noqa: TRY004
    state = frozen_state_dict(ckpt["state_dict"])
    _fit_video_embeddings(state, "video_model.", model.video_model, temporal_fix)
    load_strictly(model, state, path)
    return {k: v for k, v in ckpt.items() if k not in ("state_dict", "optimizer")}


def read_timm_vit(
    path: str | Path, video: SpaceTimeTransformer | None = None
) -> dict[str, torch.Tensor]:
    """A timm ViT state_dict from ``.safetensors``, ``.pth``/``.bin`` or ``.npz``.

    An ``.npz`` holds either a state_dict (``np.savez(**state_dict)``) or the original JAX /
    big_vision arrays (``embedding/kernel``, ``Transformer/encoderblock_0/...``), which timm's
    own converter maps onto
    a ViT of ``video``'s width, depth and heads.
    """
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            big_vision = any(k.endswith("embedding/kernel") for k in arrays.files)
        if big_vision:
            return _read_big_vision(path, video)
    return read_state_dict(path)


def _read_big_vision(path: Path, video: SpaceTimeTransformer | None) -> dict[str, torch.Tensor]:
    from timm.models.vision_transformer import VisionTransformer, _load_weights

    if video is None:
        raise ValueError(f"{path}: a big_vision .npz needs the target model's shape")
    block = video.blocks[0]
    vit = VisionTransformer(
        img_size=video.frame_size, patch_size=video.patch_embed.proj.kernel_size[0],
        embed_dim=video.cls_token.shape[-1], depth=len(video.blocks),
        num_heads=block.attn.num_heads,
        mlp_ratio=block.mlp.fc1.out_features / block.mlp.fc1.in_features,
        num_classes=0)
    _load_weights(vit, str(path))
    return vit.state_dict()


def load_timm_vit(video: SpaceTimeTransformer, path: str | Path) -> None:
    """Initialise the SpaceTimeTransformer from timm ViT weights (Frozen's ImageNet start).

    Space attention, MLPs, norms, patch/position embeddings and CLS come from the file; the
    classifier head is dropped; time attention, ``norm3`` and ``temporal_embed`` keep their
    initialisation. A different patch grid resamples ``pos_embed``.

    Raises:
        ValueError: the file has keys the model lacks, or lacks ones it needs (names them).
    """
    state = {k: v for k, v in read_timm_vit(path, video).items() if not _TIMM_DROPPED.match(k)}
    _fit_video_embeddings(state, "", video, "zeros")
    ours = video.state_dict()
    for key in ours:
        if _TIME_ONLY.match(key):
            state.setdefault(key, ours[key])  # keep the init: timm has no time attention
    load_strictly(video, state, path)

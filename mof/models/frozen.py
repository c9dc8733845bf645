"""Frozen in Time (Bain et al., ICCV 2021): SpaceTimeTransformer + DistilBERT dual encoder.

``FrozenInTime`` keeps Frozen's module names, so its state_dict keys are Frozen's
(``video_model.*``, ``text_model.*``, ``txt_proj.1.*``, ``vid_proj.0.*``) and loading a released
checkpoint is a key-for-key map (:mod:`mof.models.convert`). Logits are the cosine similarity
divided by a fixed temperature of 0.05; the loss sums its two InfoNCE directions.

Registered: ``frozen`` (ViT-B/16, 224 px, DistilBERT-base, 8 frames by default) and
``frozen-tiny`` (64 px, width 64, 2+2 layers, 32 frames, word-level tokenizer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from transformers import DistilBertConfig

from mof.models import convert
from mof.models.common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    frame_contract,
    make_config,
    tiny_tokenizer,
)
from mof.models.contract import AttentionMode
from mof.models.registry import register_model
from mof.models.space_time import DividedAttention, SpaceTimeTransformer
from mof.models.text import (
    TextTokenizer,
    build_distilbert,
    load_tokenizer,
    set_text_attention,
    set_text_checkpointing,
    text_arch,
    tiny_distilbert_config,
)
from mof.models.text_side import DistilBertTextSide
from mof.models.tokenizer import WordTokenizer

__all__ = [
    "TINY_DEFAULTS", "FrozenConfig", "FrozenInTime", "frozen", "frozen_tiny",
]

@dataclass
class FrozenConfig:
    """Architecture of a Frozen model; every field is JSON-serialisable.

    Attributes:
        frame_size: input frame side in pixels.
        patch_size: ViT patch side in pixels.
        embed_dim: video token width.
        depth: SpaceTimeTransformer blocks.
        num_heads: attention heads of both attentions.
        mlp_ratio: MLP hidden width over ``embed_dim``.
        max_frames: most frames per video (rows of ``temporal_embed``).
        time_init: ``zeros`` (Frozen) or ``rand``.
        projection_dim: joint embedding width.
        temperature: logits are cosine / temperature.
        max_words: tokens per query (DistilBERT's limit is 512, which Frozen uses).
        text: DistilBertConfig fields; empty means DistilBERT-base (or the tiny config for
            ``frozen-tiny``). Filled in from ``text_dir`` when weights are loaded from there.
    """

    frame_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    max_frames: int = 8
    time_init: Literal["zeros", "rand"] = "zeros"
    projection_dim: int = 256
    temperature: float = 0.05
    max_words: int = 512
    text: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        for name in ("frame_size", "patch_size", "embed_dim", "depth", "num_heads",
                     "max_frames", "projection_dim", "max_words"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not problems and self.frame_size % self.patch_size:
            problems.append(f"frame_size {self.frame_size} is not a multiple of patch_size "
                            f"{self.patch_size}")
        if not problems and self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} is not divisible by num_heads "
                            f"{self.num_heads}")
        if self.time_init not in ("zeros", "rand"):
            problems.append(f"time_init must be 'zeros' or 'rand', got {self.time_init!r}")
        if not self.temperature > 0:
            problems.append(f"temperature must be > 0, got {self.temperature!r}")
        if not self.mlp_ratio > 0:
            problems.append(f"mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        if problems:
            raise ValueError("invalid Frozen config: " + "; ".join(problems))


class FrozenInTime(DistilBertTextSide):
    """The Frozen dual encoder.

    Args:
        config: the architecture.
        text_model: the DistilBERT encoder (built by the registered constructors).
        tokenizer: WordTokenizer or transformers tokenizer; None makes :meth:`tokenize` raise.
        tokenizer_kind: ``wordlevel`` or ``distilbert``, published in the contract.
    """

    loss_reduction = "sum"
    has_patch_readout = True

    def __init__(self, config: FrozenConfig, text_model: nn.Module,
                 tokenizer: TextTokenizer | None, tokenizer_kind: str):
        super().__init__()
        self.config = config
        self.text_model = text_model
        self.video_model = SpaceTimeTransformer(
            config.frame_size, config.patch_size, config.embed_dim, config.depth,
            config.num_heads, config.mlp_ratio, config.max_frames, config.time_init)
        # 'minimal' projections; index 0 of txt_proj is the ReLU, hence Frozen's txt_proj.1.*
        self.txt_proj = nn.Sequential(nn.ReLU(), nn.Linear(text_model.config.dim,
                                                           config.projection_dim))
        self.vid_proj = nn.Sequential(nn.Linear(config.embed_dim, config.projection_dim))
        self.temperature = config.temperature
        self.tokenizer = tokenizer
        self.contract = frame_contract(config, IMAGENET_MEAN, IMAGENET_STD, tokenizer_kind)
        positions = text_model.config.max_position_embeddings
        if config.max_words > positions:
            raise ValueError(f"max_words {config.max_words} exceeds the text model's "
                             f"{positions} position embeddings")

    def encode_video(
        self, video: torch.Tensor, video_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, T, 3, H, W)`` normalised frames, optional ``(B, T)`` bool mask → ``(B, D)``."""
        return self.vid_proj(self.video_model(video, video_mask))

    def patch_embeddings(self, video: torch.Tensor) -> torch.Tensor:
        """``(B, F, 3, H, W)`` → ``(B, F, N, D)``: block-1 patch tokens → final norm → vid_proj.

        Each patch token after the first SpaceTimeTransformer block (where tokens are still
        local) goes through the final LayerNorm and the video projection, as the CLS token does
        at the end, so ``logits(text_emb, tokens)`` is cosine / temperature per patch.
        """
        captured: list[torch.Tensor] = []
        hook = self.video_model.blocks[0].register_forward_hook(
            lambda _module, _inputs, output: captured.append(output))
        try:
            self.video_model(video)
        finally:
            hook.remove()
        batch, frames, n = video.shape[0], video.shape[1], self.video_model.patches_per_frame
        patches = captured[0][:, 1:].reshape(batch, frames, n, -1)  # drop CLS; frame-major
        return self.vid_proj(self.video_model.norm(patches))

    def set_attention(self, mode: AttentionMode) -> None:
        """``math``: explicit softmax and eager DistilBERT; ``fused``: SDPA in both encoders."""
        set_text_attention(self.text_model, mode)  # validates mode
        for module in self.video_model.modules():
            if isinstance(module, DividedAttention):
                module.fused = mode == "fused"
        self.attention = mode

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute SpaceTimeTransformer blocks and DistilBERT layers in backward.

        Non-reentrant checkpointing: outputs, gradients and double backward are unchanged;
        activation memory drops to about one block's worth per encoder.
        """
        self.video_model.grad_checkpointing = enable
        set_text_checkpointing(self.text_model, enable)


@register_model
def frozen(
    *, text_dir: str | None = None, tokenizer_dir: str | None = None,
    vit_weights: str | None = None, checkpoint: str | None = None,
    temporal_fix: convert.TemporalFix = "zeros", **overrides: Any,
) -> FrozenInTime:
    """Frozen in Time: ViT-B/16 SpaceTimeTransformer, 224 px, DistilBERT-base, 8 frames.

    Without weight files every weight is random (nothing is downloaded). Weight sources load
    in order ViT → DistilBERT → Frozen checkpoint; they are not part of ``spec`` (which only
    describes the architecture), so a model saved with :func:`mof.models.io.save_model`
    reloads without them.

    Args:
        text_dir: local DistilBERT directory (``save_pretrained``: config, weights, tokenizer).
        tokenizer_dir: local tokenizer directory; defaults to ``text_dir``.
        vit_weights: timm ``vit_base_patch16_224`` weights (``.safetensors``/``.pth``/``.npz``).
        checkpoint: a Frozen checkpoint (``.pth.tar``), loaded with
            ``torch.load(weights_only=True)``.
        temporal_fix: how a checkpoint's temporal embeddings reach ``max_frames`` when it has
            fewer frames (more are truncated): ``zeros`` (Frozen's default), ``nearest`` or
            ``bilinear`` interpolation.
        **overrides: :class:`FrozenConfig` fields, e.g. ``max_frames=4``.
    """
    text_model = None
    if text_dir is not None:
        if "text" in overrides:
            raise ValueError("give either text= (a random text encoder's architecture) or "
                             "text_dir= (a saved one), not both")
        text_model = build_distilbert(text_dir=text_dir)
        overrides = {**overrides, "text": text_arch(text_model.config)}
    config = make_config(FrozenConfig, {}, overrides, nested=("text",))
    if text_model is None:
        text_model = build_distilbert(DistilBertConfig(**config.text))
    tok_dir = tokenizer_dir if tokenizer_dir is not None else text_dir
    tokenizer = load_tokenizer(tok_dir) if tok_dir is not None else None
    model = FrozenInTime(config, text_model, tokenizer, "distilbert")
    model.spec = {"name": "frozen", **overrides}
    model.sources = {k: str(v) for k, v in (("text_dir", text_dir), ("tokenizer_dir", tok_dir),
                     ("vit_weights", vit_weights), ("checkpoint", checkpoint)) if v is not None}
    if vit_weights is not None:
        convert.load_timm_vit(model.video_model, vit_weights)
    if checkpoint is not None:
        convert.load_frozen_checkpoint(model, checkpoint, temporal_fix=temporal_fix)
    return model


#: frozen-tiny: 64 px frames of 16 patches, width 64, 2 blocks, 32 frames.
TINY_DEFAULTS: dict[str, Any] = {
    "frame_size": 64, "patch_size": 16, "embed_dim": 64, "depth": 2, "num_heads": 2,
    "max_frames": 32, "projection_dim": 64,
}


@register_model
def frozen_tiny(*, tokenizer: WordTokenizer | None = None, **overrides: Any) -> FrozenInTime:
    """A Frozen model that trains on CPU in minutes (random init, word-level tokenizer).

    Args:
        tokenizer: built from the training captions (``WordTokenizer.build``); None gives a
            tokenizer of special tokens only. Its vocabulary sizes the word embedding and its
            ``max_words`` the position embeddings and the contract.
        **overrides: :class:`FrozenConfig` fields; ``text`` takes DistilBertConfig fields.
    """
    tokenizer = tiny_tokenizer(tokenizer, overrides)
    config = make_config(FrozenConfig, {**TINY_DEFAULTS, "max_words": tokenizer.max_words},
                         overrides, nested=("text",))
    text_config = tiny_distilbert_config(tokenizer.vocab_size, tokenizer.max_words,
                                         **config.text)
    model = FrozenInTime(config, build_distilbert(text_config), tokenizer, "wordlevel")
    model.spec = {"name": "frozen-tiny", **overrides}
    return model

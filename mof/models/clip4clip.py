"""CLIP4Clip-meanP (Luo et al., 2022): CLIP frame features averaged over time.

The CLIP model is transformers' ``CLIPModel`` (ViT-B/32 by default), kept whole as ``clip``.
A video is encoded frame by frame; each frame's projected CLS feature is L2-normalised, the
valid frames are averaged (a video with no valid frame counts as one, so it pools to zero
instead of NaN) and the mean is normalised again. A query is the projected hidden state of its
end-of-text token, found as the argmax of the ids, as CLIP does. Logits are
``exp(logit_scale) · cos``; ``logit_scale`` is learnt and :meth:`Clip4Clip.clamp_logit_scale`,
called by the trainer after each step, keeps it at most ln 100. The loss averages its two
InfoNCE directions.

Weights load from local files only: a transformers CLIP directory (``clip_dir``, model and
tokenizer) and/or a CLIP4Clip ``pytorch_model.bin`` (``checkpoint``: OpenAI CLIP names under
``clip.``, mixed fp16/fp32), mapped onto transformers' names by :mod:`mof.models.clip_convert`.

Registered: ``clip4clip`` (ViT-B/32, 224 px, 12 frames, 32 tokens) and ``clip4clip-tiny``
(64 px frames of 16 patches, width 64, 2+2 layers, 32 frames, word-level tokenizer).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPConfig, CLIPModel
from transformers.initialization import no_init_weights

from mof.models.clip_convert import (
    load_openai_state,
    openai_arch,
    read_clip4clip_checkpoint,
)
from mof.models.common import (
    check_video,
    frame_contract,
    make_config,
    pool_frames,
    safe_normalize,
    tiny_tokenizer,
)
from mof.models.contract import AttentionMode, RetrievalModel
from mof.models.registry import register_model
from mof.models.space_time import PatchConv2d
from mof.models.text import (
    TextTokenizer,
    load_tokenizer,
    set_text_attention,
    tokenize_texts,
)
from mof.models.tokenizer import CLS, WordTokenizer

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "TINY_DEFAULTS", "Clip4Clip", "Clip4ClipConfig", "clip4clip",
    "clip4clip_tiny", "clip_arch", "load_clip4clip_checkpoint",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: CLIPTextConfig / CLIPVisionConfig fields that shape the parameters or the computation; a
#: model's spec records them so ``create_model`` rebuilds the architecture without weights.
TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "max_position_embeddings", "hidden_act", "layer_norm_eps",
             "attention_dropout", "pad_token_id", "bos_token_id", "eos_token_id")
VISION_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "patch_size", "hidden_act", "layer_norm_eps", "attention_dropout")


@dataclass
class Clip4ClipConfig:
    """Architecture of a CLIP4Clip-meanP model; every field is JSON-serialisable.

    Attributes:
        frame_size: frame side in pixels; it is also CLIP's ``image_size``.
        max_frames: most frames per video (meanP has no temporal parameters; 12 as CLIP4Clip).
        max_words: tokens per query, start and end tokens included (CLIP4Clip: 32).
        projection_dim: joint embedding width.
        text: :data:`TEXT_KEYS` overrides of CLIPTextConfig (defaults: CLIP's 12-layer 512).
        vision: :data:`VISION_KEYS` overrides of CLIPVisionConfig (defaults: ViT-B/32).
        logit_scale_init: initial ln(scale) of a randomly initialised model (CLIP: ln(1/0.07)).
        max_logit_scale: the scale's cap, applied by ``clamp_logit_scale`` (CLIP4Clip: 100).
    """

    frame_size: int = 224
    max_frames: int = 12
    max_words: int = 32
    projection_dim: int = 512
    text: dict[str, Any] = field(default_factory=dict)
    vision: dict[str, Any] = field(default_factory=dict)
    logit_scale_init: float = math.log(1 / 0.07)
    max_logit_scale: float = 100.0

    def __post_init__(self) -> None:
        problems = [f"{name} must be a positive integer, got {getattr(self, name)!r}"
                    for name in ("frame_size", "max_frames", "max_words", "projection_dim")
                    if not isinstance(getattr(self, name), int) or getattr(self, name) < 1]
        for tower, allowed in (("text", TEXT_KEYS), ("vision", VISION_KEYS)):
            unknown = sorted(set(getattr(self, tower)) - set(allowed))
            if unknown:
                problems.append(f"{tower} has unknown field(s) {unknown}; valid: {list(allowed)}")
        if problems:  # the checks below need sane values
            raise ValueError("invalid CLIP4Clip config: " + "; ".join(problems))
        config = self.clip_config()
        text, vision = config.text_config, config.vision_config
        if self.max_words > text.max_position_embeddings:
            problems.append(f"max_words {self.max_words} exceeds the text positions "
                            f"{text.max_position_embeddings}")
        if self.frame_size % vision.patch_size:
            problems.append(f"frame_size {self.frame_size} is not a multiple of patch_size "
                            f"{vision.patch_size}")
        for tower, cfg in (("text", text), ("vision", vision)):
            if cfg.hidden_size % cfg.num_attention_heads:
                problems.append(f"{tower} hidden_size {cfg.hidden_size} is not divisible by "
                                f"num_attention_heads {cfg.num_attention_heads}")
        if not self.max_logit_scale > 0:
            problems.append(f"max_logit_scale must be > 0, got {self.max_logit_scale!r}")
        elif self.logit_scale_init > math.log(self.max_logit_scale):
            problems.append(f"logit_scale_init {self.logit_scale_init} exceeds "
                            f"ln(max_logit_scale) {math.log(self.max_logit_scale):.4f}")
        if problems:
            raise ValueError("invalid CLIP4Clip config: " + "; ".join(problems))

    def clip_config(self) -> CLIPConfig:
        """The transformers ``CLIPConfig`` of this architecture (eager attention)."""
        config = CLIPConfig(text_config=dict(self.text),
                            vision_config={**self.vision, "image_size": self.frame_size},
                            projection_dim=self.projection_dim,
                            logit_scale_init_value=self.logit_scale_init)
        config._attn_implementation = "eager"
        return config


class Clip4Clip(RetrievalModel):
    """The CLIP4Clip-meanP dual encoder.

    Args:
        config: the architecture.
        tokenizer: WordTokenizer or CLIP tokenizer; None makes :meth:`tokenize` raise.
        tokenizer_kind: ``wordlevel`` or ``clip``, published in the contract.
        clip: a loaded ``CLIPModel`` of ``config``'s architecture; None builds a random one.
        init_weights: False leaves a built model's weights uninitialised, for a caller that
            loads every weight next (random initialisation of ViT-B/32 costs seconds on CPU).
    """

    loss_reduction = "mean"

    def __init__(self, config: Clip4ClipConfig, tokenizer: TextTokenizer | None,
                 tokenizer_kind: str, clip: CLIPModel | None = None, init_weights: bool = True):
        super().__init__()
        self.config = config
        if clip is None:
            with contextlib.nullcontext() if init_weights else no_init_weights():
                clip = CLIPModel(config.clip_config())
        self.clip = clip
        # CLIP's patch Conv2d (kernel = stride) computed as reshape + linear: same parameters,
        # several times faster input gradient on CPU (every ε-gradient of MOF pays it).
        clip.vision_model.embeddings.patch_embedding.__class__ = PatchConv2d
        self.tokenizer = tokenizer
        self.contract = frame_contract(config, CLIP_MEAN, CLIP_STD, tokenizer_kind)
        self.set_attention("math")

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Queries → ``input_ids``/``attention_mask`` ``(B, L)`` int64, end token kept."""
        return tokenize_texts(self.tokenizer, texts, self.contract.max_words)

    def _encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        # (N, 3, H, W) → (N, D): CLS → post_layernorm (pooler_output) → visual projection.
        pooled = self.clip.vision_model(pixel_values=frames).pooler_output
        return self.clip.visual_projection(pooled)

    def encode_video(
        self, video: torch.Tensor, video_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, T, 3, H, W)`` normalised frames, optional ``(B, T)`` bool mask → ``(B, D)``.

        Returns the L2-normalised mean of the L2-normalised frame features; zero for a video
        without a valid frame.

        Raises:
            ValueError: more than ``max_frames`` frames, wrong frame size or mask shape.
        """
        check_video(video, video_mask, self.contract)
        pooled = pool_frames(self._encode_frames, video, video_mask,
                             self.config.projection_dim, normalize=True)
        return safe_normalize(pooled)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` ids and mask → ``(B, D)`` projected state of the end token (max id)."""
        hidden = self.clip.text_model(input_ids=input_ids,
                                      attention_mask=attention_mask).last_hidden_state
        eot = hidden[torch.arange(hidden.shape[0], device=hidden.device), input_ids.argmax(-1)]
        return self.clip.text_projection(eot)

    def similarity(self, text_emb: torch.Tensor, video_emb: torch.Tensor) -> torch.Tensor:
        """``(Bt, D)``, ``(Bv, D)`` → ``(Bt, Bv)`` cosine similarity."""
        return safe_normalize(text_emb) @ safe_normalize(video_emb).t()

    def logits(self, text_emb: torch.Tensor, video_emb: torch.Tensor) -> torch.Tensor:
        """``(Bt, Bv)`` ``exp(logit_scale)`` · cosine."""
        return self.clip.logit_scale.exp() * self.similarity(text_emb, video_emb)

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Cap ``logit_scale`` at ln(``max_logit_scale``) in place (after each optimiser step)."""
        self.clip.logit_scale.clamp_(max=math.log(self.config.max_logit_scale))

    def set_attention(self, mode: AttentionMode) -> None:
        """``math``: transformers' eager attention (double backward works); ``fused``: SDPA."""
        set_text_attention(self.clip, mode)  # any transformers model; validates mode
        self.attention = mode

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each CLIP layer in backward (non-reentrant: composes with double backward)."""
        if enable:
            self.clip.activation_checkpointing_enable({"use_reentrant": False})
        else:
            self.clip.activation_checkpointing_disable()


def load_clip4clip_checkpoint(
    model: Clip4Clip, path: str | Path, state: dict[str, torch.Tensor] | None = None
) -> None:
    """Load a CLIP4Clip (meanP) ``pytorch_model.bin`` into ``model`` strictly.

    Args:
        model: a :class:`Clip4Clip` of the checkpoint's architecture.
        path: the file (read with ``torch.load(weights_only=True)``).
        state: its contents when already read by ``read_clip4clip_checkpoint``.

    Raises:
        ValueError: the file's keys or shapes do not fit ``model`` (names them and the file).
    """
    state = read_clip4clip_checkpoint(path) if state is None else state
    load_openai_state(model.clip, state, path)


# --------------------------------------------------------------------------- constructors
def clip_arch(config: CLIPConfig) -> dict[str, Any]:
    """:class:`Clip4ClipConfig` fields describing a transformers ``CLIPConfig``."""
    text, vision = config.text_config, config.vision_config
    return {"frame_size": vision.image_size, "projection_dim": config.projection_dim,
            "text": {k: getattr(text, k) for k in TEXT_KEYS},
            "vision": {k: getattr(vision, k) for k in VISION_KEYS}}


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = {**base, **overrides}
    for tower in ("text", "vision"):
        if tower in base or tower in overrides:
            merged[tower] = {**base.get(tower, {}), **overrides.get(tower, {})}
    return merged


@register_model
def clip4clip(
    *, clip_dir: str | None = None, tokenizer_dir: str | None = None,
    checkpoint: str | None = None, **overrides: Any,
) -> Clip4Clip:
    """CLIP4Clip-meanP: CLIP ViT-B/32, 224 px, 12 frames, 32 tokens.

    Without weight files every weight is random (nothing is downloaded). The architecture comes
    from ``clip_dir``'s config, else from the checkpoint's shapes, else from the defaults;
    ``overrides`` change it further. Weight paths are not part of ``spec``.

    Args:
        clip_dir: local transformers CLIP directory (``save_pretrained``: config, weights and
            usually the tokenizer).
        tokenizer_dir: local CLIP tokenizer directory; defaults to ``clip_dir``.
        checkpoint: a CLIP4Clip ``pytorch_model.bin`` (loaded after ``clip_dir``).
        **overrides: :class:`Clip4ClipConfig` fields, e.g. ``max_frames=32``.
    """
    clip_model, arch, state = None, {}, None
    if clip_dir is not None:
        if not Path(clip_dir).is_dir():
            raise FileNotFoundError(f"CLIP directory {clip_dir} does not exist")
        clip_model = CLIPModel.from_pretrained(str(clip_dir), local_files_only=True,
                                               attn_implementation="eager", dtype=torch.float32)
        arch = clip_arch(clip_model.config)
    elif checkpoint is not None:
        state = read_clip4clip_checkpoint(checkpoint)
        try:
            arch = openai_arch(state)
        except KeyError as err:
            raise ValueError(f"{checkpoint}: not a CLIP checkpoint, {err} is missing") from None
    spec = _merge(arch, overrides)
    config = make_config(Clip4ClipConfig, {}, spec, nested=("text", "vision"))
    if clip_model is not None and clip_arch(config.clip_config()) != arch:
        raise ValueError(f"overrides {sorted(overrides)} change the architecture of {clip_dir}")
    tok_dir = tokenizer_dir if tokenizer_dir is not None else clip_dir
    tokenizer = load_tokenizer(tok_dir) if tok_dir is not None else None
    model = Clip4Clip(config, tokenizer, "clip", clip=clip_model,
                      init_weights=checkpoint is None)
    model.spec = {"name": "clip4clip", **spec}
    model.sources = {k: str(v) for k, v in (("clip_dir", clip_dir), ("tokenizer_dir", tok_dir),
                                            ("checkpoint", checkpoint)) if v is not None}
    if checkpoint is not None:
        load_clip4clip_checkpoint(model, checkpoint, state)
    return model


#: clip4clip-tiny: 64 px frames of 16 patches, width 64, 2+2 layers, 32 frames.
TINY_DEFAULTS: dict[str, Any] = {
    "frame_size": 64, "max_frames": 32, "projection_dim": 64,
    "text": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
             "num_attention_heads": 2},
    "vision": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
               "num_attention_heads": 2, "patch_size": 16},
}


@register_model
def clip4clip_tiny(*, tokenizer: WordTokenizer | None = None, **overrides: Any) -> Clip4Clip:
    """A CLIP4Clip-meanP model that trains on CPU in minutes (random init, word tokenizer).

    Args:
        tokenizer: built from the training captions; None gives one of special tokens only.
            Its vocabulary sizes the token embedding, its ``max_words`` the positions, and its
            ``[EOT]``, the largest id, is where the text is read out.
        **overrides: :class:`Clip4ClipConfig` fields; ``text``/``vision`` merge key by key.
    """
    tokenizer = tiny_tokenizer(tokenizer, overrides)
    vocab = {"vocab_size": tokenizer.vocab_size, "max_position_embeddings": tokenizer.max_words,
             "pad_token_id": tokenizer.pad_id, "bos_token_id": tokenizer.vocab[CLS],
             "eos_token_id": tokenizer.eot_id}
    defaults = _merge(TINY_DEFAULTS, {"max_words": tokenizer.max_words, "text": vocab})
    config = make_config(Clip4ClipConfig, defaults, overrides, nested=("text", "vision"))
    model = Clip4Clip(config, tokenizer, "wordlevel")
    model.spec = {"name": "clip4clip-tiny", **overrides}
    return model

"""ResNet frame encoders with mean pooling over time, paired with DistilBERT (the paper's Table V).

The video side is a timm ResNet without its classifier (``num_classes=0``: global average
pooled features, 2048-d for ResNet-50/152); each valid frame is encoded on its own and the
features are averaged over the valid frames, then projected to the joint space. The text side
is Frozen's: DistilBERT's ``[CLS]`` state → ReLU → Linear. Logits are cosine similarity over a
fixed temperature of 0.05 and the loss sums its two InfoNCE directions, as Frozen's, since
Table V swaps Frozen's video backbone and keeps the rest of its recipe.

**BatchNorm.** By default (``bn_mode="frozen"``) every BatchNorm layer stays in eval mode even
when the model trains: running statistics are used and never updated, while the affine
weights still learn. This is the safe choice for the bilevel step: ``functional_call`` with
double backward then evaluates a pure function of the parameters (train-mode BatchNorm would
mutate running statistics on every inner, outer and finite-difference evaluation, and make each
video's features depend on the rest of the batch), and frames of different videos never
interact. ``bn_mode="batch"`` restores ordinary train-mode BatchNorm (batch statistics, running
averages updated) for baseline training only.

Registered: ``resnet50`` and ``resnet152`` (224 px, DistilBERT-base, 8 frames by default) and
``resnet-tiny`` (a timm ResNet with one basic block per stage, widths 8-64, 64 px, 32 frames,
word-level tokenizer and 2-layer DistilBERT).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from torch import nn
from transformers import DistilBertConfig

from mof.models.common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_video,
    frame_contract,
    load_strictly,
    make_config,
    pool_frames,
    tiny_tokenizer,
)
from mof.models.contract import AttentionMode
from mof.models.io import read_state_dict
from mof.models.registry import register_model
from mof.models.text import (
    TextTokenizer,
    build_distilbert,
    load_tokenizer,
    set_text_attention,
    text_arch,
    tiny_distilbert_config,
)
from mof.models.text_side import DistilBertTextSide
from mof.models.tokenizer import WordTokenizer

__all__ = [
    "TINY_DEFAULTS", "ResNetConfig", "ResNetRetrieval",
    "load_timm_resnet", "resnet50", "resnet152", "resnet_tiny",
]

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth")


@dataclass
class ResNetConfig:
    """Architecture of a ResNet retrieval model; every field is JSON-serialisable.

    Attributes:
        backbone: timm model name (``resnet50``, ``resnet152``, ...).
        backbone_args: extra ``timm.create_model`` keywords (e.g. ``layers``, ``channels``).
        frame_size: frame side in pixels.
        max_frames: most frames per video (mean pooling has no temporal parameters).
        projection_dim: joint embedding width.
        temperature: logits are cosine / temperature (Frozen's 0.05).
        max_words: tokens per query (DistilBERT's 512, as Frozen).
        bn_mode: ``frozen`` (eval-mode BatchNorm always) or ``batch`` (train-mode BatchNorm).
        text: DistilBertConfig fields; empty means DistilBERT-base (or the tiny config).
    """

    backbone: str = "resnet50"
    backbone_args: dict[str, Any] = field(default_factory=dict)
    frame_size: int = 224
    max_frames: int = 8
    projection_dim: int = 256
    temperature: float = 0.05
    max_words: int = 512
    bn_mode: Literal["frozen", "batch"] = "frozen"
    text: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = [f"{name} must be a positive integer, got {getattr(self, name)!r}"
                    for name in ("frame_size", "max_frames", "projection_dim", "max_words")
                    if not isinstance(getattr(self, name), int) or getattr(self, name) < 1]
        if not timm.is_model(self.backbone):
            problems.append(f"backbone {self.backbone!r} is not a timm model")
        elif not self.backbone.startswith(("resnet", "resnext", "wide_resnet")):
            problems.append(f"backbone {self.backbone!r} is not a timm ResNet")
        if not self.temperature > 0:
            problems.append(f"temperature must be > 0, got {self.temperature!r}")
        if self.bn_mode not in ("frozen", "batch"):
            problems.append(f"bn_mode must be 'frozen' or 'batch', got {self.bn_mode!r}")
        if problems:
            raise ValueError("invalid ResNet config: " + "; ".join(problems))


class ResNetRetrieval(DistilBertTextSide):
    """A timm ResNet frame encoder (mean over frames) and Frozen's text side, unchanged.

    Args:
        config: the architecture.
        text_model: the DistilBERT encoder.
        tokenizer: WordTokenizer or transformers tokenizer; None makes :meth:`tokenize` raise.
        tokenizer_kind: ``wordlevel`` or ``distilbert``, published in the contract.
    """

    loss_reduction = "sum"

    def __init__(self, config: ResNetConfig, text_model: nn.Module,
                 tokenizer: TextTokenizer | None, tokenizer_kind: str):
        super().__init__()
        self.config = config
        self.video_model = timm.create_model(config.backbone, pretrained=False, num_classes=0,
                                             **config.backbone_args)
        self.text_model = text_model
        self.vid_proj = nn.Linear(self.video_model.num_features, config.projection_dim)
        # Frozen's 'minimal' text head: index 0 is the ReLU.
        self.txt_proj = nn.Sequential(nn.ReLU(), nn.Linear(text_model.config.dim,
                                                           config.projection_dim))
        self.temperature = config.temperature
        self.tokenizer = tokenizer
        self.contract = frame_contract(config, IMAGENET_MEAN, IMAGENET_STD, tokenizer_kind)
        self.train(self.training)  # modules are built in train mode: apply bn_mode now

    def train(self, mode: bool = True) -> ResNetRetrieval:
        """Set training mode; with ``bn_mode="frozen"`` BatchNorm layers stay in eval mode."""
        super().train(mode)
        if self.config.bn_mode == "frozen":
            for module in self.video_model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def encode_video(
        self, video: torch.Tensor, video_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, T, 3, H, W)`` normalised frames, optional ``(B, T)`` bool mask → ``(B, D)``.

        The projected mean of the valid frames' pooled ResNet features (the bias alone for a
        video without a valid frame).

        Raises:
            ValueError: more than ``max_frames`` frames, wrong frame size or mask shape.
        """
        check_video(video, video_mask, self.contract)
        pooled = pool_frames(self.video_model, video, video_mask,
                             self.video_model.num_features, normalize=False)
        return self.vid_proj(pooled)

    def set_attention(self, mode: AttentionMode) -> None:
        """Only the text encoder has attention: eager (``math``) or SDPA (``fused``)."""
        set_text_attention(self.text_model, mode)  # validates mode
        self.attention = mode

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute ResNet stages and DistilBERT layers in backward (non-reentrant)."""
        self.video_model.set_grad_checkpointing(enable)
        if enable:
            self.text_model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            self.text_model.activation_checkpointing_disable()


def load_timm_resnet(video_model: nn.Module, path: str | Path) -> None:
    """Load timm (or torchvision: same key names) ResNet weights from a local file, strictly.

    ``path`` is a ``.safetensors``, ``.pth``/``.bin`` (read with ``torch.load(weights_only=True)``
    by :func:`mof.models.io.read_state_dict`: no pickled code runs) or ``.npz`` file, or a
    directory holding ``model.safetensors`` (timm's Hugging Face layout), ``pytorch_model.bin``
    or ``model.pth``. The classifier (``fc.*``) is dropped.

    Raises:
        FileNotFoundError: no weights file at ``path``.
        ValueError: keys or shapes that do not fit (names them and the file).
    """
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in _WEIGHT_FILES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"{path} holds none of {list(_WEIGHT_FILES)}")
        path = found[0]
    elif not path.is_file():
        raise FileNotFoundError(f"ResNet weights {path} do not exist")
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("fc.")}
    load_strictly(video_model, state, path)


def _full_size(name: str, backbone: str, text_dir: str | None, tokenizer_dir: str | None,
               backbone_weights: str | None, overrides: dict[str, Any]) -> ResNetRetrieval:
    text_model = None
    if text_dir is not None:
        text_model = build_distilbert(text_dir=text_dir)
        overrides = {**overrides, "text": {**text_arch(text_model.config),
                                           **overrides.get("text", {})}}
    config = make_config(ResNetConfig, {"backbone": backbone}, overrides,
                         nested=("text", "backbone_args"))
    if text_model is None:
        text_model = build_distilbert(DistilBertConfig(**config.text))
    tok_dir = tokenizer_dir if tokenizer_dir is not None else text_dir
    tokenizer = load_tokenizer(tok_dir) if tok_dir is not None else None
    model = ResNetRetrieval(config, text_model, tokenizer, "distilbert")
    model.spec = {"name": name, **overrides}
    model.sources = {k: str(v) for k, v in (("text_dir", text_dir), ("tokenizer_dir", tok_dir),
                     ("backbone_weights", backbone_weights)) if v is not None}
    if backbone_weights is not None:
        load_timm_resnet(model.video_model, backbone_weights)
    return model


@register_model
def resnet50(*, text_dir: str | None = None, tokenizer_dir: str | None = None,
             backbone_weights: str | None = None, **overrides: Any) -> ResNetRetrieval:
    """ResNet-50 frames (mean over time) + DistilBERT-base, 224 px, 8 frames.

    Without weight files every weight is random (nothing is downloaded); weight paths are not
    part of ``spec``.

    Args:
        text_dir: local DistilBERT directory (``save_pretrained``: config, weights, tokenizer).
        tokenizer_dir: local tokenizer directory; defaults to ``text_dir``.
        backbone_weights: timm/torchvision ResNet-50 weights (see :func:`load_timm_resnet`).
        **overrides: :class:`ResNetConfig` fields, e.g. ``max_frames=2``.
    """
    return _full_size("resnet50", "resnet50", text_dir, tokenizer_dir, backbone_weights,
                      overrides)


@register_model
def resnet152(*, text_dir: str | None = None, tokenizer_dir: str | None = None,
              backbone_weights: str | None = None, **overrides: Any) -> ResNetRetrieval:
    """ResNet-152 frames (mean over time) + DistilBERT-base, 224 px, 8 frames.

    Arguments as :func:`resnet50`, with ResNet-152 weights.
    """
    return _full_size("resnet152", "resnet152", text_dir, tokenizer_dir, backbone_weights,
                      overrides)


#: resnet-tiny: one basic block per stage, widths 8/16/32/64, 64 px, 32 frames. The stem is
#: timm's "deep" one (three 3x3 convs, 8-8-16 wide): the default 7x7 stem is 64 wide whatever
#: ``channels`` says and would cost four times the rest of the network at 64 px.
TINY_DEFAULTS: dict[str, Any] = {
    "backbone": "resnet18",
    "backbone_args": {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8,
                      "stem_type": "deep"},
    "frame_size": 64, "max_frames": 32, "projection_dim": 64,
}


@register_model
def resnet_tiny(*, tokenizer: WordTokenizer | None = None, **overrides: Any) -> ResNetRetrieval:
    """A ResNet model that trains on CPU in minutes (random init, word-level tokenizer).

    Args:
        tokenizer: built from the training captions; None gives one of special tokens only.
        **overrides: :class:`ResNetConfig` fields; ``text`` takes DistilBertConfig fields.
    """
    tokenizer = tiny_tokenizer(tokenizer, overrides)
    config = make_config(ResNetConfig, {**TINY_DEFAULTS, "max_words": tokenizer.max_words},
                         overrides, nested=("text", "backbone_args"))
    text_config = tiny_distilbert_config(tokenizer.vocab_size, tokenizer.max_words,
                                         **config.text)
    model = ResNetRetrieval(config, build_distilbert(text_config), tokenizer, "wordlevel")
    model.spec = {"name": "resnet-tiny", **overrides}
    return model

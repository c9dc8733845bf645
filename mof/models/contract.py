"""The model contract: everything the trainer, the evaluator, the exporter and model IO rely on.

A model family subclasses :class:`RetrievalModel` and implements its abstract methods (a family
that misses one cannot be instantiated). Nothing outside ``mof/models`` looks a capability up by
``getattr``: what is optional has a declared default here (:meth:`~RetrievalModel.clamp_logit_scale`
does nothing, :attr:`~RetrievalModel.has_patch_readout` is false), and the state that IO and the
reports read (``spec``, ``sources``, ``tokenizer``, ``attention``) is set by this base class.
``docs/models.md`` ("Adding a backbone") is the checklist; ``tests/test_model_contract.py``
checks it for every registered model.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

__all__ = ["AttentionMode", "InputContract", "RetrievalModel"]

AttentionMode = Literal["math", "fused"]


@dataclass(frozen=True)
class InputContract:
    """What a model expects of its inputs; the data loader reads it (cf. timm's pretrained_cfg).

    Attributes:
        frame_size: square frame side in pixels (H = W).
        mean: per-channel RGB mean of the normalisation, on pixels scaled to [0, 1].
        std: per-channel RGB std of the normalisation.
        max_frames: the most frames per video the model accepts.
        max_words: text tokens per query (longer queries are truncated).
        tokenizer: ``wordlevel`` (built from captions, saved with the model), ``distilbert``
            or ``clip`` (loaded from a local directory).
    """

    frame_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    max_frames: int
    max_words: int
    tokenizer: str

    def to_dict(self) -> dict:
        return asdict(self)


class RetrievalModel(nn.Module, metaclass=abc.ABCMeta):
    """A dual encoder for text-video retrieval.

    Videos are float tensors ``(B, T, 3, H, W)`` already normalised with ``contract.mean/std``;
    an optional ``video_mask`` ``(B, T)`` bool marks valid frames. Text is
    ``input_ids``/``attention_mask`` ``(B, L)`` from :meth:`tokenize`.

    ``forward`` returns the ``(B_text, B_video)`` logits of a batch so that
    ``torch.func.functional_call(model, params, ...)`` evaluates the contrastive loss as a pure
    function of the parameters (the bilevel step needs that).

    Attributes:
        contract: the input contract (set by the subclass's ``__init__``).
        loss_reduction: ``sum`` of the two InfoNCE directions (Frozen) or their ``mean``
            (CLIP4Clip); a class attribute.
        has_patch_readout: whether :meth:`patch_embeddings` is implemented (the exporter's
            attention overlays); a class attribute.
        spec: ``create_model(**spec)`` rebuilds the architecture: the registered ``name`` and
            JSON-serialisable overrides, never weight paths (set by the registered constructor).
        sources: the weight files the model was built from, for provenance only.
        tokenizer: a ``WordTokenizer``, a transformers tokenizer, or None (then
            :meth:`tokenize` raises); saved with the model.
        attention: the mode last given to :meth:`set_attention`.
    """

    contract: InputContract
    loss_reduction: ClassVar[Literal["sum", "mean"]] = "sum"
    has_patch_readout: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.spec: dict[str, Any] = {}
        self.sources: dict[str, str] = {}
        self.tokenizer: Any = None
        self.attention: AttentionMode = "math"

    @abc.abstractmethod
    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenise queries to ``input_ids`` and ``attention_mask``, both ``(B, L)`` int64."""

    @abc.abstractmethod
    def encode_video(
        self, video: torch.Tensor, video_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, T, 3, H, W)`` → ``(B, D)`` video embeddings.

        Raises:
            ValueError: more than ``contract.max_frames`` frames, another frame size, or a mask
                of another shape (the message names the sizes).
        """

    @abc.abstractmethod
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` token ids → ``(B, D)`` text embeddings."""

    @abc.abstractmethod
    def logits(self, text_emb: torch.Tensor, video_emb: torch.Tensor) -> torch.Tensor:
        """``(Bt, D)``, ``(Bv, D)`` → ``(Bt, Bv)`` similarity logits (temperature or scale in)."""

    @abc.abstractmethod
    def similarity(self, text_emb: torch.Tensor, video_emb: torch.Tensor) -> torch.Tensor:
        """``(Bt, Bv)`` cosine similarity used for ranking at evaluation."""

    @abc.abstractmethod
    def set_attention(self, mode: AttentionMode) -> None:
        """``math`` supports double backward and ``torch.func``; ``fused`` uses SDPA kernels.

        Implementations set ``self.attention = mode``.

        Raises:
            ValueError: ``mode`` is neither.
        """

    @abc.abstractmethod
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the encoders' blocks in backward (non-reentrant: double backward works).

        Outputs and gradients are unchanged; activation memory drops to about a block's worth.
        """

    def clamp_logit_scale(self) -> None:
        """Keep a learnt logit scale in range; the trainer calls it after every optimiser step.

        Models with a fixed temperature have nothing to clamp (this default).
        """

    def patch_embeddings(self, video: torch.Tensor) -> torch.Tensor:
        """Patch tokens after the first video block, in the joint space (attention overlays).

        Only where :attr:`has_patch_readout` is true.

        Args:
            video: ``(B, F, 3, H, W)`` normalised frames.

        Returns:
            ``(B, F, N, D)``: ``N = g * g`` patches per frame, ``D`` the embedding width, so
            that ``logits(text_emb, tokens)`` scores a caption against each patch.
        """
        raise NotImplementedError(f"{type(self).__name__} has no patch tokens to read")

    def forward(
        self,
        video: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        video_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``(B, B)`` of a batch of paired texts and videos."""
        return self.logits(
            self.encode_text(input_ids, attention_mask), self.encode_video(video, video_mask)
        )

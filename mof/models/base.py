"""The interface every retrieval model implements, and the input contract it publishes."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

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


class RetrievalModel(nn.Module):
    """A dual encoder for text-video retrieval.

    Subclasses set ``contract`` and ``loss_reduction`` and implement the encoders. Videos are
    float tensors ``(B, T, 3, H, W)`` already normalised with ``contract.mean/std``; an optional
    ``video_mask`` ``(B, T)`` bool marks valid frames. Text is ``input_ids``/``attention_mask``
    ``(B, L)`` from :meth:`tokenize`.

    ``forward`` returns the ``(B_text, B_video)`` logits of a batch so that
    ``torch.func.functional_call(model, params, ...)`` evaluates the contrastive loss as a pure
    function of the parameters (the bilevel step needs that).
    """

    contract: InputContract
    #: "sum" of the two InfoNCE directions (Frozen) or their "mean" (CLIP4Clip).
    loss_reduction: Literal["sum", "mean"] = "sum"

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenise queries to ``input_ids`` and ``attention_mask``, both ``(B, L)`` int64."""
        raise NotImplementedError

    def encode_video(
        self, video: torch.Tensor, video_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, T, 3, H, W)`` → ``(B, D)`` video embeddings."""
        raise NotImplementedError

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` token ids → ``(B, D)`` text embeddings."""
        raise NotImplementedError

    def logits(self, text_emb: torch.Tensor, video_emb: torch.Tensor) -> torch.Tensor:
        """``(Bt, D)``, ``(Bv, D)`` → ``(Bt, Bv)`` similarity logits (temperature or scale in)."""
        raise NotImplementedError

    def similarity(self, text_emb: torch.Tensor, video_emb: torch.Tensor) -> torch.Tensor:
        """``(Bt, Bv)`` cosine similarity used for ranking at evaluation."""
        raise NotImplementedError

    def set_attention(self, mode: AttentionMode) -> None:
        """``math`` supports double backward and ``torch.func``; ``fused`` uses SDPA kernels."""
        raise NotImplementedError

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

"""Text sides shared by several families: the text encoder, its head and the logits.

A family that keeps a published model's text side and swaps the video backbone subclasses the
text side here and implements only the video side, so no family inherits from another's module.
"""

from __future__ import annotations

import torch

from mof.models.contract import RetrievalModel
from mof.models.text import cls_state, tokenize_texts

__all__ = ["DistilBertTextSide"]


class DistilBertTextSide(RetrievalModel):
    """Frozen's text side and logits: DistilBERT ``[CLS]`` → ReLU → Linear, cosine / temperature.

    Shared by every model that keeps Frozen's text encoder and swaps only the video backbone
    (Frozen itself, the ResNets of Table V). Subclasses set ``tokenizer``, ``contract``,
    ``text_model``, ``txt_proj`` and ``temperature``, and implement the video side.
    """

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Queries → ``input_ids``/``attention_mask`` ``(B, L)`` int64, ``[CLS]`` first."""
        return tokenize_texts(self.tokenizer, texts, self.contract.max_words)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` token ids and mask → ``(B, D)`` (``[CLS]`` state → ReLU → Linear)."""
        return self.txt_proj(cls_state(self.text_model, input_ids, attention_mask))

    def similarity(self, text_emb: torch.Tensor, video_emb: torch.Tensor) -> torch.Tensor:
        """``(Bt, D)``, ``(Bv, D)`` → ``(Bt, Bv)`` cosine, each norm clamped at 1e-8 (Frozen)."""
        t = text_emb / text_emb.norm(dim=1, keepdim=True).clamp_min(1e-8)
        v = video_emb / video_emb.norm(dim=1, keepdim=True).clamp_min(1e-8)
        return t @ v.t()

    def logits(self, text_emb: torch.Tensor, video_emb: torch.Tensor) -> torch.Tensor:
        """``(Bt, Bv)`` cosine similarity / temperature (0.05 for Frozen)."""
        return self.similarity(text_emb, video_emb) / self.temperature

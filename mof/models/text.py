"""Text encoders shared by the model families: DistilBERT through transformers.

A family keeps the ``DistilBertModel`` itself as a submodule (Frozen's keys are
``text_model.embeddings...``, so no wrapper module may sit in between) and calls
:func:`cls_state` for the ``[CLS]`` hidden state. Full-size models build DistilBERT-base from its
default config (random weights, nothing downloaded) or from a local directory written by
``save_pretrained`` (model + tokenizer); tiny models use :func:`tiny_distilbert_config` with the
:class:`~mof.models.tokenizer.WordTokenizer`, whose ``[PAD]`` id 0 matches DistilBERT's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoTokenizer,
    DistilBertConfig,
    DistilBertModel,
    PreTrainedModel,
)
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from mof.models.contract import AttentionMode
from mof.models.tokenizer import CLS, EOT, PAD, UNK, WordTokenizer

__all__ = [
    "TEXT_ARCH_KEYS",
    "TextTokenizer",
    "build_distilbert",
    "cls_state",
    "load_tokenizer",
    "set_text_attention",
    "set_text_checkpointing",
    "special_tokens_tokenizer",
    "text_arch",
    "tiny_distilbert_config",
    "tokenize_texts",
]

#: A WordTokenizer (tiny models) or a transformers tokenizer loaded from a local directory.
TextTokenizer = WordTokenizer | PreTrainedTokenizerBase

#: DistilBertConfig fields that change parameter shapes or the computation; a model's spec
#: records these so ``create_model`` rebuilds the same text encoder without its weight files.
TEXT_ARCH_KEYS = (
    "vocab_size", "dim", "n_layers", "n_heads", "hidden_dim", "max_position_embeddings",
    "activation", "sinusoidal_pos_embds", "pad_token_id", "dropout", "attention_dropout",
)

_HF_ATTENTION = {"math": "eager", "fused": "sdpa"}


def tiny_distilbert_config(vocab_size: int, max_words: int, **overrides: Any) -> DistilBertConfig:
    """A 2-layer, 64-wide DistilBERT for CPU tests and demos, without dropout.

    Dropout is off so that math and fused attention, and the bilevel step's repeated
    evaluations of the same loss, see the same function.

    Args:
        vocab_size: rows of the word embedding (the tokenizer's vocabulary size).
        max_words: position embeddings, the longest query in tokens.
        **overrides: any DistilBertConfig field (e.g. ``dim``, ``n_layers``).
    """
    fields = {"vocab_size": vocab_size, "max_position_embeddings": max_words, "dim": 64,
              "n_layers": 2, "n_heads": 2, "hidden_dim": 256, "dropout": 0.0,
              "attention_dropout": 0.0, "pad_token_id": 0}
    fields.update(overrides)
    return DistilBertConfig(**fields)


def text_arch(config: DistilBertConfig) -> dict[str, Any]:
    """The architecture fields of ``config`` (:data:`TEXT_ARCH_KEYS`), JSON-serialisable."""
    return {key: getattr(config, key) for key in TEXT_ARCH_KEYS if hasattr(config, key)}


def build_distilbert(
    config: DistilBertConfig | None = None, text_dir: str | Path | None = None,
    attention: AttentionMode = "math",
) -> DistilBertModel:
    """A ``DistilBertModel``: weights from ``text_dir`` if given, else random from ``config``.

    Args:
        config: architecture of a randomly initialised model; None means DistilBERT-base.
        text_dir: a local directory written by ``save_pretrained`` (``config.json`` and
            weights); nothing is ever downloaded.
        attention: ``math`` (eager attention, double-backward safe) or ``fused`` (SDPA).

    Raises:
        FileNotFoundError: ``text_dir`` does not exist.
        OSError: ``text_dir`` lacks a config or weights (raised by transformers).
    """
    impl = _HF_ATTENTION[attention]
    if text_dir is not None:
        if not Path(text_dir).is_dir():
            raise FileNotFoundError(f"text model directory {text_dir} does not exist")
        return DistilBertModel.from_pretrained(
            str(text_dir), local_files_only=True, attn_implementation=impl)
    config = config if config is not None else DistilBertConfig()
    config._attn_implementation = impl
    return DistilBertModel(config)


def set_text_attention(model: PreTrainedModel, mode: AttentionMode) -> None:
    """Switch a transformers model between eager (``math``) and SDPA (``fused``) attention.

    Raises:
        ValueError: ``mode`` is neither ``math`` nor ``fused``.
    """
    if mode not in _HF_ATTENTION:
        raise ValueError(f"attention mode must be 'math' or 'fused', got {mode!r}")
    model.set_attn_implementation(_HF_ATTENTION[mode])


def set_text_checkpointing(model: PreTrainedModel, enable: bool) -> None:
    """Turn per-layer activation checkpointing of a transformers model on or off.

    Non-reentrant, which composes with ``autograd.grad(create_graph=True)``.
    """
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
        if enable:
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif enable:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def cls_state(
    model: DistilBertModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """``(B, L)`` ids and mask → ``(B, dim)`` hidden state of the first (``[CLS]``) token."""
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    return out.last_hidden_state[:, 0]


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A transformers tokenizer from a local directory (never downloads).

    Raises:
        FileNotFoundError: ``path`` is not a directory.
    """
    if not Path(path).is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def special_tokens_tokenizer(max_words: int = 32) -> WordTokenizer:
    """A WordTokenizer holding only the special tokens, so construction never fails."""
    return WordTokenizer({PAD: 0, UNK: 1, CLS: 2, EOT: 3}, max_words=max_words)


def tokenize_texts(
    tokenizer: TextTokenizer | None, texts: list[str], max_words: int
) -> dict[str, torch.Tensor]:
    """Tokenise queries with either kind of tokenizer.

    Args:
        tokenizer: a WordTokenizer (truncates at its own ``max_words``) or a transformers
            tokenizer (padded to the longest query, truncated at ``max_words``).
        texts: the queries.
        max_words: tokens per query, special tokens included.

    Returns:
        ``input_ids`` and ``attention_mask``, both ``(B, L)`` int64.

    Raises:
        RuntimeError: the model was built without a tokenizer.
    """
    if tokenizer is None:
        raise RuntimeError(
            "this model has no tokenizer: build it with text_dir=... or tokenizer_dir=... "
            "(a local directory holding the tokenizer files)")
    if isinstance(tokenizer, WordTokenizer):
        return tokenizer(list(texts))
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_words,
                    return_tensors="pt")
    return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}

"""A word-level tokenizer built from a dataset's captions: tiny models need no download.

Ids: ``[PAD]`` 0, ``[UNK]`` 1, ``[CLS]`` 2, then the words by descending count (ties
alphabetical, so the vocabulary is deterministic), then ``[EOT]`` with the **largest** id, so
models that find the end-of-text token by ``argmax(input_ids)`` (CLIP) work unchanged.
A query is ``[CLS] w1 … wn [EOT]``, truncated to ``max_words`` tokens with ``[EOT]`` kept.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel

__all__ = ["WordTokenizer"]

PAD, UNK, CLS, EOT = "[PAD]", "[UNK]", "[CLS]", "[EOT]"


def _backend(vocab: dict[str, int]) -> Tokenizer:
    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()]
    )
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


class WordTokenizer:
    """Word-level tokenizer with a fixed vocabulary (``tokenizers`` backend).

    Args:
        vocab: token → id, containing the four special tokens as described in the module doc.
        max_words: tokens per query including ``[CLS]`` and ``[EOT]``.
    """

    def __init__(self, vocab: dict[str, int], max_words: int = 32):
        missing = [t for t in (PAD, UNK, CLS, EOT) if t not in vocab]
        if missing:
            raise ValueError(f"vocabulary lacks special tokens {missing}")
        if vocab[EOT] != max(vocab.values()):
            raise ValueError("[EOT] must have the largest id")
        if max_words < 3:
            raise ValueError(f"max_words must be >= 3, got {max_words}")
        self.vocab = dict(vocab)
        self.max_words = max_words
        self._tok = _backend(self.vocab)

    @classmethod
    def build(
        cls, captions: Iterable[str], max_words: int = 32, min_count: int = 1,
        max_vocab: int = 30000,
    ) -> WordTokenizer:
        """Vocabulary of the words in ``captions`` seen at least ``min_count`` times."""
        splitter = _backend({UNK: 0})
        counts: Counter[str] = Counter()
        for caption in captions:
            normalised = splitter.normalizer.normalize_str(caption)
            counts.update(w for w, _ in splitter.pre_tokenizer.pre_tokenize_str(normalised))
        words = sorted((w for w, c in counts.items() if c >= min_count),
                       key=lambda w: (-counts[w], w))[: max_vocab - 4]
        vocab = {PAD: 0, UNK: 1, CLS: 2}
        vocab.update({w: i + 3 for i, w in enumerate(words)})
        vocab[EOT] = len(vocab)
        return cls(vocab, max_words=max_words)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def pad_id(self) -> int:
        return self.vocab[PAD]

    @property
    def eot_id(self) -> int:
        return self.vocab[EOT]

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask``, both ``(B, L)`` int64, L ≤ ``max_words``."""
        rows = []
        for enc in self._tok.encode_batch(list(texts), add_special_tokens=False):
            body = enc.ids[: self.max_words - 2]
            rows.append([self.vocab[CLS], *body, self.vocab[EOT]])
        length = max(len(r) for r in rows) if rows else 2
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def save(self, path: str | Path) -> None:
        """Write ``{"vocab": …, "max_words": …}`` as JSON."""
        Path(path).write_text(json.dumps({"vocab": self.vocab, "max_words": self.max_words}))

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        data = json.loads(Path(path).read_text())
        return cls(data["vocab"], max_words=data["max_words"])

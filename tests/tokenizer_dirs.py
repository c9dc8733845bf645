"""Toy transformers tokenizers for full-size models (no download): DistilBERT WordPiece, CLIP."""

from __future__ import annotations

from pathlib import Path

from transformers import CLIPTokenizer, DistilBertTokenizerFast

#: DistilBERT's special tokens, in bert-base-uncased's order ([PAD] 0 … [MASK] 4).
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def distilbert_tokenizer(vocab_path: Path, words: list[str]) -> DistilBertTokenizerFast:
    """A WordPiece tokenizer over ``BERT_SPECIALS + words``, its vocab written to ``vocab_path``."""
    vocab_path.write_text("\n".join([*BERT_SPECIALS, *words]) + "\n")
    # transformers 5 reads a WordPiece vocab file from ``vocab=``; ``vocab_file=`` is ignored.
    return DistilBertTokenizerFast(vocab=str(vocab_path))


def clip_tokenizer() -> CLIPTokenizer:
    """A CLIP BPE tokenizer with a toy vocabulary (letters, a few words, the two specials)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + "</w>": len(vocab) + i for i, c in enumerate(letters)})
    for word in ("do", "dog</w>", "ca", "cat</w>"):
        vocab[word] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)  # the largest id, as in CLIP
    merges = [("d", "o"), ("do", "g</w>"), ("c", "a"), ("ca", "t</w>")]
    return CLIPTokenizer(vocab=vocab, merges=merges)

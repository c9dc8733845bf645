"""Build the model of a run: from the registry (fresh) or from a checkpoint (resume)."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mof.models import RetrievalModel, create_model
from mof.models.io import load_model
from mof.models.tokenizer import WordTokenizer

__all__ = ["build_model", "enable_activation_checkpointing"]


def build_model(name: str, model_args: dict, captions: list[str], seed: int,
                checkpoint_dir: Path | None = None) -> RetrievalModel:
    """The run's model on the CPU.

    Args:
        name: registered model name.
        model_args: extra ``create_model`` keyword arguments.
        captions: the training captions; models with a word-level tokenizer get one built
            from them (unless ``model_args`` gives a tokenizer).
        seed: torch seed of the random initialisation (identical on every rank).
        checkpoint_dir: resume from this checkpoint instead (weights and tokenizer).
    """
    if checkpoint_dir is not None:
        return load_model(checkpoint_dir)
    torch.manual_seed(seed)
    model = create_model(name, **model_args)
    if model.contract.tokenizer == "wordlevel" and "tokenizer" not in model_args:
        tokenizer = WordTokenizer.build(captions, max_words=model.contract.max_words)
        torch.manual_seed(seed)  # the same initial weights whatever the first build drew
        model = create_model(name, tokenizer=tokenizer, **model_args)
    return model


def _checkpointed(forward, *args, **kwargs):
    # Non-reentrant checkpointing composes with autograd.grad(create_graph=True), which the
    # exact meta-gradient needs; the reentrant variant does not.
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def enable_activation_checkpointing(model: RetrievalModel) -> int:
    """Recompute each transformer block's activations in the backward pass.

    Uses the model's own ``set_grad_checkpointing`` when it has one; otherwise wraps the
    forward of every module held in an ``nn.ModuleList`` (the blocks of timm, transformers and
    our encoders). Returns the number of blocks wrapped (-1 when the model did it itself).

    Raises:
        ValueError: the model has neither the method nor any block list.
    """
    own = getattr(model, "set_grad_checkpointing", None)
    if callable(own):
        own(True)
        return -1
    wrapped = 0
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            for block in module:
                block.forward = functools.partial(_checkpointed, block.forward)
                wrapped += 1
    if not wrapped:
        raise ValueError(f"{type(model).__name__} has no block list to checkpoint")
    return wrapped

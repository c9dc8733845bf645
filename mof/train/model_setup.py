"""Build the model of a run: from the registry (fresh) or from a checkpoint (resume)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from mof.models import create_model
from mof.models.contract import RetrievalModel
from mof.models.io import load_model
from mof.models.tokenizer import WordTokenizer

__all__ = ["build_model", "build_optimizer"]


def build_model(name: str, model_args: dict, captions: list[str], seed: int,
                checkpoint_dir: Path | None = None, init_from: str | None = None
                ) -> RetrievalModel:
    """The run's model on the CPU.

    Args:
        name: registered model name.
        model_args: extra ``create_model`` keyword arguments.
        captions: the training captions; models with a word-level tokenizer get one built
            from them (unless ``model_args`` gives a tokenizer).
        seed: torch seed of the random initialisation (identical on every rank).
        checkpoint_dir: resume from this checkpoint (weights and tokenizer).
        init_from: start from this saved model (model, checkpoint or run directory) instead
            of a random initialisation; it must be a ``name`` model.

    Raises:
        ValueError: ``init_from`` holds another model than ``name``.
    """
    if checkpoint_dir is not None:
        return load_model(checkpoint_dir)
    if init_from is not None:
        from mof.evaluate.evaluate import resolve_checkpoint

        model = load_model(resolve_checkpoint(init_from)[0])
        if model.spec.get("name") != name:
            raise ValueError(f"--init-from {init_from} holds a {model.spec.get('name')} model, "
                             f"not {name}")
        return model
    torch.manual_seed(seed)
    model = create_model(name, **model_args)
    if model.contract.tokenizer == "wordlevel" and "tokenizer" not in model_args:
        tokenizer = WordTokenizer.build(captions, max_words=model.contract.max_words)
        torch.manual_seed(seed)  # the same initial weights whatever the first build drew
        model = create_model(name, tokenizer=tokenizer, **model_args)
    return model


def build_optimizer(model: RetrievalModel, *, lr: float, weight_decay: float, schedule: str,
                    warmup_steps: int, total_steps: int
                    ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (Frozen's eps 1e-6) with linear warm-up, then constant or cosine decay to 0.

    Args:
        total_steps: model-level steps of the whole run (cosine only).
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay,
                                  eps=1e-6)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

"""The bilevel MOF trainer (and the baseline it extends): ``train(TrainConfig)``.

``mof.train.trainer.Trainer`` is the recipe (``setup / train / evaluate / save_checkpoint /
cleanup``); :func:`train` runs it start to end. ``python -m mof.train`` is ``mof-cli train``
(for ``torchrun --nproc_per_node N -m mof.train ...``). See ``docs/training.md``.
"""

from __future__ import annotations

from typing import Any

from mof.train.config import TrainConfig

__all__ = ["train"]


def train(config: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) one run; returns the summary (also printed unless ``progress`` is off).

    Raises:
        ValueError, FileExistsError, FileNotFoundError: a setting that does not fit the data
            or the run directory, reported before any training step.
    """
    from mof.train.trainer import Trainer  # torch, models and pipeline load only here

    trainer = Trainer(config, progress_bar=progress)
    try:
        trainer.setup()
        return trainer.train()
    finally:
        trainer.cleanup()

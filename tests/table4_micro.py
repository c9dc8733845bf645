"""The settings of a micro Table IV grid on the synthetic dataset, shared by the tests of
``mof-cli reproduce table4``: 8 training and 4 test videos, one epoch of two steps."""

from __future__ import annotations

from pathlib import Path

from mof.reproduce.config import Table4Config


def micro_config(base: Path, **overrides) -> Table4Config:
    """A micro grid's config under ``base`` (``overrides``: any other ``Table4Config`` field)."""
    settings = {"work": str(base / "work"), "results": str(base / "results"), "grid": "1,16:1",
                "seeds": 1, "epochs": 1, "batch_size": 4, "eval_every": 1, "synth_train": 8,
                "synth_test": 4, "jobs": 2, "progress": False, "warm_start_epochs": 1,
                "pretrain_videos": 0, "warm_start_frames": 4,
                "train_args": {"augment": "none", "shuffle_buffer": 4}}
    settings.update(overrides)
    return Table4Config(**settings)

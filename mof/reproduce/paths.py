"""Where a Table IV grid puts things under ``WORK``: one function per directory.

Every other module of :mod:`mof.reproduce` (the config, the runner, the warm start, the outputs)
asks here, and this module imports none of them, so the directory layout has one owner::

    WORK/<dataset>/<model>/                          model_dir: the cells of one model family
    WORK/<dataset>/<model>/<cell>/seed<K>/           cell_dir: one cell and seed
    WORK/<dataset>/<model>/warm-start[-<corpus>]/    warm_start_dir: the shared warm start
    WORK/synthetic/pretrain-n<N>-seed<K>/            the generated pre-training corpus
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the config imports this module
    from mof.reproduce.config import Table4Config
    from mof.reproduce.grid import Cell

__all__ = ["PRETRAIN_SEED", "cell_dir", "dataset_slug", "model_dir", "pretrain_name",
           "warm_start_dir", "warm_start_path"]

#: Seed of the pre-training corpus: the generated dataset uses seed 0, so the corpus holds other
#: videos with other captions.
PRETRAIN_SEED = 1


def dataset_slug(dataset: str) -> str:
    """A directory name for ``--dataset`` (a manifest name, or an annotation file's stem)."""
    return Path(dataset).stem if ("/" in dataset or "." in dataset) else dataset


def model_dir(cfg: Table4Config) -> Path:
    """``WORK/<dataset>/<model>``: the cells of one model family on one dataset."""
    return Path(cfg.work) / dataset_slug(cfg.dataset) / cfg.model


def cell_dir(cfg: Table4Config, cell: Cell, seed: int) -> Path:
    """``WORK/<dataset>/<model>/<cell>/seed<K>``: one cell and seed."""
    return model_dir(cfg) / cell.name / f"seed{seed}"


def pretrain_name(cfg: Table4Config) -> str:
    """The corpus directory's name, keyed by the settings that determine it."""
    return f"pretrain-n{cfg.resolved_pretrain_videos}-seed{PRETRAIN_SEED}"


def warm_start_dir(cfg: Table4Config) -> Path:
    """``WORK/<dataset>/<model>/warm-start`` (on the train split) or
    ``.../warm-start-pretrain-n<N>-seed<K>`` (on that pre-training corpus)."""
    if cfg.resolved_pretrain_videos:
        return model_dir(cfg) / f"warm-start-{pretrain_name(cfg)}"
    return model_dir(cfg) / "warm-start"


def warm_start_path(cfg: Table4Config) -> str | None:
    """The checkpoint the cells start from (``None`` when the grid has no warm start)."""
    if not cfg.resolved_warm_start_epochs:
        return None
    return str(warm_start_dir(cfg) / "run" / "checkpoints" / "last")

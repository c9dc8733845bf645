"""``Table4Config``: every setting of ``mof-cli reproduce table4``, validated up front.

The grid's cells share everything but ``--frames`` and ``--seed``: one set of shards (holding
the most frames any cell needs), one training recipe, one evaluation. The resolved config is
saved as ``WORK/<dataset>/<model>/table4_config.yaml`` and each cell's own training config
beside its run, so that a re-run can tell a finished cell from one made with other settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mof.reproduce.grid import DEFAULT_GRID, Cell, parse_grid

__all__ = ["PAPER_FRAME_LR", "SYNTHETIC", "TINY_FRAME_LR", "TINY_MODEL_ARGS",
           "TINY_FINE_TUNE_LR", "TINY_PRETRAIN_VIDEOS", "TINY_TRAIN_ARGS", "TINY_WARM_START_EPOCHS",
           "TINY_WARM_START_LR", "Table4Config"]

SYNTHETIC = "synthetic"
_SELECT = ("last", "best")

#: ``*-tiny`` models train from random weights: Frozen's temperature of 0.05 (made for a
#: pre-trained model) leaves them longer at the collapsed start where every embedding is
#: alike, 0.1 leaves it sooner (docs/results/table4-findings.md). Given ``--model-arg``s are
#: merged in.
TINY_MODEL_ARGS: dict[str, Any] = {"temperature": 0.1}
#: ``*-tiny`` models on the synthetic data: random crops of 64-px frames cut out the small
#: objects the captions name.
TINY_TRAIN_ARGS: dict[str, Any] = {"augment": "none"}
#: β, the frames' Adam learning rate: the paper's, and the one of ``*-tiny`` grids. The phase
#: schedule gives each video one Adam step per epoch and Adam's steps are about β in size, so
#: in a 6-epoch cell the paper's β moves a frame by at most ~0.005 (normalised units), far
#: below what the model can see; 0.05 lets the frames move ~0.3 (docs/results/table4-findings.md).
PAPER_FRAME_LR = 8e-4
TINY_FRAME_LR = 0.05
#: ``*-tiny`` models: epochs of the warm start. From random weights the loss stays at the
#: collapsed 2 ln B for hundreds of steps before it falls (docs/results/table4-findings.md);
#: after 15 epochs its loss is still falling and where it ends depends on small differences
#: in the data; 30 epochs converge (docs/laboratory.md).
TINY_WARM_START_EPOCHS = 30
#: ``*-tiny`` models on the synthetic dataset: videos of the generated pre-training corpus the
#: warm start trains on (``--pretrain-videos``), the analogue of Frozen's WebVid-2M: 4000 other
#: videos of the same grammar lift the 8-frame baseline where more epochs on the 1000 training
#: videos only memorise them (docs/laboratory.md).
TINY_PRETRAIN_VIDEOS = 4000
#: ``*-tiny`` models: the warm start's learning rate (from random weights) and that of the
#: cells, which fine-tune it (or train from random weights when there is no warm start). At
#: 1e-3 six fine-tuning epochs on the 1000 training videos lower the 8-frame baseline's R@1 that
#: 2e-4 keeps (docs/laboratory.md).
TINY_WARM_START_LR = 1e-3
TINY_FINE_TUNE_LR = 2e-4


@dataclass
class Table4Config:
    """Settings of one reproduction of Table IV.

    Attributes:
        dataset: manifest name (``synthetic``, ``msrvtt``, ``msvd``, ``didemo``) or annotation
            file, as for ``mof-cli shard``.
        root: dataset root (videos and annotations); ``None`` for ``synthetic`` generates the
            dataset under ``WORK/synthetic/data``.
        work: where shards, runs and evaluations go (``WORK/<dataset>/...``); reused.
        results: directory of ``table4.md``, ``table4.csv``, ``table4.png``, ``curves.png``.
        model: registered model (``frozen-tiny`` on CPU; ``frozen`` for the real experiment).
        model_args: extra ``create_model`` arguments, e.g. local weight files (merged over
            :data:`TINY_MODEL_ARGS` for ``*-tiny`` models).
        grid: comma-separated cells: ``U`` (baseline) or ``R:U`` (MOF).
        seeds: training seeds per cell (0, 1, ..., seeds-1).
        epochs: training epochs of every cell.
        batch_size: videos per step.
        lr: model learning rate of the cells; ``None``: for ``*-tiny`` models
            :data:`TINY_FINE_TUNE_LR` after a warm start, :data:`TINY_WARM_START_LR` from
            random weights; 1e-5 (the paper's) otherwise.
        meta_grad: meta-gradient estimator of the MOF cells (``mof-cli train --meta-grad``).
        frame_schedule: ``phase`` or ``epoch`` (``mof-cli train --frame-schedule``).
        frame_lr: β, the Adam learning rate of the learnable frames.
        inner_lr: α of the temporary inner step; ``None``: the trainer's default (``lr``).
        eval_every: evaluate on the test split every this many epochs during training (the
            curves); ``0``: only the final evaluation.
        select: checkpoint evaluated for the table: ``last`` (no choice made on the test
            split) or ``best`` (best test R@1 during training, as Frozen's trainer reports).
        train_args: any other ``TrainConfig`` field, applied to every cell (merged over
            :data:`TINY_TRAIN_ARGS` for ``*-tiny`` models).
        warm_start_epochs: epochs of the shared warm start every cell fine-tunes from
            (:mod:`mof.reproduce.warm_start`); ``None``: :data:`TINY_WARM_START_EPOCHS` for
            ``*-tiny`` models (random weights), 0 (none) otherwise (pre-trained weights come
            through ``model_args``).
        warm_start_frames: uniform frames per video of the warm start.
        warm_start_lr: learning rate of the warm start; ``None``: :data:`TINY_WARM_START_LR`
            for ``*-tiny`` models, ``lr`` otherwise.
        pretrain_videos: videos of the generated pre-training corpus (synthetic only, seed
            :data:`~mof.reproduce.paths.PRETRAIN_SEED`) the warm start trains on instead of the
            train split; ``None``: :data:`TINY_PRETRAIN_VIDEOS` for ``*-tiny`` models on
            ``synthetic``, 0 (the train split) otherwise.
        stored_frames: frames per video in the shards; ``None``: the most any cell needs.
        size: frame side of the shards in pixels; ``None``: the model's input size.
        synth_train: training videos of the generated synthetic dataset.
        synth_test: test videos of the generated synthetic dataset.
        synth_test_captions: captions per test video of the generated synthetic dataset
            (queries; the training videos keep 5). More captions of the same test videos
            lower the noise of R@1: 5000 queries instead of 1250 halve its binomial spread.
        jobs: cells trained at the same time, each in its own process.
        threads: torch threads per job.
        device: ``auto``, ``cpu`` or ``cuda``.
        run: train and evaluate missing cells; ``False`` only aggregates what exists.
        diagnose: also measure why MOF does or does not help (``mof.reproduce.diagnose``) and
            write ``RESULTS/table4_diagnosis.md``.
        publish: also copy the small result files (md, csv, png) into this directory (e.g.
            ``docs/results``).
        progress: progress bars.
    """

    dataset: str = SYNTHETIC
    root: str | None = None
    work: str = "runs/table4"
    results: str = "results"
    model: str = "frozen-tiny"
    model_args: dict[str, Any] = field(default_factory=dict)
    grid: str = DEFAULT_GRID
    seeds: int = 3
    epochs: int = 6
    batch_size: int = 16
    lr: float | None = None
    meta_grad: str = "exact"
    frame_schedule: str = "phase"
    frame_lr: float | None = None
    inner_lr: float | None = None
    eval_every: int = 3
    select: str = "last"
    train_args: dict[str, Any] = field(default_factory=dict)
    warm_start_epochs: int | None = None
    warm_start_frames: int = 8
    warm_start_lr: float | None = None
    pretrain_videos: int | None = None
    stored_frames: int | None = None
    size: int | None = None
    synth_train: int = 1000
    synth_test: int = 250
    synth_test_captions: int = 20
    jobs: int = 2
    threads: int = 1
    device: str = "auto"
    run: bool = True
    diagnose: bool = False
    publish: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        problems: list[str] = []
        try:
            self.cells: list[Cell] = parse_grid(self.grid)
        except ValueError as err:
            self.cells = []
            problems.append(str(err))
        if self.dataset != SYNTHETIC and not self.root:
            problems.append(f"--root is required for --dataset {self.dataset} (the directory "
                            "holding its videos and annotation files)")
        if self.root and not Path(self.root).is_dir():
            problems.append(f"--root {self.root!r} is not a directory")
        for name in ("seeds", "epochs", "batch_size", "jobs", "threads", "synth_train",
                     "synth_test", "synth_test_captions"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be a positive integer, "
                                f"got {getattr(self, name)!r}")
        if isinstance(self.synth_test_captions, int) and self.synth_test_captions > 20:
            problems.append(f"--synth-test-captions must be at most 20, got "
                            f"{self.synth_test_captions}")
        if self.warm_start_epochs is not None and (
                not isinstance(self.warm_start_epochs, int) or self.warm_start_epochs < 0):
            problems.append(f"--warm-start-epochs must be >= 0, got {self.warm_start_epochs!r}")
        if self.warm_start_lr is not None and not (
                isinstance(self.warm_start_lr, (int, float)) and self.warm_start_lr > 0):
            problems.append(f"--warm-start-lr must be > 0, got {self.warm_start_lr!r}")
        if self.pretrain_videos is not None and (
                not isinstance(self.pretrain_videos, int) or self.pretrain_videos < 0):
            problems.append(f"--pretrain-videos must be >= 0, got {self.pretrain_videos!r}")
        elif self.pretrain_videos and self.dataset != SYNTHETIC:
            problems.append(f"--pretrain-videos: the pre-training corpus is generated, so it "
                            f"needs --dataset {SYNTHETIC} (got {self.dataset})")
        if not isinstance(self.warm_start_frames, int) or self.warm_start_frames < 1:
            problems.append(f"--warm-start-frames must be a positive integer, got "
                            f"{self.warm_start_frames!r}")
        if not isinstance(self.eval_every, int) or self.eval_every < 0:
            problems.append(f"--eval-every must be >= 0, got {self.eval_every!r}")
        if self.select not in _SELECT:
            problems.append(f"--select must be one of {', '.join(_SELECT)}, got {self.select!r}")
        needed = max([c.stored_frames for c in self.cells] + self._warm_start_frames())
        if self.stored_frames is not None and self.stored_frames < needed:
            problems.append(f"--stored-frames {self.stored_frames}: the grid needs {needed}")
        if self.size is not None and self.size < 8:
            problems.append(f"--size must be >= 8, got {self.size}")
        problems += self._train_problems()
        if problems:
            raise ValueError("invalid reproduce config:\n  - " + "\n  - ".join(problems))

    def _train_problems(self) -> list[str]:
        """Build every cell's training config once, so a bad setting fails before any work."""
        from mof.train.config import TrainConfig

        names = {f.name for f in dataclasses.fields(TrainConfig)}
        owned = {"model", "train", "test", "out", "frames", "seed", "resume"}
        problems = [f"--train-arg {k}: not a train setting" for k in sorted(self.train_args)
                    if k not in names]
        problems += [f"--train-arg {k}: set by the grid itself" for k in sorted(self.train_args)
                     if k in owned]
        if problems or not self.cells:
            return problems
        for cell in self.cells:
            try:
                self.train_config(cell, 0, "train", "test", "out")
            except ValueError as err:
                return [f"cell {cell.frames}: {err}"]
        return []

    @property
    def tiny(self) -> bool:
        return self.model.endswith("-tiny")

    @property
    def resolved_model_args(self) -> dict[str, Any]:
        return {**(TINY_MODEL_ARGS if self.tiny else {}), **self.model_args}

    @property
    def resolved_train_args(self) -> dict[str, Any]:
        return {**(TINY_TRAIN_ARGS if self.tiny else {}), **self.train_args}

    @property
    def resolved_warm_start_epochs(self) -> int:
        if self.warm_start_epochs is not None:
            return self.warm_start_epochs
        return TINY_WARM_START_EPOCHS if self.tiny else 0

    @property
    def resolved_pretrain_videos(self) -> int:
        """Videos of the pre-training corpus; 0 when there is none (or no warm start)."""
        if not self.resolved_warm_start_epochs:
            return 0
        if self.pretrain_videos is not None:
            return self.pretrain_videos
        return TINY_PRETRAIN_VIDEOS if self.tiny and self.dataset == SYNTHETIC else 0

    @property
    def resolved_frame_lr(self) -> float:
        if self.frame_lr is not None:
            return self.frame_lr
        return TINY_FRAME_LR if self.tiny else PAPER_FRAME_LR

    @property
    def resolved_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        if not self.tiny:
            return 1e-5
        return TINY_FINE_TUNE_LR if self.resolved_warm_start_epochs else TINY_WARM_START_LR

    @property
    def resolved_warm_start_lr(self) -> float:
        if self.warm_start_lr is not None:
            return self.warm_start_lr
        return TINY_WARM_START_LR if self.tiny else self.resolved_lr

    @property
    def needed_frames(self) -> int:
        """Frames stored per video in the shards (every cell draws from the same shards)."""
        return self.stored_frames or max([c.stored_frames for c in self.cells]
                                         + self._warm_start_frames())

    def _warm_start_frames(self) -> list[int]:
        return [self.warm_start_frames] if self.resolved_warm_start_epochs else []

    def seed_list(self) -> list[int]:
        return list(range(self.seeds))

    def train_config(self, cell: Cell, seed: int, train: str, test: str | None, out: str):
        """The ``TrainConfig`` of one cell and seed (validated by its constructor)."""
        from mof.train.config import TrainConfig

        settings: dict[str, Any] = {
            "model": self.model, "model_args": self.resolved_model_args, "train": train,
            "test": test if self.eval_every else None, "out": out, "frames": cell.frames,
            "seed": seed, "epochs": self.epochs, "batch_size": self.batch_size,
            "lr": self.resolved_lr, "meta_grad": self.meta_grad,
            "frame_schedule": self.frame_schedule, "frame_lr": self.resolved_frame_lr,
            "inner_lr": self.inner_lr, "eval_every": max(self.eval_every, 1),
            "device": self.device, "workers": 0,
        }
        settings.update(self.resolved_train_args)
        if self.resolved_warm_start_epochs:
            from mof.reproduce.paths import warm_start_path

            settings["init_from"] = warm_start_path(self)
        return TrainConfig(**settings)

    def warm_start_config(self, train: str, out: str, test: str | None = None):
        """The ``TrainConfig`` of the warm start: a baseline on ``warm_start_frames``, seed 0,
        evaluated on ``test`` every ``eval_every`` epochs (its learning curve) when given."""
        from mof.train.config import FRAME_LEVEL_SETTINGS, TrainConfig

        settings: dict[str, Any] = {
            "model": self.model, "model_args": self.resolved_model_args, "train": train,
            "test": test if self.eval_every else None, "out": out,
            "frames": str(self.warm_start_frames), "seed": 0,
            "epochs": self.resolved_warm_start_epochs, "batch_size": self.batch_size,
            "lr": self.resolved_warm_start_lr, "eval_every": max(self.eval_every, 1),
            "device": self.device, "workers": 0,
        }
        # A baseline: frame-level settings (a MOF variant's) leave it as it is, so grids of
        # variants share one warm start.
        settings.update({k: v for k, v in self.resolved_train_args.items()
                         if k not in FRAME_LEVEL_SETTINGS})
        return TrainConfig(**settings)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["cells"] = [c.frames for c in self.cells]
        return data

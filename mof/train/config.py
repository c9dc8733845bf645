"""``TrainConfig``: every setting of ``mof-cli train``, validated up front, saved as config.yaml.

Precedence: dataclass defaults < the YAML file of ``--config`` < options given on the command
line. The fully resolved config is written to ``RUN_DIR/config.yaml``; ``--resume RUN_DIR`` reads
it back, and only the settings in :data:`RESUME_OVERRIDABLE` may change on resume.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.atomic import atomic_write_yaml
from pipeline.errors import MofError

__all__ = [
    "RESUME_OVERRIDABLE",
    "ConfigError",
    "TrainConfig",
    "load_train_config",
    "parse_frames",
    "save_train_config",
]

#: Settings that may differ between a run and its resumption (they change neither the
#: mathematics of a step nor the data order).
RESUME_OVERRIDABLE = frozenset(
    {"epochs", "eval_every", "workers", "device", "checkpoint_every", "log_every", "resume",
     "eval_batch_size", "max_steps"}
)

_META_GRAD = ("exact", "finite-diff", "first-order")
_FD_SCHEMES = ("central", "forward")
_SCHEDULES = ("phase", "epoch")
_FRAME_GRAD_SCALES = ("alpha", "raw")
_INNER_STEPS = ("sgd", "adamw")
_FRAME_PARAMS = ("pixels", "mix")

#: The settings of the frame level: a baseline run (``frames`` = U) ignores every one of them.
FRAME_LEVEL_SETTINGS = frozenset({
    "meta_grad", "fd_step", "fd_check", "fd_scheme", "frame_schedule", "frame_step_every",
    "frame_steps", "inner_step", "frame_param", "mix_lr", "mix_init_logit", "inner_lr",
    "frame_lr", "frame_betas", "frame_lr_step", "frame_lr_gamma", "frame_grad_scale",
    "store_dtype"})
_AUGMENT = ("none", "crop", "crop-flip")
_DEVICES = ("auto", "cpu", "cuda")
_STORE_DTYPES = ("float32", "float16")
_LR_SCHEDULES = ("constant", "cosine")


class ConfigError(MofError, ValueError):
    """A config with one or more invalid settings; the message lists every problem."""


def parse_frames(spec: str) -> tuple[int | None, int]:
    """``"R:U"`` → ``(R, U)`` (MOF), ``"U"`` → ``(None, U)`` (baseline).

    Raises:
        ValueError: not one or two positive integers separated by ``:``.
    """
    parts = str(spec).split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or any(v <= 0 for v in values):
        raise ValueError(f"--frames must be 'U' or 'R:U' with positive integers, got {spec!r}")
    return (None, values[0]) if len(values) == 1 else (values[0], values[1])


@dataclass
class TrainConfig:
    """Settings of one training run (baseline or MOF).

    Attributes:
        model: registered model name (``mof.models.list_models()``), e.g. ``frozen-tiny``.
        train: training shards: a shard directory (with ``index.json``), a brace pattern or a
            comma-separated list of ``.tar`` files.
        test: test shards evaluated every ``eval_every`` epochs; ``None`` disables evaluation.
        out: the run directory (config.yaml, metrics.csv, checkpoints/, mof.zarr, events).
        frames: ``"R:U"`` for MOF (R regular frames, U learnable frames per video) or ``"U"``
            for the baseline trained on U uniform frames.
        meta_grad: meta-gradient estimator: ``exact`` (double backward), ``finite-diff`` (the
            difference along v, no double backward) or ``first-order`` (ablation only: its
            direction is unrelated to the meta-gradient).
        fd_step: ``finite-diff`` step as ‖ξv‖ (relative to ‖v‖).
        fd_check: on the first frame-level batch, compare the ``finite-diff`` meta-gradient
            with the exact one; below cosine 0.99 warn and go on with the best step of
            1e-2 ... 1e-6 (recorded in the run's progress, so a resumed run keeps it).
        fd_scheme: ``finite-diff`` difference: ``central`` (two ε-gradients, Algorithm 1 to
            the difference's accuracy) or ``forward`` (shares the model-level pass: one
            ε-gradient, but the frame-level step starts from Θ before the model-level update,
            an approximation of Algorithm 1; see ``docs/bilevel.md``).
        frame_schedule: ``phase`` (Algorithm 1: a frame-level step after every model-level
            step) or ``epoch`` (a second pass per epoch with Θ fixed, inner α = 1).
        frame_step_every: with ``phase``, the frame-level step runs on every k-th batch only.
        frame_steps: frame-level steps per frame-level batch, each on the same batch (captions,
            crops, regular frames) with Θ fixed, each starting from the frames the previous
            one wrote (``docs/variants.md``).
        inner_step: the temporary step Θ'': ``sgd`` (the paper: Θ − α ∇_Θ L) or ``adamw``
            (Θ − α P ⊙ ∇_Θ L with P the model optimiser's bias-corrected 1 / (sqrt(v_hat) +
            eps), so Θ'' moves like the model's next update; α is then ``inner_lr`` or ``lr``
            under both schedules).
        frame_param: what the frames' Adam steps: ``pixels`` (the paper: each element of ε)
            or ``mix`` (each learnable frame is a per-video softmax mix of R fixed regular
            frames plus a pixel residual; the mixing logits step with ``mix_lr``). Like every
            frame-level setting, ignored by a baseline run.
        mix_lr: ``mix``: Adam learning rate of the mixing logits.
        mix_init_logit: ``mix``: initial logit of the regular frame nearest each learnable
            frame's uniform position (the others start at 0).
        epochs: passes over the training shards.
        eval_every: evaluate on ``test`` every this many epochs (and after the last).
        metric: the metrics.json key that selects ``checkpoints/best`` (higher is better unless
            the name ends in ``MedR`` or ``MeanR``).
        seed: seeds model initialisation, data order, caption and frame draws, augmentation.
        lr: model AdamW learning rate (the paper's α, 1e-5 for pre-trained models).
        lr_schedule: ``constant`` (the paper) or ``cosine`` decay to 0 over the run, both after
            ``warmup_steps`` of linear warm-up.
        warmup_steps: model-level steps of linear learning-rate warm-up.
        inner_lr: α of the temporary SGD step of the ``phase`` schedule; ``None`` uses ``lr``.
        weight_decay: AdamW weight decay (Frozen trains with 0).
        frame_lr: Adam learning rate β of the learnable frames.
        frame_betas: Adam betas of the frames; ``None``: (0.9, 0.999) for ``phase``,
            (0.5, 0.999) for ``epoch``.
        frame_lr_step: ``epoch`` schedule: β is multiplied by ``frame_lr_gamma`` every this
            many epochs (StepLR).
        frame_lr_gamma: see ``frame_lr_step``.
        frame_grad_scale: ``alpha`` divides the meta-gradient by the inner α before the frames'
            Adam step, so frames move at any α (Adam with ε·α); ``raw`` is the paper's literal
            step, whose meta-gradient (proportional to α) falls below Adam's ε = 1e-8 at
            α = 1e-5 and leaves the frames where they started (``docs/bilevel.md``).
        batch_size: videos per step over all processes (divided evenly across ranks).
        workers: shard-reading DataLoader workers per process.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        amp: bf16 autocast on CUDA (ignored on CPU).
        grad_checkpointing: per-block activation checkpointing (non-reentrant).
        augment: train-time augmentation, one draw per video per phase, the same for all its
            frames: ``none``, ``crop`` (random resized crop) or ``crop-flip`` (plus a horizontal
            flip; wrong for captions naming directions).
        crop_scale: smallest crop area fraction of ``crop``.
        shuffle_buffer: samples in the reader's shuffle buffer (per worker).
        store_dtype: dtype of the learnable frames in ``mof.zarr``; float16 rounds away Adam
            steps smaller than its spacing (≈1e-3 near 1.0), so float32 is the default.
        checkpoint_every: also checkpoint every this many steps inside an epoch (0: only at
            epoch ends).
        max_steps: stop after this many model-level steps in total (``None``: no limit).
        log_every: TensorBoard scalars every this many steps.
        eval_batch_size: videos per encoding batch at evaluation.
        model_args: extra keyword arguments of ``create_model`` (e.g. weight paths).
        init_from: start from the weights (and tokenizer) of a saved model: a model directory,
            a checkpoint directory or a run directory (its best checkpoint).
        resume: a run directory to continue from its last checkpoint.
    """

    model: str = ""
    train: str = ""
    test: str | None = None
    out: str = ""
    frames: str = "8"
    meta_grad: str = "exact"
    fd_step: float = 1e-3
    fd_check: bool = True
    fd_scheme: str = "central"
    frame_schedule: str = "phase"
    frame_step_every: int = 1
    frame_steps: int = 1
    inner_step: str = "sgd"
    frame_param: str = "pixels"
    mix_lr: float = 0.5
    mix_init_logit: float = 4.0
    epochs: int = 10
    eval_every: int = 1
    metric: str = "t2v/R@1"
    seed: int = 0
    lr: float = 1e-5
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    inner_lr: float | None = None
    weight_decay: float = 0.0
    frame_lr: float = 8e-4
    frame_betas: tuple[float, float] | None = None
    frame_lr_step: int = 30
    frame_lr_gamma: float = 0.5
    frame_grad_scale: str = "alpha"
    batch_size: int = 16
    workers: int = 2
    device: str = "auto"
    amp: bool = True
    grad_checkpointing: bool = False
    augment: str = "crop"
    crop_scale: float = 0.5
    shuffle_buffer: int = 256
    store_dtype: str = "float32"
    checkpoint_every: int = 0
    max_steps: int | None = None
    log_every: int = 10
    eval_batch_size: int = 64
    model_args: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    resume: str | None = None

    def __post_init__(self) -> None:
        if self.frame_betas is not None:
            self.frame_betas = tuple(float(b) for b in self.frame_betas)  # YAML gives a list
        problems = self._problems()
        if problems:
            raise ConfigError("invalid train config:\n  - " + "\n  - ".join(problems))

    def _problems(self) -> list[str]:
        p: list[str] = []
        for name in ("model", "train", "out"):
            if not getattr(self, name):
                p.append(f"--{name} is required")
        try:
            regular, used = parse_frames(self.frames)
            if regular is not None and regular < used:
                p.append(f"--frames {self.frames}: R must be >= U")
        except ValueError as err:
            p.append(str(err))
        for name, allowed in (("meta_grad", _META_GRAD), ("fd_scheme", _FD_SCHEMES),
                              ("frame_schedule", _SCHEDULES),
                              ("frame_grad_scale", _FRAME_GRAD_SCALES),
                              ("inner_step", _INNER_STEPS), ("frame_param", _FRAME_PARAMS),
                              ("augment", _AUGMENT), ("device", _DEVICES),
                              ("store_dtype", _STORE_DTYPES), ("lr_schedule", _LR_SCHEDULES)):
            if getattr(self, name) not in allowed:
                p.append(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                         f"got {getattr(self, name)!r}")
        for name in ("epochs", "eval_every", "frame_step_every", "frame_steps", "batch_size",
                     "frame_lr_step",
                     "log_every", "eval_batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                p.append(f"--{name.replace('_', '-')} must be a positive integer, "
                         f"got {getattr(self, name)!r}")
        for name in ("workers", "checkpoint_every", "shuffle_buffer", "warmup_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                p.append(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)!r}")
        if self.batch_size < 2:
            p.append("--batch-size must be >= 2 (a contrastive batch needs negatives)")
        if self.max_steps is not None and self.max_steps < 1:
            p.append(f"--max-steps must be >= 1, got {self.max_steps}")
        for name in ("lr", "frame_lr", "fd_step", "mix_lr"):
            if not getattr(self, name) > 0:
                p.append(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if not (0 <= self.mix_init_logit < 50):  # beyond, the softmax's gradient underflows
            p.append(f"--mix-init-logit must be in [0, 50), got {self.mix_init_logit}")
        if self.inner_lr is not None and not self.inner_lr > 0:
            p.append(f"--inner-lr must be > 0, got {self.inner_lr}")
        if self.weight_decay < 0:
            p.append(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 < self.frame_lr_gamma <= 1:
            p.append(f"--frame-lr-gamma must be in (0, 1], got {self.frame_lr_gamma}")
        if not 0 < self.crop_scale <= 1:
            p.append(f"--crop-scale must be in (0, 1], got {self.crop_scale}")
        if self.frame_betas is not None and (
            len(self.frame_betas) != 2 or not all(0 <= b < 1 for b in self.frame_betas)
        ):
            p.append(f"--frame-betas must be two numbers in [0, 1), got {self.frame_betas}")
        direction, _, name = str(self.metric).partition("/")
        if direction not in ("t2v", "v2t") or name not in ("R@1", "R@5", "R@10", "MedR", "MeanR"):
            p.append(f"--metric must be t2v/ or v2t/ followed by R@1, R@5, R@10, MedR or MeanR, "
                     f"got {self.metric!r}")
        if not isinstance(self.model_args, dict):
            p.append(f"model_args must be a mapping, got {type(self.model_args).__name__}")
        return p

    @property
    def regular_frames(self) -> int | None:
        """R, the regular frames of MOF; ``None`` for the baseline."""
        return parse_frames(self.frames)[0]

    @property
    def num_frames(self) -> int:
        """U, the frames the model sees per video (learnable with MOF, uniform for baseline)."""
        return parse_frames(self.frames)[1]

    @property
    def mof(self) -> bool:
        return self.regular_frames is not None

    @property
    def alpha(self) -> float:
        """The inner step's α: ``inner_lr`` or ``lr``; 1 for the ``epoch`` schedule's SGD step."""
        if self.frame_schedule == "epoch" and self.inner_step == "sgd":
            return 1.0
        return self.lr if self.inner_lr is None else self.inner_lr

    @property
    def resolved_frame_betas(self) -> tuple[float, float]:
        if self.frame_betas is not None:
            return self.frame_betas
        return (0.5, 0.999) if self.frame_schedule == "epoch" else (0.9, 0.999)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["frame_betas"] is not None:
            data["frame_betas"] = list(data["frame_betas"])
        return data


def _read_yaml(path: str | Path) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a train config must be a YAML mapping")
    # Accept the CLI spelling (frame-lr) as well as the field name (frame_lr).
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def load_train_config(
    config_file: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Build a config: defaults, then ``config_file``, then ``overrides`` (the CLI options).

    With ``resume`` set (in either source), the run's saved ``config.yaml`` is the base and the
    overrides may only touch :data:`RESUME_OVERRIDABLE` settings.

    Raises:
        ConfigError: unknown keys, forbidden overrides on resume, or invalid values; every
            problem is listed.
    """
    values: dict[str, Any] = _read_yaml(config_file) if config_file else {}
    overrides = dict(overrides or {})
    values.update(overrides)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    problems = [f"unknown setting {k!r}" for k in sorted(set(values) - names)]
    resume = values.get("resume")
    if resume:
        saved_path = Path(resume) / "config.yaml"
        if not saved_path.is_file():
            problems.append(f"--resume {resume}: no config.yaml (not a run directory)")
        else:
            saved = _read_yaml(saved_path)
            changed = sorted(k for k, v in values.items() if k in names and k != "out"
                             and k not in RESUME_OVERRIDABLE and _differs(saved.get(k), v))
            problems += [f"--{k.replace('_', '-')} cannot change on resume "
                         f"(run has {saved.get(k)!r}, got {values[k]!r})" for k in changed]
            saved.update({k: v for k, v in values.items() if k in RESUME_OVERRIDABLE})
            saved["out"] = str(resume)  # the run continues where it is, even if it was moved
            values = saved
    if problems:
        raise ConfigError("invalid train config:\n  - " + "\n  - ".join(problems))
    return TrainConfig(**{k: v for k, v in values.items() if k in names})


def _differs(saved: Any, given: Any) -> bool:
    if isinstance(saved, list | tuple) and isinstance(given, list | tuple):
        return list(saved) != list(given)
    return saved != given


def save_train_config(config: TrainConfig, path: str | Path) -> None:
    """Write ``config`` as YAML to ``path`` atomically (temporary name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_yaml(path, config.to_dict())

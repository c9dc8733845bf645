"""The options of ``mof-cli train`` (also ``python -m mof.train``), and their mapping to a config.

Every option defaults to "not given", so that only options typed on the command line override
the ``--config`` YAML file; the defaults shown in ``--help`` are those of
:class:`~mof.train.config.TrainConfig`, the single source of defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import click
import yaml

from mof.train.config import TrainConfig, load_train_config

__all__ = ["config_from_options", "train_options"]

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def _opt(*decls: str, help: str, **kwargs: Any) -> Callable:
    name = kwargs.pop("dest", None) or decls[0].lstrip("-").split("/")[0].replace("-", "_")
    default = _DEFAULTS.get(name)
    shown = "" if default in (None, "") else f" [default: {default}]"
    return click.option(*decls, default=None, help=help + shown, **kwargs)


_OPTIONS = [
    _opt("--model", help="Registered model name, e.g. frozen-tiny (mof.models.list_models())."),
    _opt("--train", help="Train shards: a shard directory, a brace pattern or a comma list."),
    _opt("--test", help="Test shards evaluated every --eval-every epochs (omit: no evaluation)."),
    _opt("--out", help="Run directory (config.yaml, metrics.csv, checkpoints/, mof.zarr, tb/)."),
    _opt("--frames", help="'R:U' for MOF (e.g. 16:4), 'U' for the baseline on U uniform frames."),
    _opt("--meta-grad", type=click.Choice(["exact", "finite-diff", "first-order"]),
         help="Meta-gradient: exact double backward, finite-diff, or first-order (ablation)."),
    _opt("--fd-step", type=float, help="finite-diff step as ||xi v||."),
    _opt("--fd-check/--no-fd-check",
         help="finite-diff: check --fd-step against the exact meta-gradient on the first "
              "batch; below cosine 0.99 warn and use the best step of 1e-2..1e-6."),
    _opt("--fd-scheme", type=click.Choice(["central", "forward"]),
         help="finite-diff difference: central (two eps-gradients) or forward (reuses the "
              "model step's pass; the frame step then starts from the model before that "
              "step, an approximation of Algorithm 1)."),
    _opt("--frame-schedule", type=click.Choice(["phase", "epoch"]),
         help="phase: Algorithm 1, a frame step after each model step; epoch: the authors' "
              "per-epoch frame pass with the model fixed."),
    _opt("--frame-step-every", type=int, help="phase schedule: frame step on every k-th batch."),
    _opt("--frame-steps", type=int,
         help="Frame steps per frame batch, on the same batch with the model fixed."),
    _opt("--inner-step", type=click.Choice(["sgd", "adamw"]),
         help="Temporary step of the frame step: sgd (the paper) or adamw (preconditioned by "
              "the model optimiser's second moment, like the model's next update)."),
    _opt("--frame-param", type=click.Choice(["pixels", "mix"]),
         help="pixels: Adam on every frame element (the paper); mix: each frame a softmax mix "
              "of the video's R regular frames plus a pixel residual."),
    _opt("--mix-lr", type=float, help="mix: Adam learning rate of the mixing logits."),
    _opt("--mix-init-logit", type=float,
         help="mix: initial logit of the regular frame nearest each uniform position."),
    _opt("--epochs", type=int, help="Passes over the training shards."),
    _opt("--eval-every", type=int, help="Evaluate every this many epochs (and after the last)."),
    _opt("--metric", help="metrics key that selects checkpoints/best, e.g. t2v/R@1, v2t/MedR."),
    _opt("--seed", type=int, help="Seed of initialisation, data order, draws, augmentation."),
    _opt("--lr", type=float, help="Model AdamW learning rate alpha (tiny models from scratch: "
                                   "use about 1e-3)."),
    _opt("--lr-schedule", type=click.Choice(["constant", "cosine"]),
         help="Model learning rate after warm-up: constant (the paper) or cosine decay."),
    _opt("--warmup-steps", type=int, help="Linear learning-rate warm-up steps."),
    _opt("--inner-lr", type=float, help="Inner SGD alpha of the frame step [default: --lr]."),
    _opt("--weight-decay", type=float, help="AdamW weight decay."),
    _opt("--frame-lr", type=float, help="Adam learning rate beta of the learnable frames."),
    _opt("--frame-betas", type=float, nargs=2,
         help="Adam betas of the frames [default: 0.9 0.999 phase, 0.5 0.999 epoch]."),
    _opt("--frame-lr-step", type=int, help="epoch schedule: StepLR step (frame passes)."),
    _opt("--frame-lr-gamma", type=float, help="epoch schedule: StepLR gamma."),
    _opt("--frame-grad-scale", type=click.Choice(["alpha", "raw"]),
         help="alpha: divide the meta-gradient by the inner alpha before the frames' Adam "
              "(frames move at any alpha); raw: the paper's literal step (frozen at small "
              "alpha)."),
    _opt("--batch-size", type=int, help="Videos per step over all processes."),
    _opt("--workers", type=int, help="Shard-reading worker processes per process."),
    _opt("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Where to compute."),
    _opt("--amp/--no-amp", help="bf16 autocast on CUDA (ignored on CPU)."),
    _opt("--grad-checkpointing/--no-grad-checkpointing", help="Activation checkpointing."),
    _opt("--augment", type=click.Choice(["none", "crop", "crop-flip"]),
         help="Per-video augmentation, the same on all its frames."),
    _opt("--crop-scale", type=float, help="Smallest crop area fraction."),
    _opt("--shuffle-buffer", type=int, help="Reader shuffle buffer (samples per worker)."),
    _opt("--store-dtype", type=click.Choice(["float32", "float16"]),
         help="dtype of the learnable frames in mof.zarr."),
    _opt("--checkpoint-every", type=int, help="Also checkpoint every N batches (0: epochs only)."),
    _opt("--max-steps", type=int, help="Stop after this many model steps in total."),
    _opt("--log-every", type=int, help="TensorBoard scalars every N steps."),
    _opt("--eval-batch-size", type=int, help="Videos per encoding batch at evaluation."),
    click.option("--model-arg", "model_arg", multiple=True, metavar="KEY=VALUE",
                 help="Extra create_model argument (YAML value), repeatable."),
    _opt("--init-from", help="Start from a saved model (model, checkpoint or run directory) "
                             "instead of random weights."),
    click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
                 help="YAML file of settings; options given here override it."),
    click.option("--resume", type=click.Path(file_okay=False, exists=True), metavar="RUN_DIR",
                 help="Continue the run in RUN_DIR from its last checkpoint."),
    click.option("--quiet", is_flag=True, help="No progress bar or summary."),
]


def train_options(command: Callable) -> Callable:
    """Decorate a Click command with every ``train`` option."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def config_from_options(options: dict[str, Any]) -> TrainConfig:
    """Build the :class:`TrainConfig` of a command line (``quiet`` is not a setting).

    Raises:
        click.UsageError: invalid settings (every problem listed) or a malformed --model-arg.
    """
    options = dict(options)
    options.pop("quiet", None)
    config_file = options.pop("config_file", None)
    overrides = {k: v for k, v in options.items() if v is not None and k != "model_arg"}
    if "frame_betas" in overrides:
        overrides["frame_betas"] = tuple(overrides["frame_betas"])
    model_args: dict[str, Any] = {}
    for item in options.get("model_arg") or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.UsageError(f"--model-arg expects KEY=VALUE, got {item!r}")
        model_args[key] = yaml.safe_load(value)
    if model_args:
        overrides["model_args"] = model_args
    try:
        return load_train_config(config_file, overrides)
    except ValueError as err:
        raise click.UsageError(str(err)) from err

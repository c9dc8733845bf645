"""The options of ``mof-cli reproduce table4`` and their mapping to a :class:`Table4Config`.

Defaults shown in ``--help`` are those of :class:`Table4Config`, the single source of defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import click
import yaml

from mof.reproduce.config import (
    TINY_FINE_TUNE_LR,
    TINY_PRETRAIN_VIDEOS,
    TINY_WARM_START_EPOCHS,
    TINY_WARM_START_LR,
    Table4Config,
)

__all__ = ["config_from_options", "table4_options"]

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Table4Config)}


def _opt(decl: str, help: str, **kwargs: Any) -> Callable:
    name = decl.lstrip("-").split("/")[0].replace("-", "_")
    default = _DEFAULTS.get(name)
    return click.option(decl, name, default=default, show_default=default not in (None, ""),
                        help=help, **kwargs)


_OPTIONS = [
    _opt("--dataset", "Dataset: synthetic (generated), msrvtt, msvd, didemo, or an annotation "
                      "file."),
    _opt("--root", "Dataset root with videos and annotations (required unless synthetic).",
         type=click.Path(file_okay=False)),
    _opt("--work", "Where data, shards, runs and evaluations go (reused by later calls).",
         type=click.Path(file_okay=False)),
    _opt("--results", "Directory of table4.md/.csv/.png and curves.png.",
         type=click.Path(file_okay=False)),
    _opt("--model", "Registered model: frozen-tiny (CPU) or frozen (GPU, local weights)."),
    click.option("--model-arg", "model_arg", multiple=True, metavar="KEY=VALUE",
                 help="create_model argument (YAML value), e.g. checkpoint=/w/frozen.pth.tar; "
                      "repeatable."),
    _opt("--grid", "Cells: 'U' (baseline on U frames) or 'R:U' (MOF), comma-separated."),
    _opt("--seeds", "Training seeds per cell (0..N-1); mean ± std over them.", type=int),
    _opt("--epochs", "Training epochs of every cell.", type=int),
    _opt("--batch-size", "Videos per training step.", type=int),
    _opt("--lr", f"Model learning rate of the cells [default: {TINY_FINE_TUNE_LR:g} for *-tiny "
                 f"models after a warm start, {TINY_WARM_START_LR:g} without, 1e-5 otherwise].",
         type=float),
    _opt("--meta-grad", "MOF meta-gradient estimator.",
         type=click.Choice(["exact", "finite-diff", "first-order"])),
    _opt("--frame-schedule", "MOF schedule: phase (Algorithm 1) or epoch (authors' trainer).",
         type=click.Choice(["phase", "epoch"])),
    _opt("--frame-lr", "beta: Adam learning rate of the learnable frames [default: 0.05 for "
                       "*-tiny models, the paper's 8e-4 otherwise].", type=float),
    _opt("--inner-lr", "alpha: inner SGD step of the frame level [default: --lr].", type=float),
    _opt("--eval-every", "Evaluate on the test split every N epochs while training (the "
                         "curves); 0: only at the end.", type=int),
    _opt("--select", "Checkpoint in the table: last, or best (chosen on the test split).",
         type=click.Choice(["last", "best"])),
    click.option("--train-arg", "train_arg", multiple=True, metavar="KEY=VALUE",
                 help="Any other mof-cli train setting for every cell, e.g. augment=none; "
                      "repeatable."),
    _opt("--warm-start-epochs", "Epochs of the shared warm start every cell fine-tunes from "
                                f"(0: none) [default: {TINY_WARM_START_EPOCHS} for *-tiny models, "
                                "0 otherwise].",
         type=int),
    _opt("--warm-start-frames", "Uniform frames per video of the warm start.", type=int),
    _opt("--warm-start-lr", "Learning rate of the warm start [default: "
                            f"{TINY_WARM_START_LR:g} for *-tiny models, --lr otherwise].",
         type=float),
    _opt("--pretrain-videos", "Videos of the generated pre-training corpus the warm start "
                              "trains on (synthetic only; 0: the train split) [default: "
                              f"{TINY_PRETRAIN_VIDEOS} for *-tiny models on synthetic, 0 "
                              "otherwise].", type=int),
    _opt("--stored-frames", "Frames per video in the shards [default: the most a cell needs].",
         type=int),
    _opt("--size", "Frame side of the shards in pixels [default: the model's input size].",
         type=int),
    _opt("--synth-train", "Training videos of the generated synthetic dataset.", type=int),
    _opt("--synth-test", "Test videos of the generated synthetic dataset.", type=int),
    _opt("--synth-test-captions", "Captions per test video of the generated synthetic "
                                  "dataset: the queries (training videos keep 5).", type=int),
    _opt("--jobs", "Cells trained at the same time, one process each.", type=int),
    _opt("--threads", "Torch threads per job.", type=int),
    _opt("--device", "Where to train and evaluate.", type=click.Choice(["auto", "cpu", "cuda"])),
    click.option("--report-only", is_flag=True,
                 help="Run nothing: aggregate the finished cells and write the results."),
    _opt("--diagnose/--no-diagnose", "Also measure the learned frames' drift, the "
                                     "meta-gradient and baselines tested on fewer frames "
                                     "(RESULTS/table4_diagnosis.md)."),
    _opt("--publish", "Also copy the small result files here (e.g. docs/results).",
         type=click.Path(file_okay=False)),
    click.option("--quiet", is_flag=True, help="No progress bars."),
]


def table4_options(command: Callable) -> Callable:
    """Decorate a Click command with every ``reproduce table4`` option."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def _key_values(items: tuple[str, ...], option: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.UsageError(f"{option} expects KEY=VALUE, got {item!r}")
        values[key.replace("-", "_") if option == "--train-arg" else key] = yaml.safe_load(value)
    return values


def config_from_options(options: dict[str, Any]) -> Table4Config:
    """The :class:`Table4Config` of a command line.

    Raises:
        click.UsageError: invalid settings (every problem listed) or a malformed KEY=VALUE.
    """
    options = dict(options)
    model_args = _key_values(options.pop("model_arg", ()), "--model-arg")
    train_args = _key_values(options.pop("train_arg", ()), "--train-arg")
    run = not options.pop("report_only", False)
    progress = not options.pop("quiet", False)
    try:
        return Table4Config(model_args=model_args, train_args=train_args, run=run,
                            progress=progress, **options)
    except ValueError as err:
        raise click.UsageError(str(err)) from err

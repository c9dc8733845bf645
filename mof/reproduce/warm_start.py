"""The warm start: one shared pre-training run that every cell of the grid fine-tunes from.

The paper's Table IV fine-tunes Frozen pre-trained on WebVid-2M and CC3M; no row of it starts
from random weights. A ``*-tiny`` model has no pre-trained weights, and from random weights it
first sits on a plateau where every video embedding is alike (the tiny ViT's ``[CLS]`` averages
64 patch tokens of mostly background, so the few object patches barely move it), the loss stays
at ``2 ln B`` and the text side, learning only from video differences, stays collapsed too. How
long that lasts is a matter of luck: in 6-epoch runs some seeds of a cell never left it and
others did after 2 epochs, so seed spread swamped every difference between frame settings
(``docs/results/table4-findings.md``).

The warm start plays the part of the pre-trained checkpoint: a baseline trained on
``warm_start_frames`` uniform frames for ``warm_start_epochs`` epochs at ``warm_start_lr``
(seed 0), once per grid; for ``*-tiny`` models on synthetic data it trains on a generated
corpus of other videos (``docs/laboratory.md``), and the cells fine-tune it at a lower lr.
Every cell and seed then starts from its last checkpoint (``mof-cli train --init-from``), so
cells differ only in what the paper varies: the frames seen in fine-tuning. Layout::

    WORK/<dataset>/<model>/warm-start/run/           mof-cli train's RUN_DIR
    WORK/<dataset>/<model>/warm-start/warm_start.json  written last: loss curve summary

With a pre-training corpus (``--pretrain-videos``, synthetic only) the warm start trains on the
corpus instead of the train split, in ``warm-start-pretrain-n<N>-seed<K>/``: one directory per
corpus, so each is reused as long as its settings stay the same.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from mof.reproduce.config import Table4Config
from mof.reproduce.paths import warm_start_dir
from mof.reproduce.runner import ShardPaths

__all__ = ["run_warm_start", "warm_start_summary"]


def _epoch_losses(run: Path) -> list[float]:
    """Mean training loss of every epoch, from the run's ``metrics.csv``."""
    import csv

    path = run / "metrics.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return [float(row["train_loss"]) for row in csv.DictReader(f) if row.get("train_loss")]


def run_warm_start(cfg: Table4Config, shards: ShardPaths) -> dict[str, Any] | None:
    """Train (or resume, or reuse) the warm start on the train shards, evaluate it on the test
    shards with its own frame count.

    Returns:
        ``warm_start.json``'s content: frames, epochs, per-epoch mean loss, the collapsed
        loss ``2 ln B`` for comparison, its test metrics, and wall time; ``None`` without a
        warm start.

    Raises:
        CellMismatch: the warm start on disk was made with other settings.
        Exception: whatever training raised (a grid without its warm start cannot go on).
    """
    if not cfg.resolved_warm_start_epochs:
        return None
    from mof.evaluate.evaluate import EvalConfig, evaluate
    from mof.reproduce.runner import _check_same, _write_json, resume_or_restart, torch_threads
    from mof.train import train as train_run

    where = warm_start_dir(cfg)
    run = where / "run"
    config = cfg.warm_start_config(shards.pretrain or shards.train, str(run), shards.test)
    done = where / "warm_start.json"
    if done.is_file():
        record = json.loads(done.read_text())
        _check_same(record["train_config"], config.to_dict(), where)
        return record
    where.mkdir(parents=True, exist_ok=True)
    resumable, _ = resume_or_restart(config, run)
    start = time.time()
    # A CPU run's numbers depend on its thread count (the order of float sums), so the warm
    # start takes a count fixed by the settings, not by the machine or OMP_NUM_THREADS: every
    # core the grid's jobs will use.
    threads = cfg.jobs * cfg.threads
    with torch_threads(threads):
        train_run(resumable, progress=cfg.progress)
    report = evaluate(EvalConfig(shards=shards.test, checkpoint=str(run / "checkpoints" / "last"),
                                 out=str(where), frames=cfg.warm_start_frames,
                                 device=cfg.device, progress=False))
    record = {"metrics": report["metrics"], "frames": cfg.warm_start_frames,
              "epochs": cfg.resolved_warm_start_epochs, "epoch_loss": _epoch_losses(run),
              "collapsed_loss": 2 * math.log(cfg.batch_size), "seconds": time.time() - start,
              "threads": threads, "train_config": config.to_dict()}
    _write_json(done, record)
    return record


def warm_start_summary(cfg: Table4Config) -> str:
    """One sentence for the report: what the cells started from."""
    if not cfg.resolved_warm_start_epochs:
        return ""
    path = warm_start_dir(cfg) / "warm_start.json"
    record = json.loads(path.read_text()) if path.is_file() else None
    epochs = cfg.resolved_warm_start_epochs
    text = (f" Every cell and seed fine-tunes one warm start (a {cfg.warm_start_frames}-frame "
            f"baseline trained {epochs} epoch{'s' if epochs > 1 else ''} from random weights, "
            "seed 0")
    if cfg.resolved_pretrain_videos:
        text += (f", on a generated pre-training corpus of {cfg.resolved_pretrain_videos} other "
                 "videos")
    text += "), as the paper's cells fine-tune a pre-trained Frozen"
    if record and record["epoch_loss"]:
        text += (f"; its mean training loss went from {record['epoch_loss'][0]:.2f} in the first "
                 f"epoch to {record['epoch_loss'][-1]:.2f} in the last (collapsed start: "
                 f"{record['collapsed_loss']:.2f})")
        t2v = record.get("metrics", {}).get("t2v", {})
        if "R@1" in t2v:
            text += f", and it scores t2v R@1 {t2v['R@1']:.1f} on its own {record['frames']} frames"
    return text + "."

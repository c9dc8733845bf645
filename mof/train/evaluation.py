"""Evaluation during training: the in-memory model on the test shards (:mod:`mof.evaluate`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mof.evaluate.evaluate import evaluate_model, flatten_metrics
from mof.models.contract import RetrievalModel
from pipeline.atomic import atomic_write_json

if TYPE_CHECKING:
    from mof.train.checkpoint import Progress
    from mof.train.config import TrainConfig

__all__ = ["evaluate_and_rank", "evaluate_run", "is_better"]

_LOWER_IS_BETTER = ("MedR", "MeanR")


def is_better(metric: str, new: float, old: float) -> bool:
    """Whether ``new`` improves on ``old`` (ranks: lower is better; recalls: higher)."""
    if metric.endswith(_LOWER_IS_BETTER):
        return new < old
    return new > old


def evaluate_run(model: RetrievalModel, shards: str, frames: int, batch_size: int,
                 report_path: Path, progress: bool) -> dict[str, float]:
    """Evaluate ``model`` on ``shards`` with U = ``frames`` uniform frames.

    The full report (every tie convention, timings, counts) is written to ``report_path``;
    the returned row holds the headline metrics (``t2v/R@1`` ...) and the test time.
    """
    result = evaluate_model(model, shards, frames, batch_size=batch_size, progress=progress)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(report_path, result.to_dict())
    row = flatten_metrics(result.metrics)
    row["test_time_s"] = result.timing["test_time_s"]
    return row


def evaluate_and_rank(model: RetrievalModel, cfg: TrainConfig, progress: Progress, out: Path,
                      progress_bar: bool) -> dict[str, float]:
    """Evaluate at ``progress.step`` (report in ``out/eval/``) and update the best ``--metric``.

    Returns:
        The metrics row plus ``is_best`` (1.0 when this evaluation is the best so far).

    Raises:
        KeyError: ``--metric`` is not among the evaluation's metrics.
    """
    p = progress
    metrics = evaluate_run(model, cfg.test, cfg.num_frames, cfg.eval_batch_size,
                           out / "eval" / f"step{p.step:07d}.json", progress=progress_bar)
    if cfg.metric not in metrics:
        raise KeyError(f"--metric {cfg.metric!r} is not among the evaluation metrics "
                       f"{sorted(metrics)}")
    value = metrics[cfg.metric]
    improved = p.best is None or is_better(cfg.metric, value, p.best)
    if improved:
        p.best, p.best_epoch = value, p.epoch
    metrics["is_best"] = float(improved)
    return metrics

"""Evaluation during training: the in-memory model on the test shards (``mof.evaluate``)."""

from __future__ import annotations

from pathlib import Path

from mof.evaluate import evaluate_model, flatten_metrics
from mof.models.base import RetrievalModel
from pipeline.index import atomic_write_json

__all__ = ["evaluate_run", "is_better"]

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

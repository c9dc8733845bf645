"""From finished cells on disk to the numbers of the table: mean ± std over seeds, comparisons.

Each finished seed contributes its ``metrics.json`` (text-to-video R@1/5/10, MedR, MeanR and
the test time of the evaluated checkpoint), its ``cell.json`` (training time) and its run's
``metrics.csv`` (the training curve). A difference between two cells is called a gain or a
loss only when it exceeds the *spread* ``sqrt(std_a² + std_b²)``: the seed-to-seed standard
deviation of the difference between one run of each cell.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mof.reproduce.config import Table4Config
from mof.reproduce.grid import Cell, equal_cost_baseline
from mof.reproduce.runner import cell_dir

__all__ = [
    "METRICS",
    "CellSummary",
    "Comparison",
    "SeedResult",
    "Stat",
    "compare",
    "load_results",
    "mean_std",
    "summarize",
]

#: Text-to-video metrics of the table, as keyed in ``metrics.json``.
METRICS = ("R@1", "R@5", "R@10", "MedR", "MeanR")


@dataclass
class SeedResult:
    """One finished cell and seed.

    Attributes:
        cell: the frame setting. seed: the training seed.
        metrics: text-to-video metrics of the evaluated checkpoint (``METRICS`` keys).
        train_s: training wall seconds (evaluations during training left out).
        test_s: test time in seconds: encoding every test video and query, and ranking.
        curve: the rows of the run's ``metrics.csv`` (one per evaluation), values as floats.
    """

    cell: Cell
    seed: int
    metrics: dict[str, float]
    train_s: float
    test_s: float
    curve: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (``ddof=1``; NaN for one value) of ``n`` values."""

    mean: float
    std: float
    n: int


def mean_std(values: list[float]) -> Stat:
    """The :class:`Stat` of ``values`` (at least one)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_std of no values")
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return Stat(mean, std, n)


@dataclass
class CellSummary:
    """Mean ± std over the finished seeds of one cell.

    Attributes:
        cell: the frame setting. seeds: the seeds found.
        metrics: a :class:`Stat` per ``METRICS`` key. train_s, test_s: seconds.
    """

    cell: Cell
    seeds: list[int]
    metrics: dict[str, Stat]
    train_s: Stat
    test_s: Stat


@dataclass
class Comparison:
    """A MOF cell against a baseline on one metric.

    Attributes:
        cell: the MOF cell. against: the baseline. kind: ``equal test cost`` (same U) or
            ``all R frames`` (the baseline trained and tested on R frames).
        metric: the metric compared. delta: MOF mean minus baseline mean.
        spread: ``sqrt(std_mof² + std_base²)``; NaN when a cell has one seed.
        verdict: ``gain``, ``loss``, ``within spread`` or ``no spread (one seed)``.
        paired: ``(seed, MOF − baseline)`` for every seed both cells finished. Cells of one
            seed share the initial weights and the batches, so these differences are free of
            the seed-to-seed spread the verdict is judged against.
    """

    cell: Cell
    against: Cell
    kind: str
    metric: str
    delta: float
    spread: float
    verdict: str
    paired: list[tuple[int, float]] = field(default_factory=list)


def _read_curve(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
    return rows


def load_results(cfg: Table4Config) -> list[SeedResult]:
    """Every finished cell and seed of ``cfg``'s grid (unfinished ones are left out)."""
    results = []
    for cell in cfg.cells:
        for seed in cfg.seed_list():
            where = cell_dir(cfg, cell, seed)
            if not (where / "cell.json").is_file():
                continue
            record = json.loads((where / "cell.json").read_text())
            report = json.loads((where / "metrics.json").read_text())
            t2v = report["metrics"]["t2v"]
            results.append(SeedResult(
                cell=cell, seed=seed, metrics={k: float(t2v[k]) for k in METRICS},
                train_s=float(record["train_s"]), test_s=float(report["timing"]["test_time_s"]),
                curve=_read_curve(where / "run" / "metrics.csv")))
    return results


def summarize(results: list[SeedResult], cells: list[Cell]) -> list[CellSummary]:
    """Mean ± std per cell, in the order of ``cells`` (cells without results left out)."""
    summaries = []
    for cell in cells:
        mine = [r for r in results if r.cell == cell]
        if not mine:
            continue
        summaries.append(CellSummary(
            cell=cell, seeds=[r.seed for r in mine],
            metrics={k: mean_std([r.metrics[k] for r in mine]) for k in METRICS},
            train_s=mean_std([r.train_s for r in mine]),
            test_s=mean_std([r.test_s for r in mine])))
    return summaries


def _verdict(delta: float, spread: float, higher_is_better: bool) -> str:
    if math.isnan(spread):
        return "no spread (one seed)"
    signed = delta if higher_is_better else -delta
    if signed > spread:
        return "gain"
    if signed < -spread:
        return "loss"
    return "within spread"


def compare(summaries: list[CellSummary], results: list[SeedResult] | None = None,
            metric: str = "R@1") -> list[Comparison]:
    """Each MOF cell against its equal-test-cost baseline (same U) and, where the grid has
    it, against the baseline on all R frames (what MOF tries to compress into U).

    Args:
        summaries: from :func:`summarize`.
        results: the per-seed results, for the paired differences (optional).
        metric: a ``METRICS`` key; for ``MedR``/``MeanR`` a negative delta is the improvement.
    """
    by_cell = {s.cell: s for s in summaries}
    values = {(r.cell, r.seed): r.metrics[metric] for r in results or []}
    higher = metric not in ("MedR", "MeanR")
    comparisons = []
    for summary in summaries:
        if not summary.cell.is_mof:
            continue
        for kind, base in (("equal test cost", equal_cost_baseline(summary.cell)),
                           ("all R frames", Cell(summary.cell.regular))):
            if base not in by_cell:
                continue
            a, b = summary.metrics[metric], by_cell[base].metrics[metric]
            delta = a.mean - b.mean
            spread = math.sqrt(a.std**2 + b.std**2)
            paired = [(seed, values[summary.cell, seed] - values[base, seed])
                      for seed in summary.seeds if (base, seed) in values
                      and (summary.cell, seed) in values]
            comparisons.append(Comparison(summary.cell, base, kind, metric, delta, spread,
                                          _verdict(delta, spread, higher), paired))
    return comparisons


def results_as_dict(results: list[SeedResult]) -> list[dict[str, Any]]:
    """Per-seed rows (for the CSV of raw values)."""
    return [{"frames": r.cell.frames, "seed": r.seed, **r.metrics, "train_s": r.train_s,
             "test_s": r.test_s} for r in results]

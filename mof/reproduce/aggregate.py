"""From finished cells on disk to the numbers of the table: mean ± std over seeds, comparisons.

Each finished seed contributes its ``metrics.json`` (text-to-video R@1/5/10, MedR, MeanR, the
test loss and the test time of the evaluated checkpoint), its ``queries.npz`` (per-query ranks
and losses), its ``cell.json`` (training time) and its run's ``metrics.csv`` (the training
curve). A MOF cell and its baseline of the same seed share initial weights, data order and
draws, so they are compared *paired*: per-seed differences with a 95 % t interval over seeds,
and a paired bootstrap interval over the test videos (:mod:`mof.stats`). A difference is a gain
or a loss only when its interval excludes zero: the seeds' interval where there are two seeds
or more, else the queries' (which then covers only the finite test set, and says so).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mof.evaluate.evaluate import QUERIES_NAME
from mof.reproduce.config import Table4Config
from mof.reproduce.grid import Cell, equal_cost_baseline
from mof.reproduce.paths import cell_dir
from mof.stats import Interval, paired_bootstrap, t_interval

__all__ = [
    "METRICS",
    "CellSummary",
    "Comparison",
    "SeedResult",
    "Stat",
    "compare",
    "compare_cells",
    "load_results",
    "mean_std",
    "summarize",
]

#: Text-to-video metrics of the table, as keyed in ``metrics.json`` (``loss``: its ``loss``).
METRICS = ("R@1", "R@5", "R@10", "MedR", "MeanR", "loss")
#: Metrics where a smaller value is better.
LOWER_IS_BETTER = ("MedR", "MeanR", "loss")
#: The companions of R@1 reported with each comparison: less noisy, every query counts.
COMPANIONS = ("MeanR", "loss")


@dataclass
class SeedResult:
    """One finished cell and seed.

    Attributes:
        cell: the frame setting. seed: the training seed.
        metrics: text-to-video metrics of the evaluated checkpoint (``METRICS`` keys).
        train_s: training wall seconds (evaluations during training left out).
        test_s: test time in seconds: encoding every test video and query, and ranking.
        curve: the rows of the run's ``metrics.csv`` (one per evaluation), values as floats.
        queries: ``queries.npz`` of the evaluation (``video``, ``t2v_ahead``, ``t2v_tied``,
            ``t2v_loss``), ``None`` for an evaluation that did not write it.
    """

    cell: Cell
    seed: int
    metrics: dict[str, float]
    train_s: float
    test_s: float
    curve: list[dict[str, float]] = field(default_factory=list)
    queries: dict[str, np.ndarray] | None = None

    @property
    def ranks(self) -> np.ndarray:
        """``(Q,)`` 1-based text-to-video ranks, ties counted against the query (pessimistic,
        the evaluation's headline convention)."""
        return self.queries["t2v_ahead"] + self.queries["t2v_tied"] + 1


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
        metric: the metric compared. delta: MOF mean minus baseline mean (over all seeds of
            each; equal to the mean paired difference when both have the same seeds).
        paired: ``(seed, MOF − baseline)`` for every seed both cells finished.
        seeds_ci: 95 % t interval of the mean paired difference (two seeds or more).
        queries_ci: paired bootstrap interval over the test videos (every paired seed has
            ``queries.npz``; not for MedR).
        verdict: ``gain``, ``loss`` or ``no difference`` (the interval includes zero), judged
            on ``seeds_ci``, else on ``queries_ci``; ``no interval`` when there is neither.
        companions: the same comparison on :data:`COMPANIONS` (for R@1 comparisons).
    """

    cell: Cell
    against: Cell
    kind: str
    metric: str
    delta: float
    paired: list[tuple[int, float]] = field(default_factory=list)
    seeds_ci: Interval | None = None
    queries_ci: Interval | None = None
    verdict: str = "no interval"
    companions: list[Comparison] = field(default_factory=list)

    @property
    def interval(self) -> Interval | None:
        """The interval the verdict is judged on."""
        return self.seeds_ci or self.queries_ci


def _read_curve(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
    return rows


def load_results(cfg: Table4Config) -> list[SeedResult]:
    """Every finished seed of every cell of ``cfg``'s grid, whichever call trained it.

    Seeds are found on disk, not taken from ``cfg.seeds``: a grid of 3 seeds whose key cells
    were given 5 by a second call (``--grid 4,8:4 --seeds 5``) reports 5 for those cells.
    Unfinished seeds (no ``cell.json``) are left out.
    """
    results = []
    for cell in cfg.cells:
        seeds = sorted(int(p.name[4:]) for p in cell_dir(cfg, cell, 0).parent.glob("seed*")
                       if p.name[4:].isdigit())
        for seed in seeds:
            where = cell_dir(cfg, cell, seed)
            if not (where / "cell.json").is_file():
                continue
            record = json.loads((where / "cell.json").read_text())
            report = json.loads((where / "metrics.json").read_text())
            t2v = {**report["metrics"]["t2v"], "loss": report.get("loss", {}).get("t2v", math.nan)}
            queries = where / QUERIES_NAME
            results.append(SeedResult(
                cell=cell, seed=seed, metrics={k: float(t2v[k]) for k in METRICS},
                train_s=float(record["train_s"]), test_s=float(report["timing"]["test_time_s"]),
                curve=_read_curve(where / "run" / "metrics.csv"),
                queries=dict(np.load(queries)) if queries.is_file() else None))
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


def _verdict(interval: Interval | None, lower_is_better: bool) -> str:
    if interval is None:
        return "no interval"
    if not interval.excludes_zero:
        return "no difference"
    better = interval.high < 0 if lower_is_better else interval.low > 0
    return "gain" if better else "loss"


def compare_cells(results: list[SeedResult], cell: Cell, base: Cell, kind: str,
                  metric: str) -> Comparison | None:
    """``cell`` against ``base`` on ``metric``, paired by seed (``None``: a side is missing).

    Only the seeds both cells have enter the difference and its intervals.
    """
    mine = {r.seed: r for r in results if r.cell == cell}
    theirs = {r.seed: r for r in results if r.cell == base}
    if not mine or not theirs:
        return None
    seeds = sorted(set(mine) & set(theirs))
    paired = [(s, mine[s].metrics[metric] - theirs[s].metrics[metric]) for s in seeds]
    # The mean over the shared seeds, the difference the intervals are about; a baseline with
    # more seeds than its MOF cell (5 against 3) must not move it. No shared seed: the means.
    delta = (sum(d for _, d in paired) / len(paired) if paired else
             sum(r.metrics[metric] for r in mine.values()) / len(mine)
             - sum(r.metrics[metric] for r in theirs.values()) / len(theirs))
    seeds_ci = t_interval([d for _, d in paired])
    queries_ci = None
    if seeds and metric != "MedR" and all(
            mine[s].queries is not None and theirs[s].queries is not None for s in seeds):
        queries_ci = paired_bootstrap(
            metric, mine[seeds[0]].queries["video"],
            [(mine[s].ranks, mine[s].queries["t2v_loss"]) for s in seeds],
            [(theirs[s].ranks, theirs[s].queries["t2v_loss"]) for s in seeds])
    interval = seeds_ci or queries_ci
    return Comparison(cell, base, kind, metric, delta, paired, seeds_ci, queries_ci,
                      _verdict(interval, metric in LOWER_IS_BETTER))


def compare(summaries: list[CellSummary], results: list[SeedResult],
            metric: str = "R@1") -> list[Comparison]:
    """Each MOF cell against its equal-test-cost baseline (same U) and, where the grid has
    it and R differs from U, against the baseline on all R frames (what MOF tries to compress
    into U).

    Args:
        summaries: from :func:`summarize` (their order is kept).
        results: the per-seed results.
        metric: a ``METRICS`` key; for ``MedR``/``MeanR``/``loss`` a negative delta is the
            improvement. R@1 comparisons carry their :data:`COMPANIONS`.
    """
    comparisons = []
    for summary in summaries:
        if not summary.cell.is_mof:
            continue
        baselines = [("equal test cost", equal_cost_baseline(summary.cell))]
        if summary.cell.regular != summary.cell.used:  # R = U (8 => 8): the same baseline
            baselines.append(("all R frames", Cell(summary.cell.regular)))
        for kind, base in baselines:
            found = compare_cells(results, summary.cell, base, kind, metric)
            if found is None:
                continue
            if metric == "R@1":
                found.companions = [
                    c for m in COMPANIONS
                    if (c := compare_cells(results, summary.cell, base, kind, m)) is not None
                    and not math.isnan(c.delta)]
            comparisons.append(found)
    return comparisons


def results_as_dict(results: list[SeedResult]) -> list[dict[str, Any]]:
    """Per-seed rows (for the CSV of raw values)."""
    return [{"frames": r.cell.frames, "seed": r.seed, **r.metrics, "train_s": r.train_s,
             "test_s": r.test_s} for r in results]

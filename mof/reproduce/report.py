"""Table IV as files: ``table4.md``, ``table4.csv``, ``table4_seeds.csv``, ``table4.json``.

The layout is the paper's (SF, R@1, R@5, R@10, MedR, train time, test time), each of ours as
mean ± std over seeds, plus the mean rank and the test loss, with the paper's numbers for the
same SF in adjacent columns; then each MOF cell against its baselines, paired, with intervals.
The plots live in :mod:`mof.reproduce.plots`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from mof.reproduce.aggregate import METRICS, CellSummary, Comparison, SeedResult, Stat
from mof.reproduce.grid import Cell, PaperRow

__all__ = [
    "format_seconds",
    "format_stat",
    "markdown_report",
    "seeds_csv",
    "summary_json",
    "table_csv",
    "verdict_lines",
]

_PAPER_KEYS = (("R@1", "r1"), ("R@5", "r5"), ("R@10", "r10"), ("MedR", "medr"))


def format_stat(stat: Stat, digits: int = 1) -> str:
    """``12.3 ± 0.4`` (``12.3`` alone for one seed; ``–`` when not measured)."""
    if math.isnan(stat.mean):
        return "–"
    if stat.n == 1 or math.isnan(stat.std):
        return f"{stat.mean:.{digits}f}"
    return f"{stat.mean:.{digits}f} ± {stat.std:.{digits}f}"


def _time_unit(seconds: float) -> tuple[str, float]:
    if seconds >= 3 * 3600:
        return "h", 3600.0
    if seconds >= 180:
        return "min", 60.0
    return "s", 1.0


def format_seconds(stat: Stat, unit: tuple[str, float] | None = None) -> str:
    """A duration as ``mean ± std unit`` in s, min or h (chosen from the mean unless given)."""
    name, scale = unit or _time_unit(stat.mean)
    value = stat.mean / scale
    digits = 2 if value < 10 else 1 if value < 100 else 0
    scaled = Stat(stat.mean / scale, stat.std / scale, stat.n)
    return f"{format_stat(scaled, digits)} {name}"


def method_name(model: str, cell: Cell) -> str:
    return f"{model} w/ MOF" if cell.is_mof else model


def _paper_cells(row: PaperRow | None) -> list[str]:
    if row is None:
        return ["–"] * 6
    return [f"{getattr(row, key):.1f}" for _, key in _PAPER_KEYS] + [
        f"{row.train_h:g} h", f"{row.test_s:g} s"]


def table_rows(summaries: list[CellSummary], model: str,
               paper: dict[str, PaperRow]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the markdown table (ours, then the paper's)."""
    header = ["Method", "SF", "Seeds", "R@1", "R@5", "R@10", "MedR", "MeanR", "Test loss",
              "Train time", "Test time",
              "Paper R@1", "Paper R@5", "Paper R@10", "Paper MedR", "Paper train", "Paper test"]
    train_unit = _time_unit(max((s.train_s.mean for s in summaries), default=0.0))
    test_unit = _time_unit(max((s.test_s.mean for s in summaries), default=0.0))
    rows = []
    ordered = sorted(summaries, key=lambda s: (s.cell.is_mof, s.cell.regular or 0, s.cell.used))
    for s in ordered:
        ours = [format_stat(s.metrics[k]) for k in ("R@1", "R@5", "R@10", "MedR", "MeanR")]
        ours.append(format_stat(s.metrics["loss"], 3))
        rows.append([method_name(model, s.cell), s.cell.label, str(len(s.seeds)), *ours,
                     format_seconds(s.train_s, train_unit), format_seconds(s.test_s, test_unit),
                     *_paper_cells(paper.get(s.cell.frames))])
    return header, rows


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _digits(metric: str) -> int:
    return 3 if metric == "loss" else 1


def _comparison_text(c: Comparison) -> str:
    """``ΔR@1 = +1.2, seeds [+0.3, +2.1], queries [+0.5, +1.9]``."""
    d = _digits(c.metric)
    parts = [f"Δ{c.metric} = {c.delta:+.{d}f}"]
    if c.seeds_ci is not None:
        parts.append(f"seeds [{c.seeds_ci.low:+.{d}f}, {c.seeds_ci.high:+.{d}f}]")
    if c.queries_ci is not None:
        parts.append(f"queries [{c.queries_ci.low:+.{d}f}, {c.queries_ci.high:+.{d}f}]")
    return ", ".join(parts)


def verdict_lines(comparisons: list[Comparison]) -> list[str]:
    """One bullet per comparison: the paired difference, its intervals, per-seed differences,
    the verdict, and the companions' differences with theirs."""
    lines = []
    for c in comparisons:
        basis = "" if c.interval is None else f" ({c.interval.kind})"
        paired = ""
        if len(c.paired) > 1:
            paired = "; per seed " + ", ".join(f"{d:+.1f}" for _, d in c.paired)
        lines.append(f"- MOF {c.cell.label} vs baseline {c.against.label} ({c.kind}): "
                     f"{_comparison_text(c)}: **{c.verdict}**{basis}{paired}")
        for m in c.companions:
            lines.append(f"  - {_comparison_text(m)}: {m.verdict}")
    return lines


def verdict_summary(comparisons: list[Comparison]) -> str:
    """A sentence counting gains/losses against the equal-test-cost baselines."""
    equal = [c for c in comparisons if c.kind == "equal test cost"]
    if not equal:
        return "No MOF cell has its equal-test-cost baseline in this grid."
    counts = {v: sum(c.verdict == v for c in equal) for v in
              ("gain", "loss", "no difference", "no interval")}
    parts = [f"{n} {v}" for v, n in counts.items() if n]
    metric = equal[0].metric
    return (f"Against the baseline with the same test cost, MOF's {metric} difference is: "
            f"{', '.join(parts)} (of {len(equal)} MOF cells).")


def markdown_report(summaries: list[CellSummary], comparisons: list[Comparison],
                    info: dict[str, Any], paper_name: str, paper: dict[str, PaperRow],
                    images: dict[str, str] | None = None) -> str:
    """The body of ``table4.md`` (and of the README block).

    Args:
        info: ``model``, ``dataset``, ``seeds``, ``host`` (dict), ``settings`` (a line),
            ``counts`` (test videos/queries), ``wall_s`` of the grid.
        images: ``{"table4": path, "curves": path}`` as they should be linked.
    """
    host = info["host"]
    gpu = f", GPU {host['gpu']}" if host.get("gpu") else ", no GPU"
    heading = (f"Table IV on `{info['dataset']}` with `{info['model']}`: text-to-video "
               f"retrieval on {info['counts']}; mean ± std over the seeds of each cell "
               "(a single number: one seed finished).")
    machine = (f"Machine: {host['cpu']}, {host['cores']} cores, {host['memory_gib']} GiB{gpu}; "
               f"torch {host['torch']}. {info['settings']}")
    note = (f"Paper columns: the paper's Table IV on {paper_name} (full-size Frozen, 8 GPUs, "
            "train time in hours, test time over the whole test set); the paper has no 4-frame "
            "baseline. Train time here is the wall time of training (evaluations left out), "
            "test time the time to encode every test video and query and rank them.")
    rule = ("**MOF against its baselines**, paired by seed (same warm start, data order and "
            "draws). Δ is MOF minus baseline; *seeds*: 95 % t interval of the mean per-seed "
            "difference; *queries*: 95 % paired bootstrap interval over the test videos (2000 "
            "resamples; it covers the test set's finiteness, not training randomness). A gain or "
            "a loss only when the interval named in brackets excludes zero (seeds where there "
            "are two or more). Below each: the mean rank and the test loss (lower is better), "
            "less noisy companions of R@1.")
    lines = [heading, machine, "", _markdown_table(*table_rows(summaries, info["model"], paper)),
             "", note, "", rule, "", *verdict_lines(comparisons), "",
             verdict_summary(comparisons)]
    if images:
        lines += ["", f"![R@1 against test time per frame setting]({images['table4']})",
                  "", f"![training curves of every cell]({images['curves']})"]
    return "\n".join(lines) + "\n"


def table_csv(summaries: list[CellSummary], model: str, paper_name: str,
              paper: dict[str, PaperRow]) -> str:
    """One row per cell: means, stds and seed count, then the paper's numbers."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    ours = [f"{k}_{s}" for k in (*METRICS, "train_s", "test_s") for s in ("mean", "std")]
    writer.writerow(["method", "sf", "frames", "seeds", *ours, "paper_dataset",
                     *[f"paper_{k}" for k, _ in _PAPER_KEYS], "paper_train_h", "paper_test_s"])
    for s in summaries:
        values = [s.metrics[k] for k in METRICS] + [s.train_s, s.test_s]
        row = paper.get(s.cell.frames)
        ref = ([getattr(row, key) for _, key in _PAPER_KEYS] + [row.train_h, row.test_s]
               if row else [""] * 6)
        writer.writerow([method_name(model, s.cell), s.cell.label, s.cell.frames,
                         len(s.seeds), *[_num(v) for st in values for v in (st.mean, st.std)],
                         paper_name, *ref])
    return buf.getvalue()


def _num(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6g}"


def seeds_csv(results: list[SeedResult]) -> str:
    """The raw values: one row per cell and seed."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["frames", "seed", *METRICS, "train_s", "test_s"])
    for r in results:
        writer.writerow([r.cell.frames, r.seed, *[_num(r.metrics[k]) for k in METRICS],
                         _num(r.train_s), _num(r.test_s)])
    return buf.getvalue()


def summary_json(summaries: list[CellSummary], comparisons: list[Comparison],
                 info: dict[str, Any], config: dict[str, Any]) -> str:
    """``table4.json``: the settings, the machine, [mean, std] per metric and the verdicts."""
    cells = [{"frames": s.cell.frames, "seeds": s.seeds,
              **{k: [v.mean, _or_none(v.std)] for k, v in s.metrics.items()},
              "train_s": [s.train_s.mean, _or_none(s.train_s.std)],
              "test_s": [s.test_s.mean, _or_none(s.test_s.std)]} for s in summaries]
    verdicts = [_comparison_json(c) for c in comparisons]
    data = {"config": config, "info": info, "cells": cells, "comparisons": verdicts}
    return json.dumps(data, indent=2) + "\n"


def _comparison_json(c: Comparison) -> dict[str, Any]:
    def interval(i):
        return None if i is None else {"mean": i.mean, "low": i.low, "high": i.high, "n": i.n}

    return {"frames": c.cell.frames, "against": c.against.frames, "kind": c.kind,
            "metric": c.metric, "delta": _or_none(c.delta), "paired": c.paired,
            "seeds_ci": interval(c.seeds_ci), "queries_ci": interval(c.queries_ci),
            "verdict": c.verdict, "companions": [_comparison_json(m) for m in c.companions]}


def _or_none(value: float) -> float | None:
    return None if math.isnan(value) else value

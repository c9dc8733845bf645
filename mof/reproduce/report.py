"""Table IV as files: ``table4.md``, ``table4.csv``, ``table4_seeds.csv``, ``table4.json``, and the
README block between ``<!-- table4:begin -->`` and ``<!-- table4:end -->``.

The layout is the paper's (SF, R@1, R@5, R@10, MedR, train time, test time), each of ours as
mean ± std over seeds, with the paper's numbers for the same SF in adjacent columns. The
plots live in :mod:`mof.reproduce.plots`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from mof.reproduce.aggregate import METRICS, CellSummary, Comparison, SeedResult, Stat
from mof.reproduce.grid import Cell, PaperRow

__all__ = [
    "README_BEGIN",
    "README_END",
    "format_seconds",
    "format_stat",
    "markdown_report",
    "rewrite_readme",
    "seeds_csv",
    "summary_json",
    "table_csv",
    "verdict_lines",
]

README_BEGIN = "<!-- table4:begin -->"
README_END = "<!-- table4:end -->"
_PAPER_KEYS = (("R@1", "r1"), ("R@5", "r5"), ("R@10", "r10"), ("MedR", "medr"))


def format_stat(stat: Stat, digits: int = 1) -> str:
    """``12.3 ± 0.4`` (``12.3`` alone for one seed)."""
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
    header = ["Method", "SF", "R@1", "R@5", "R@10", "MedR", "Train time", "Test time",
              "Paper R@1", "Paper R@5", "Paper R@10", "Paper MedR", "Paper train", "Paper test"]
    train_unit = _time_unit(max((s.train_s.mean for s in summaries), default=0.0))
    test_unit = _time_unit(max((s.test_s.mean for s in summaries), default=0.0))
    rows = []
    ordered = sorted(summaries, key=lambda s: (s.cell.is_mof, s.cell.regular or 0, s.cell.used))
    for s in ordered:
        ours = [format_stat(s.metrics[k]) for k in ("R@1", "R@5", "R@10", "MedR")]
        rows.append([method_name(model, s.cell), s.cell.label, *ours,
                     format_seconds(s.train_s, train_unit), format_seconds(s.test_s, test_unit),
                     *_paper_cells(paper.get(s.cell.frames))])
    return header, rows


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def verdict_lines(comparisons: list[Comparison]) -> list[str]:
    """One bullet per comparison: delta, spread and verdict."""
    lines = []
    for c in comparisons:
        spread = "n/a" if math.isnan(c.spread) else f"{c.spread:.1f}"
        paired = ""
        if len(c.paired) > 1:
            paired = "; per seed " + ", ".join(f"{d:+.1f}" for _, d in c.paired)
        lines.append(f"- MOF {c.cell.label} vs baseline {c.against.label} ({c.kind}): "
                     f"Δ{c.metric} = {c.delta:+.1f}, spread {spread}: **{c.verdict}**{paired}")
    return lines


def verdict_summary(comparisons: list[Comparison]) -> str:
    """A sentence counting gains/losses against the equal-test-cost baselines."""
    equal = [c for c in comparisons if c.kind == "equal test cost"]
    if not equal:
        return "No MOF cell has its equal-test-cost baseline in this grid."
    counts = {v: sum(c.verdict == v for c in equal) for v in
              ("gain", "loss", "within spread", "no spread (one seed)")}
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
               f"retrieval on {info['counts']}; mean ± std over {info['seeds']} seeds per cell "
               "(a single number: one seed finished).")
    machine = (f"Machine: {host['cpu']}, {host['cores']} cores, {host['memory_gib']} GiB{gpu}; "
               f"torch {host['torch']}. {info['settings']}")
    note = (f"Paper columns: the paper's Table IV on {paper_name} (full-size Frozen, 8 GPUs, "
            "train time in hours, test time over the whole test set); the paper has no 4-frame "
            "baseline. Train time here is the wall time of training (evaluations left out), "
            "test time the time to encode every test video and query and rank them.")
    rule = ("**MOF against its baselines** (R@1; a gain or loss only when |Δ| exceeds the "
            "spread sqrt(std_MOF² + std_baseline²)):")
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
    verdicts = [{"frames": c.cell.frames, "against": c.against.frames, "kind": c.kind,
                 "metric": c.metric, "delta": c.delta, "spread": _or_none(c.spread),
                 "verdict": c.verdict, "paired": c.paired} for c in comparisons]
    data = {"config": config, "info": info, "cells": cells, "comparisons": verdicts}
    return json.dumps(data, indent=2) + "\n"


def _or_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def relative_link(target: Path, readme: Path) -> str:
    """``target`` as a link from ``readme``'s directory (POSIX separators)."""
    return Path(os.path.relpath(target.resolve(), readme.resolve().parent)).as_posix()


def rewrite_readme(readme: Path, body: str) -> None:
    """Replace the text between the table4 markers of ``readme`` (atomically).

    Raises:
        ValueError: the markers are missing, repeated or out of order.
    """
    from pipeline.atomic import atomic_write_bytes

    text = readme.read_text()
    pattern = re.compile(re.escape(README_BEGIN) + r".*?" + re.escape(README_END), re.DOTALL)
    if text.count(README_BEGIN) != 1 or text.count(README_END) != 1 or not pattern.search(text):
        raise ValueError(f"{readme}: expected one '{README_BEGIN}' followed by one "
                         f"'{README_END}' line")
    block = f"{README_BEGIN}\n{body.rstrip()}\n{README_END}"
    atomic_write_bytes(readme, pattern.sub(lambda _: block, text).encode())

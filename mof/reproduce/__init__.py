"""``mof-cli reproduce table4``: the grid of the paper's Table IV, end to end, reusing work.

:func:`reproduce_table4` prepares the data once (synth when needed, then shards holding the
most frames any cell needs), trains and evaluates every cell and seed that is not finished
(:mod:`mof.reproduce.runner`), aggregates mean ± std over seeds
(:mod:`mof.reproduce.aggregate`) and writes the table, the plots and optionally the README
block (:mod:`mof.reproduce.report`, :mod:`mof.reproduce.plots`). See ``docs/table4.md``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mof.reproduce.config import Table4Config
from mof.reproduce.grid import DEFAULT_GRID, PAPER_TABLE4, Cell, parse_grid

__all__ = [
    "DEFAULT_GRID",
    "PAPER_TABLE4",
    "Cell",
    "Table4Config",
    "Table4Summary",
    "parse_grid",
    "reproduce_table4",
    "write_report",
]

_PUBLISHED = ("table4.md", "table4.csv", "table4_seeds.csv", "table4.png", "curves.png")
_PUBLISH_LIMIT = 1 << 20  # small files only go next to the docs


@dataclass
class Table4Summary:
    """What one call did and where the results are.

    Attributes:
        outcomes: ``{status: count}`` over cells and seeds (trained, resumed, skipped, failed).
        failed: ``"frames seed k: error"`` per failed cell.
        finished: cells and seeds with results. expected: cells × seeds of the grid.
        files: the files written. seconds: wall time of the call.
    """

    outcomes: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    finished: int = 0
    expected: int = 0
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def format(self) -> str:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(self.outcomes.items())) or "none run"
        lines = [(f"cells x seeds: {self.finished}/{self.expected} finished ({counts}); "
                  f"{self.seconds:.0f} s")]
        lines += [f"  failed: {f}" for f in self.failed]
        lines += [f"  wrote {f}" for f in self.files]
        return "\n".join(lines)


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _settings_line(cfg: Table4Config) -> str:
    mof = f"MOF: --meta-grad {cfg.meta_grad}, --frame-schedule {cfg.frame_schedule}, " \
          f"β = {cfg.frame_lr:g}" + (f", α = {cfg.inner_lr:g}" if cfg.inner_lr else "")
    extra = "".join(f", {k} = {v}" for k, v in sorted(cfg.resolved_train_args.items()))
    extra += "".join(f", model {k} = {v}" for k, v in sorted(cfg.resolved_model_args.items()))
    epochs = f"{cfg.epochs} epoch" + ("s" if cfg.epochs > 1 else "")
    return (f"Every cell: {epochs}, batch {cfg.batch_size}, lr {cfg.resolved_lr:g}"
            f"{extra}; {mof}; evaluated checkpoint: {cfg.select}.")


def write_report(cfg: Table4Config, run_info: dict[str, Any] | None = None) -> list[str]:
    """Aggregate the finished cells of ``cfg`` and write every result file.

    Returns:
        The paths written (empty when no cell has finished).
    """
    from mof.reproduce.aggregate import compare, load_results, summarize
    from mof.reproduce.grid import paper_rows
    from mof.reproduce.plots import plot_curves, plot_tradeoff
    from mof.reproduce.report import (
        markdown_report,
        relative_link,
        rewrite_readme,
        seeds_csv,
        table_csv,
    )
    from pipeline.index import atomic_write_bytes

    results = load_results(cfg)
    if not results:
        return []
    summaries = summarize(results, cfg.cells)
    comparisons = compare(summaries)
    paper_name, paper = paper_rows(cfg.dataset)
    out = Path(cfg.results)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{cfg.model} on {cfg.dataset}"
    plot_tradeoff(summaries, paper, paper_name, f"ours: {title}", out / "table4.png")
    plot_curves(results, cfg.cells, title, out / "curves.png")
    cell_json = json.loads((_first_cell_json(cfg, results[0])).read_text())
    metrics = json.loads((_first_cell_json(cfg, results[0]).parent / "metrics.json").read_text())
    counts = metrics["counts"]
    info = {"model": cfg.model, "dataset": cfg.dataset, "seeds": cfg.seeds,
            "host": cell_json["host"], "settings": _settings_line(cfg),
            "counts": f"{counts['videos']} test videos, {counts['queries']} queries"}
    images = {"table4": "table4.png", "curves": "curves.png"}
    files = {"table4.md": "# Table IV reproduction\n\n"
                          + markdown_report(summaries, comparisons, info, paper_name, paper, images),
             "table4.csv": table_csv(summaries, cfg.model, paper_name, paper),
             "table4_seeds.csv": seeds_csv(results)}
    for name, text in files.items():
        atomic_write_bytes(out / name, text.encode())
    summary = {"config": cfg.to_dict(), "host": cell_json["host"], "run": run_info or {},
               "cells": [{"frames": s.cell.frames, "seeds": s.seeds,
                          **{k: [v.mean, v.std] for k, v in s.metrics.items()},
                          "train_s": [s.train_s.mean, s.train_s.std],
                          "test_s": [s.test_s.mean, s.test_s.std]} for s in summaries]}
    atomic_write_bytes(out / "table4.json", (json.dumps(summary, indent=2) + "\n").encode())
    written = [str(out / n) for n in (*files, "table4.json", "table4.png", "curves.png")]
    shown = out
    if cfg.publish:
        shown = Path(cfg.publish)
        shown.mkdir(parents=True, exist_ok=True)
        for name in _PUBLISHED:
            if (out / name).stat().st_size <= _PUBLISH_LIMIT:
                shutil.copyfile(out / name, shown / name)
                written.append(str(shown / name))
    if cfg.readme:
        readme = Path(cfg.readme)
        links = {k: relative_link(shown / f"{k}.png", readme) for k in ("table4", "curves")}
        rewrite_readme(readme, markdown_report(summaries, comparisons, info, paper_name, paper,
                                               links))
        written.append(str(readme))
    return written


def _first_cell_json(cfg: Table4Config, result) -> Path:
    from mof.reproduce.runner import cell_dir

    return cell_dir(cfg, result.cell, result.seed) / "cell.json"


def reproduce_table4(cfg: Table4Config) -> Table4Summary:
    """Run what is missing of the grid, then write the results (see the module docstring).

    Raises:
        ValueError, RuntimeError: data preparation failed (bad manifest, settings that differ
            from the existing data, videos that could not be generated). A failing *cell* does
            not raise: it is reported in the summary and the others go on.
    """
    from tqdm import tqdm

    from mof.reproduce.runner import model_dir, prepare_data, run_grid

    start = time.time()
    summary = Table4Summary(expected=len(cfg.cells) * cfg.seeds)
    run_info: dict[str, Any] = {"started": start, "load_average_start": _load_average()}
    if cfg.run:
        from pipeline.index import atomic_write_json

        base = model_dir(cfg)
        base.mkdir(parents=True, exist_ok=True)
        atomic_write_json(base / "table4_config.json", cfg.to_dict())
        shards = prepare_data(cfg)
        bar = tqdm(total=summary.expected, desc="cells", unit="cell", disable=not cfg.progress)

        def on_done(outcome) -> None:
            bar.update()
            bar.set_postfix_str(f"{outcome.frames} seed {outcome.seed}: {outcome.status}")

        outcomes = run_grid(cfg, shards, on_done)
        bar.close()
        for o in outcomes:
            summary.outcomes[o.status] = summary.outcomes.get(o.status, 0) + 1
            if o.status == "failed":
                summary.failed.append(f"{o.frames} seed {o.seed}: {o.error}")
    run_info.update(wall_s=time.time() - start, load_average_end=_load_average())
    summary.files = write_report(cfg, run_info)
    if cfg.diagnose and summary.files:
        from mof.reproduce.diagnose import diagnose
        from mof.reproduce.runner import shard_paths
        from pipeline.index import atomic_write_bytes

        path = Path(cfg.results) / "table4_diagnosis.md"
        atomic_write_bytes(path, diagnose(cfg, shard_paths(cfg).test).encode())
        summary.files.append(str(path))
    from mof.reproduce.aggregate import load_results

    summary.finished = len(load_results(cfg))
    summary.seconds = time.time() - start
    return summary

"""Write every result file of the grid from the finished cells on disk (also ``--report-only``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mof.reproduce.config import Table4Config

__all__ = ["write_report"]

_PUBLISHED = ("table4.md", "table4.csv", "table4_seeds.csv", "table4.png", "curves.png")
_PUBLISH_LIMIT = 1 << 20  # only small files go next to the docs


def _settings_line(cfg: Table4Config) -> str:
    mof = (f"MOF: --meta-grad {cfg.meta_grad}, --frame-schedule {cfg.frame_schedule}, "
           f"β = {cfg.resolved_frame_lr:g}" + (f", α = {cfg.inner_lr:g}" if cfg.inner_lr else ""))
    extra = "".join(f", {k} = {v}" for k, v in sorted(cfg.resolved_train_args.items()))
    extra += "".join(f", model {k} = {v}" for k, v in sorted(cfg.resolved_model_args.items()))
    epochs = f"{cfg.epochs} epoch" + ("s" if cfg.epochs > 1 else "")
    from mof.reproduce.warm_start import warm_start_summary

    return (f"Every cell: {epochs}, batch {cfg.batch_size}, lr {cfg.resolved_lr:g}"
            f"{extra}; {mof}; evaluated checkpoint: {cfg.select}.{warm_start_summary(cfg)}")


def _runs_line(cfg: Table4Config) -> str:
    """Wall time of the calls that trained cells, and the machine's load meanwhile."""
    from mof.reproduce.paths import model_dir

    path = model_dir(cfg) / "table4_runs.json"
    runs = [r for r in (json.loads(path.read_text()) if path.is_file() else [])
            if r.get("outcomes", {}).get("trained") or r.get("outcomes", {}).get("resumed")]
    if not runs:
        return ""
    wall = sum(r["wall_s"] for r in runs) / 60
    loads = [r for r in runs if r.get("load_mean") is not None]
    load = ""
    if loads:
        mean = sum(r["load_mean"] * r["wall_s"] for r in loads) / sum(r["wall_s"] for r in loads)
        load = (f"; 1-minute load average meanwhile {mean:.1f} on average, at most "
                f"{max(r['load_max'] for r in loads):.1f}")
    calls = f" over {len(runs)} calls" if len(runs) > 1 else ""
    return f" Grid wall time {wall:.0f} min{calls}{load}."


def _info(cfg: Table4Config, first_cell: Path) -> dict[str, Any]:
    record = json.loads((first_cell / "cell.json").read_text())
    counts = json.loads((first_cell / "metrics.json").read_text())["counts"]
    return {"model": cfg.model, "dataset": cfg.dataset, "seeds": cfg.seeds,
            "host": record["host"], "settings": _settings_line(cfg) + _runs_line(cfg),
            "counts": f"{counts['videos']} test videos, {counts['queries']} queries"}


def write_report(cfg: Table4Config) -> list[str]:
    """Aggregate the finished cells of ``cfg`` and write the tables and plots (and copy the
    small ones to ``cfg.publish``).

    Returns:
        The paths written (empty when no cell has finished).
    """
    from mof.reproduce.aggregate import compare, load_results, summarize
    from mof.reproduce.grid import paper_rows
    from mof.reproduce.paths import cell_dir
    from mof.reproduce.plots import plot_curves, plot_tradeoff
    from mof.reproduce.report import (
        markdown_report,
        seeds_csv,
        summary_json,
        table_csv,
    )
    from pipeline.atomic import atomic_write_bytes

    results = load_results(cfg)
    if not results:
        return []
    summaries = summarize(results, cfg.cells)
    comparisons = compare(summaries, results)
    paper_name, paper = paper_rows(cfg.dataset)
    out = Path(cfg.results)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{cfg.model} on {cfg.dataset}"
    plot_tradeoff(summaries, paper, paper_name, f"ours: {title}", out / "table4.png")
    plot_curves(results, cfg.cells, title, out / "curves.png")
    info = _info(cfg, cell_dir(cfg, results[0].cell, results[0].seed))
    body = markdown_report(summaries, comparisons, info, paper_name, paper,
                           {"table4": "table4.png", "curves": "curves.png"})
    files = {"table4.md": "# Table IV reproduction\n\n" + body,
             "table4.csv": table_csv(summaries, cfg.model, paper_name, paper),
             "table4_seeds.csv": seeds_csv(results),
             "table4.json": summary_json(summaries, comparisons, info, cfg.to_dict())}
    for name, text in files.items():
        atomic_write_bytes(out / name, text.encode())
    written = [str(out / n) for n in (*files, "table4.png", "curves.png")]
    if cfg.publish:
        shown = Path(cfg.publish)
        shown.mkdir(parents=True, exist_ok=True)
        for name in _PUBLISHED:
            if (out / name).stat().st_size <= _PUBLISH_LIMIT:
                shutil.copyfile(out / name, shown / name)
                written.append(str(shown / name))
    return written

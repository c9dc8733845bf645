"""``mof-cli reproduce table4``: the grid of the paper's Table IV, end to end, reusing work.

:func:`reproduce_table4` prepares the data once (synth when needed, then shards holding the
most frames any cell needs), trains and evaluates every cell and seed that is not finished
(:mod:`mof.reproduce.runner`), aggregates mean ± std over seeds
(:mod:`mof.reproduce.aggregate`), compares each MOF cell with its baselines paired by seed
(:mod:`mof.stats`) and writes the table and the plots (:mod:`mof.reproduce.outputs`,
:mod:`mof.reproduce.report`, :mod:`mof.reproduce.plots`). See ``docs/cli.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mof.reproduce.config import Table4Config

__all__ = ["Table4Summary", "reproduce_table4"]


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


class _LoadSampler(threading.Thread):
    """Samples the 1-minute load average while the grid runs (the machine may be shared)."""

    def __init__(self, every_s: float = 15.0):
        super().__init__(daemon=True)
        self.every_s = every_s
        self.samples: list[float] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                self.samples.append(os.getloadavg()[0])
            if self._stop_event.wait(self.every_s):
                return

    def stop(self) -> dict[str, float | None]:
        self._stop_event.set()
        self.join()
        if not self.samples:
            return {"load_mean": None, "load_max": None}
        return {"load_mean": sum(self.samples) / len(self.samples), "load_max": max(self.samples)}


def _record_run(cfg: Table4Config, record: dict[str, Any]) -> None:
    """Append this call's wall time and load to ``WORK/<dataset>/<model>/table4_runs.json``."""
    from mof.reproduce.paths import model_dir
    from pipeline.atomic import atomic_write_json

    path = model_dir(cfg) / "table4_runs.json"
    runs = json.loads(path.read_text()) if path.is_file() else []
    atomic_write_json(path, [*runs, record])


def reproduce_table4(cfg: Table4Config) -> Table4Summary:
    """Run what is missing of the grid, then write the results (see the module docstring).

    Raises:
        ValueError, RuntimeError: data preparation failed (bad manifest, settings that differ
            from the existing data, videos that could not be generated). A failing *cell* does
            not raise: it is reported in the summary and the others go on.
    """
    from tqdm import tqdm

    from mof.reproduce.paths import model_dir
    from mof.reproduce.runner import prepare_data, run_grid

    start = time.time()
    summary = Table4Summary(expected=len(cfg.cells) * cfg.seeds)
    if cfg.run:
        from pipeline.atomic import atomic_write_json

        base = model_dir(cfg)
        base.mkdir(parents=True, exist_ok=True)
        atomic_write_json(base / "table4_config.json", cfg.to_dict())
        shards = prepare_data(cfg)
        from mof.reproduce.warm_start import run_warm_start

        run_warm_start(cfg, shards)
        bar = tqdm(total=summary.expected, desc="cells", unit="cell", disable=not cfg.progress)

        def on_done(outcome) -> None:
            bar.update()
            bar.set_postfix_str(f"{outcome.frames} seed {outcome.seed}: {outcome.status}")

        sampler = _LoadSampler()
        sampler.start()
        outcomes = run_grid(cfg, shards, on_done)
        bar.close()
        for o in outcomes:
            summary.outcomes[o.status] = summary.outcomes.get(o.status, 0) + 1
            if o.status == "failed":
                summary.failed.append(f"{o.frames} seed {o.seed}: {o.error}")
        _record_run(cfg, {"started": start, "wall_s": time.time() - start,
                          "outcomes": summary.outcomes, **sampler.stop()})
    from mof.reproduce.outputs import write_report

    summary.files = write_report(cfg)
    if cfg.diagnose and summary.files:
        from mof.reproduce.diagnose import diagnose
        from mof.reproduce.runner import shard_paths
        from pipeline.atomic import atomic_write_bytes

        report = diagnose(cfg, shard_paths(cfg).test).encode()
        for folder in (cfg.results, cfg.publish) if cfg.publish else (cfg.results,):
            path = Path(folder) / "table4_diagnosis.md"
            atomic_write_bytes(path, report)
            summary.files.append(str(path))
    from mof.reproduce.aggregate import load_results

    summary.finished = len(load_results(cfg))
    summary.seconds = time.time() - start
    return summary

"""What a run reports: ``metrics.csv`` (one row per evaluation), TensorBoard scalars, a summary.

Only rank 0 writes. On resume, rows and events logged after the checkpoint being resumed are
dropped, so the files read as if the run had never stopped.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.atomic import atomic_write_text

if TYPE_CHECKING:
    from mof.train.checkpoint import Progress
    from mof.train.config import TrainConfig

__all__ = ["RunLog", "format_summary", "run_summary"]


class RunLog:
    """metrics.csv and TensorBoard events of a run directory.

    Args:
        out: the run directory.
        enabled: ``False`` on ranks other than 0 (every call is then a no-op).
        resume_step: drop rows and events past this step (the checkpoint resumed from).
    """

    def __init__(self, out: Path, enabled: bool, resume_step: int | None = None):
        self.path = Path(out) / "metrics.csv"
        self.enabled = enabled
        self._writer = None
        if not enabled:
            return
        from torch.utils.tensorboard import (
            SummaryWriter,  # heavy: only where it is used
        )

        self._writer = SummaryWriter(str(Path(out) / "tb"), purge_step=resume_step)
        self.rows: list[dict[str, Any]] = []
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="") as fh:
                self.rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
            self._rewrite()

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self._writer is not None:
            for tag, value in values.items():
                self._writer.add_scalar(tag, value, step)

    def add_row(self, row: dict[str, Any]) -> None:
        """Append one evaluation's row (columns grow if a later row has new keys)."""
        if not self.enabled:
            return
        self.rows.append(row)
        self._rewrite()

    def _rewrite(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buf.getvalue())

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def format_summary(summary: dict[str, Any]) -> str:
    """A few aligned ``name: value`` lines for the end of a run."""
    width = max(len(k) for k in summary)
    lines = []
    for key, value in summary.items():
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"  {key:<{width}}  {text}")
    return "\n".join(lines)


def run_summary(out: Path, cfg: TrainConfig, progress: Progress, last_metrics: dict[str, float],
                seconds: float) -> dict[str, Any]:
    """What the end of a run reports: mode, epochs, steps, wall time, the best and last metrics."""
    p = progress
    summary: dict[str, Any] = {
        "run": str(out), "mode": f"MOF {cfg.frames}" if cfg.mof else
        f"baseline {cfg.num_frames} frames", "epochs": p.epoch, "steps": p.step,
        "wall time (s)": seconds,
    }
    if p.best is not None:
        summary[f"best {cfg.metric}"] = p.best
        summary["best epoch"] = p.best_epoch
    summary.update({k: v for k, v in last_metrics.items() if k != "is_best"})
    return summary

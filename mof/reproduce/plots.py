"""The figures: ``table4.png`` (R@1 against test time per frame setting, the paper's Fig. 2,
ours beside the paper's) and ``curves.png`` (training loss and test R@1 of every cell)."""

from __future__ import annotations

import math
from pathlib import Path

from mof.reproduce.aggregate import CellSummary, SeedResult, mean_std
from mof.reproduce.grid import Cell, PaperRow, parse_grid

__all__ = ["plot_curves", "plot_tradeoff"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    return plt


def _colour(used: int, palette: dict[int, tuple]) -> tuple:
    # One colour per U: a MOF cell and its equal-test-cost baseline share it.
    if used not in palette:
        import matplotlib

        palette[used] = matplotlib.colormaps["tab10"](len(palette) % 10)
    return palette[used]


def _draw(ax, points: list[tuple[Cell, float, float, float, float]], palette, title: str,
          xlabel: str) -> None:
    """``points``: (cell, test time, its std, R@1, its std); baselines joined by a line."""
    base = sorted((p for p in points if not p[0].is_mof), key=lambda p: p[0].used)
    if base:
        ax.plot([p[1] for p in base], [p[3] for p in base], color="0.6", lw=1, zorder=1)
    for cell, x, xerr, y, yerr in points:
        ax.errorbar(x, y, xerr=None if math.isnan(xerr) else xerr,
                    yerr=None if math.isnan(yerr) else yerr, fmt="^" if cell.is_mof else "o",
                    color=_colour(cell.used, palette), ms=7, capsize=3, zorder=2)
        ax.annotate(cell.label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("text-to-video R@1 (%)")
    ax.grid(alpha=0.3)


def plot_tradeoff(summaries: list[CellSummary], paper: dict[str, PaperRow], paper_name: str,
                  title: str, path: Path) -> None:
    """R@1 against test time: ours (mean ± std over seeds) and the paper's, side by side.

    Circles are baselines (joined in frame order), triangles MOF; a colour per U.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    palette: dict[int, tuple] = {}
    ours = [(s.cell, s.test_s.mean, s.test_s.std, s.metrics["R@1"].mean, s.metrics["R@1"].std)
            for s in summaries]
    _draw(axes[0], ours, palette, title, "test time (s)")
    theirs = [(parse_grid(frames)[0], row.test_s, math.nan, row.r1, math.nan)
              for frames, row in paper.items()]
    _draw(axes[1], theirs, palette, f"paper, Table IV, {paper_name}", "test time (s)")
    handles = [plt.Line2D([], [], marker="o", ls="", color="0.3", label="baseline (U frames)"),
               plt.Line2D([], [], marker="^", ls="", color="0.3", label="MOF (R ⇒ U)")]
    axes[0].legend(handles=handles, fontsize=8, loc="lower right")
    fig.tight_layout()
    _save_png(fig, path)


def _mean_curve(results: list[SeedResult], key: str) -> tuple[list[float], list[float],
                                                              list[float]]:
    """Epochs, mean and std of ``key`` over the seeds that logged it at that epoch."""
    by_epoch: dict[float, list[float]] = {}
    for r in results:
        for row in r.curve:
            if key in row and "epoch" in row:
                by_epoch.setdefault(row["epoch"], []).append(row[key])
    epochs = sorted(by_epoch)
    stats = [mean_std(by_epoch[e]) for e in epochs]
    return epochs, [s.mean for s in stats], [0.0 if math.isnan(s.std) else s.std for s in stats]


def plot_curves(results: list[SeedResult], cells: list[Cell], title: str, path: Path) -> None:
    """Training loss and test R@1 per epoch of every cell (mean over seeds, ± std shaded);
    baselines solid, MOF dashed."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("tab10")
    for i, cell in enumerate(cells):
        mine = [r for r in results if r.cell == cell]
        style = {"color": cmap(i % 10), "ls": "--" if cell.is_mof else "-", "lw": 1.4}
        for ax, key in zip(axes, ("train_loss", "t2v/R@1")):
            epochs, mean, std = _mean_curve(mine, key)
            if not epochs:
                continue
            ax.plot(epochs, mean, label=cell.label, **style)
            ax.fill_between(epochs, [m - s for m, s in zip(mean, std)],
                            [m + s for m, s in zip(mean, std)], color=style["color"], alpha=0.12)
    axes[0].set_ylabel("training loss (symmetric InfoNCE)")
    axes[1].set_ylabel("test text-to-video R@1 (%)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, ncol=2, title="SF", title_fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save_png(fig, path)


def _save_png(fig, path: Path) -> None:
    """Write ``fig`` as a PNG (110 dpi) through the crash-safe writer, then close it."""
    import io

    from pipeline.atomic import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    _pyplot().close(fig)
    atomic_write_bytes(path, buffer.getvalue())

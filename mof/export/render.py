"""Pictures for ``mof-cli export-frames``: de-normalised frames, PNGs, the Fig. 7 grid, index.html.

Pure rendering: arrays in, images and bytes out; :mod:`mof.export.export` decides what to draw.
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import atomic_write_bytes

__all__ = ["denormalize", "index_html", "mix_strips", "png_bytes", "render_grid", "write_pngs"]

_LABEL_W, _PAD, _LINE_H = 132, 4, 14


def denormalize(frames: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """Model-normalised float ``(..., 3, H, W)`` → uint8 RGB ``(..., H, W, 3)``, clipped."""
    mean_a = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std_a = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    pixels = (np.asarray(frames, dtype=np.float32) * std_a + mean_a) * 255.0
    return np.moveaxis(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), -3, -1)


def png_bytes(image: np.ndarray | Any) -> bytes:
    from PIL import Image

    pil = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return buffer.getvalue()


def write_pngs(folder: Path, frames: np.ndarray, prefix: str = "") -> list[str]:
    """uint8 frames ``(T, H, W, 3)`` → ``folder/{prefix}{i:02d}.png``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(frames):
        path = folder / f"{prefix}{i:02d}.png"
        atomic_write_bytes(path, png_bytes(frame))
        paths.append(str(path))
    return paths


def mix_strips(weights: np.ndarray, bar: int = 8, height: int = 16) -> np.ndarray:
    """Bar strips of mixing weights: ``(T, R)`` in [0, 1] → uint8 ``(T, height, R*bar, 3)``.

    Bar r of strip t rises ``weights[t, r] * height`` pixels from the bottom (dark on light
    grey), so a frame drawn from one anchor shows one full bar at that anchor's position.
    """
    weights = np.clip(np.asarray(weights, dtype=np.float64), 0.0, 1.0)
    count, regular = weights.shape
    strips = np.full((count, height, regular * bar, 3), 230, dtype=np.uint8)
    filled = np.rint(weights * height).astype(int)
    for t in range(count):
        for r in range(regular):
            if filled[t, r]:
                strips[t, height - filled[t, r]:, r * bar: (r + 1) * bar - 1] = (30, 60, 160)
    return strips


def render_grid(rows: list[tuple[str, np.ndarray]], caption: list[str], columns: int,
                cell: int) -> tuple[Any, list[list[list[int]]]]:
    """Draw labelled rows of frames (Fig. 7) with a caption under them.

    Args:
        rows: ``(label, frames)`` with uint8 frames ``(T, H, W, 3)``; a row of more than
            ``columns`` frames wraps onto further lines. Non-square tiles (the strips of
            :func:`mix_strips`) are scaled to the cell's width, keeping their aspect.
        caption: text lines under the grid (shortened to fit).
        columns: frames per line.
        cell: width of each frame on the grid in pixels (nearest-neighbour scaling).

    Returns:
        The PIL image and, per row, the ``[left, top, right, bottom]`` box of each frame.
    """
    from PIL import Image, ImageDraw, ImageFont

    cols = min(columns, max(len(frames) for _, frames in rows))
    lines = [-(-len(frames) // columns) for _, frames in rows]
    step = cell + _PAD
    heights = [max(1, round(cell * frames.shape[1] / frames.shape[2])) for _, frames in rows]
    width = _LABEL_W + cols * step + _PAD
    height = (sum(n * (h + _PAD) for n, h in zip(lines, heights, strict=True)) + _PAD
              + len(caption) * _LINE_H + _PAD)
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    boxes: list[list[list[int]]] = []
    top = _PAD
    for (label, frames), count, tall in zip(rows, lines, heights, strict=True):
        draw.text((_PAD, top + tall // 2 - 6), label, fill=(0, 0, 0), font=font)
        boxes.append([])
        for i, frame in enumerate(frames):
            left, y = _LABEL_W + (i % columns) * step, top + (i // columns) * (tall + _PAD)
            tile = Image.fromarray(frame)
            if tile.size != (cell, tall):
                tile = tile.resize((cell, tall), Image.Resampling.NEAREST)
            image.paste(tile, (left, y))
            boxes[-1].append([left, y, left + cell, y + tall])
        top += count * (tall + _PAD)
    for line in caption:
        while len(line) > 4 and draw.textlength(line, font=font) > width - 2 * _PAD:
            line = line[: len(line) - 4] + "..."
        draw.text((_PAD, top), line, fill=(0, 0, 0), font=font)
        top += _LINE_H
    return image, boxes


def index_html(summary: dict[str, Any]) -> str:
    """A page showing every exported video's grid with links to its files."""
    out = Path(summary["out"])
    parts = [(f"<!doctype html><meta charset='utf-8'><title>MOF frames of "
             f"{html.escape(summary['run'])}</title><body style='font-family:sans-serif'>"),
             f"<h1>MOF frames: {html.escape(summary['run'])}</h1>",
             (f"<p>store phase {summary['store_phase']}, R={summary['R']}, U={summary['U']}, "
             f"{summary['H']}x{summary['W']} px</p>")]
    for note in summary["notes"]:
        parts.append(f"<p><em>{html.escape(note)}</em></p>")
    for video in summary["videos"]:
        grid = Path(video["files"]["grid"]).relative_to(out).as_posix()
        files = [(f"{name} {i}" if isinstance(paths, list) else name, p)
                 for name, paths in video["files"].items() if name != "grid"
                 for i, p in enumerate(paths if isinstance(paths, list) else [paths])]
        links = [f"<a href='{html.escape(Path(p).relative_to(out).as_posix())}'>"
                 f"{html.escape(label)}</a>" for label, p in files]
        parts.append(f"<h2>{html.escape(video['video_id'])}</h2>"
                     f"<p>{html.escape(video['caption'])}</p><img src='{html.escape(grid)}'>"
                     f"<p>{' '.join(links)}</p>")
    return "\n".join(parts) + "\n</body>\n"

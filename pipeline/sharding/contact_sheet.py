"""``mof-cli inspect``: count what a set of shards holds and draw a contact sheet.

The contact sheet has one row per sample: its R frames (or ``max_frames`` of them, evenly
spaced) side by side at ``thumb x thumb`` pixels, and under them a strip of
:data:`CAPTION_HEIGHT` pixels with the key and the first caption. The image is therefore
``cols * thumb`` wide and ``rows * (thumb + CAPTION_HEIGHT)`` high, where ``cols`` is the most
frames shown for any row.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import atomic_write_bytes
from pipeline.sharding.index import ERRORS_NAME, read_errors
from pipeline.sharding.samples import iter_shard, resolve_shards

__all__ = [
    "CAPTION_HEIGHT",
    "InspectConfig",
    "InspectReport",
    "inspect_shards",
    "render_contact_sheet",
]

#: Height in pixels of the caption strip under each row of the contact sheet.
CAPTION_HEIGHT = 16


@dataclass
class InspectConfig:
    """Settings of ``mof-cli inspect``.

    Attributes:
        shards: a shard directory, pattern or file (see
            :func:`pipeline.sharding.samples.resolve_shards`).
        sheet: where to write the contact-sheet PNG; ``None`` for none.
        samples: rows of the contact sheet (the first samples in shard order).
        max_frames: frames shown per row at most (evenly spaced when R is larger).
        thumb: side of each frame on the sheet in pixels; default: the frame size, at most 128.
    """

    shards: str | list[str]
    sheet: str | None = None
    samples: int = 8
    max_frames: int = 8
    thumb: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.samples < 1:
            problems.append(f"--samples must be >= 1, got {self.samples}")
        if self.max_frames < 1:
            problems.append(f"--max-frames must be >= 1, got {self.max_frames}")
        if self.thumb is not None and self.thumb < 8:
            problems.append(f"--thumb must be >= 8 pixels, got {self.thumb}")
        if problems:
            raise ValueError("invalid inspect config:\n  " + "\n  ".join(problems))


@dataclass
class InspectReport:
    """Counts over a set of shards (``errors`` is ``None`` when no ``errors.jsonl`` was found)."""

    shards: int = 0
    samples: int = 0
    captions: int = 0
    frames_per_sample: list[int] = field(default_factory=list)
    frame_sizes: list[str] = field(default_factory=list)
    bytes: int = 0
    errors: int | None = None
    sheet: str | None = None
    sheet_size: tuple[int, int] | None = None

    def format(self) -> str:
        """A human-readable block of counts."""
        errors = "n/a (no errors.jsonl)" if self.errors is None else str(self.errors)
        lines = [
            f"shards:            {self.shards}",
            f"samples:           {self.samples}",
            f"captions:          {self.captions}",
            f"frames per sample: {', '.join(map(str, self.frames_per_sample)) or '-'}",
            f"frame size:        {', '.join(self.frame_sizes) or '-'}",
            f"bytes:             {self.bytes} ({self.bytes / 1e6:.1f} MB)",
            f"errors:            {errors}",
        ]
        if self.sheet:
            lines.append(
                f"contact sheet:     {self.sheet} ({self.sheet_size[0]}x{self.sheet_size[1]})"
            )
        return "\n".join(lines)


def _npy_shape(raw: bytes) -> tuple[int, ...]:
    """The array shape stored in ``.npy`` bytes, read from the header only."""
    stream = io.BytesIO(raw)
    major, _ = np.lib.format.read_magic(stream)
    read = (
        np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    )
    return tuple(read(stream)[0])


def _frame_columns(num_frames: int, max_frames: int) -> list[int]:
    """Indices of the frames shown: all of them, or ``max_frames`` evenly spaced."""
    if num_frames <= max_frames:
        return list(range(num_frames))
    return [int(i) for i in np.linspace(0, num_frames - 1, max_frames).round()]


def render_contact_sheet(
    rows: list[tuple[str, np.ndarray, str]], max_frames: int = 8, thumb: int | None = None
) -> Any:
    """Draw rows of frames with their captions.

    Args:
        rows: ``(key, frames, caption)`` with frames uint8 ``(R, S, S, 3)``.
        max_frames: frames shown per row at most.
        thumb: side of each shown frame in pixels; default ``min(S, 128)`` of the first row.

    Returns:
        A PIL RGB image of ``cols * thumb`` x ``len(rows) * (thumb + CAPTION_HEIGHT)`` pixels.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not rows:
        raise ValueError("a contact sheet needs at least one sample")
    thumb = thumb or min(int(rows[0][1].shape[1]), 128)
    columns = [_frame_columns(len(frames), max_frames) for _, frames, _ in rows]
    cols = max(len(c) for c in columns)
    row_h = thumb + CAPTION_HEIGHT
    sheet = Image.new("RGB", (cols * thumb, len(rows) * row_h), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for r, ((key, frames, caption), shown) in enumerate(zip(rows, columns)):
        for c, index in enumerate(shown):
            tile = Image.fromarray(frames[index])
            if tile.size != (thumb, thumb):
                tile = tile.resize((thumb, thumb), Image.Resampling.BILINEAR)
            sheet.paste(tile, (c * thumb, r * row_h))
        text = f"{key}: {caption}"
        # Shorten the text until it fits the row (the default font has no wrapping).
        while len(text) > 4 and draw.textlength(text, font=font) > sheet.width - 4:
            text = text[: len(text) - 4] + "..."
        draw.text((2, r * row_h + thumb + 2), text, fill=(235, 235, 235), font=font)
    return sheet


def _errors_file(paths: list[str]) -> Path | None:
    """``errors.jsonl`` of the directory holding the shards, when they share one that has it."""
    parents = {Path(p).resolve().parent for p in paths}
    if len(parents) != 1:
        return None
    candidate = parents.pop() / ERRORS_NAME
    return candidate if candidate.exists() else None


def inspect_shards(config: InspectConfig) -> InspectReport:
    """Count shards, samples, captions, frame shapes, bytes and errors; draw the contact sheet.

    Every sample is read (its frames' shape from the ``.npy`` header only); the first
    ``config.samples`` are decoded for the sheet.

    Raises:
        pipeline.sharding.samples.ShardReadError: a shard or sample is corrupt.
    """
    paths = resolve_shards(config.shards)
    report = InspectReport(shards=len(paths), bytes=sum(Path(p).stat().st_size for p in paths))
    lengths: set[int] = set()
    sizes: set[str] = set()
    rows: list[tuple[str, np.ndarray, str]] = []
    for path in paths:
        for sample in iter_shard(path, decode=False):
            shape = _npy_shape(sample["frames"])
            report.samples += 1
            report.captions += len(sample["meta"].get("captions", []))
            lengths.add(shape[0])
            sizes.add("x".join(map(str, shape[1:3])))
            if config.sheet and len(rows) < config.samples:
                frames = np.lib.format.read_array(io.BytesIO(sample["frames"]), allow_pickle=False)
                caption = (sample["meta"].get("captions") or [""])[0]
                rows.append((sample["key"], frames, caption))
    report.frames_per_sample = sorted(lengths)
    report.frame_sizes = sorted(sizes)
    errors_path = _errors_file(paths)
    report.errors = len(read_errors(errors_path)) if errors_path else None
    if config.sheet and rows:
        image = render_contact_sheet(rows, config.max_frames, config.thumb)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        atomic_write_bytes(config.sheet, buffer.getvalue())
        report.sheet, report.sheet_size = str(config.sheet), image.size
    return report

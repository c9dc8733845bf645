"""Generate small test videos with FFmpeg (PyAV in-process, or ffmpeg-python driving the
imageio-ffmpeg binary).

Every frame shows a pattern that survives lossy coding, resizing and centre cropping:

- four coloured quadrants (``QUADRANT_COLOURS``: top-left red, top-right green, bottom-left
  blue, bottom-right yellow), which tell orientation and colour handling;
- a centred band of three grey cells whose levels spell the frame number in base 6
  (:func:`read_index` reads it back from a decoded frame), which tells which frame was decoded.

Nothing here is a test: other test files import these helpers. No binary is stored in the
repository; every video is generated where it is needed.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import ffmpeg
import imageio_ffmpeg
import numpy as np

__all__ = [
    "MAX_FRAMES",
    "QUADRANT_COLOURS",
    "ffmpeg_exe",
    "make_audio_only",
    "make_video",
    "pattern_frame",
    "quadrant_colours",
    "read_index",
    "remux",
    "transcode",
    "truncate",
]

#: Top-left, top-right, bottom-left, bottom-right colours (RGB).
QUADRANT_COLOURS = ((200, 40, 40), (40, 190, 40), (40, 40, 200), (200, 200, 40))
_BASE = 6  # grey levels per digit cell
_DIGITS = 3
_LEVELS = [
    40 + 36 * d for d in range(_BASE)
]  # 40 .. 220: 36 apart survives any codec here
#: Frames a pattern can number uniquely.
MAX_FRAMES = _BASE**_DIGITS


def pattern_frame(
    index: int, width: int, height: int, alpha: bool = False
) -> np.ndarray:
    """The test pattern of frame ``index``.

    Geometry is relative to the short side ``s``: the digit band is ``0.6 s`` wide and
    ``0.2 s`` high around the centre, so a short-side resize plus centre crop keeps it whole.

    Args:
        index: frame number, ``0 <= index < MAX_FRAMES``.
        width: frame width, pixels.
        height: frame height, pixels.
        alpha: add an opaque alpha channel with a transparent left border column band.

    Returns:
        uint8 ``(height, width, 3)`` RGB, or ``(height, width, 4)`` RGBA with ``alpha``.
    """
    if not 0 <= index < MAX_FRAMES:
        raise ValueError(
            f"pattern frames are numbered 0..{MAX_FRAMES - 1}; got {index}"
        )
    img = np.empty((height, width, 3), np.uint8)
    cy, cx = height // 2, width // 2
    img[:cy, :cx], img[:cy, cx:] = QUADRANT_COLOURS[0], QUADRANT_COLOURS[1]
    img[cy:, :cx], img[cy:, cx:] = QUADRANT_COLOURS[2], QUADRANT_COLOURS[3]
    s = min(width, height)
    cell = round(0.2 * s)
    y0, x0 = cy - cell // 2, cx - (3 * cell) // 2
    for k, digit in enumerate(_digits(index)):
        img[y0 : y0 + cell, x0 + k * cell : x0 + (k + 1) * cell] = _LEVELS[digit]
    if not alpha:
        return img
    a = np.full((height, width, 1), 255, np.uint8)
    a[:, : max(1, width // 16)] = 0  # a transparent strip outside any centre crop
    return np.concatenate([img, a], axis=2)


def _digits(index: int) -> list[int]:
    return [(index // _BASE**p) % _BASE for p in reversed(range(_DIGITS))]


def read_index(frame: np.ndarray) -> int:
    """Read the frame number back from an upright, short-side-resized, centre-cropped frame.

    Args:
        frame: uint8 ``(S, S, 3)`` RGB (any S >= 16).

    Returns:
        The frame number the pattern spells.
    """
    s = frame.shape[0]
    cell = 0.2 * s
    y = s // 2
    value = 0
    for k in range(_DIGITS):
        x = int(s / 2 + (k - 1) * cell)
        r = max(1, int(cell / 4))
        grey = float(frame[y - r : y + r, x - r : x + r].mean())
        digit = int(np.argmin([abs(grey - level) for level in _LEVELS]))
        value = value * _BASE + digit
    return value


def quadrant_colours(frame: np.ndarray) -> list[tuple[int, int, int]]:
    """Mean colours at the centres of the four quadrants' corner areas (TL, TR, BL, BR).

    Args:
        frame: uint8 ``(S, S, 3)`` RGB.

    Returns:
        Four RGB triples, rounded to integers.
    """
    s = frame.shape[0]
    a, b, r = s // 8, s - s // 8, max(1, s // 16)
    spots = [(a, a), (a, b), (b, a), (b, b)]
    return [
        tuple(
            round(v) for v in frame[y - r : y + r, x - r : x + r].reshape(-1, 3).mean(0)
        )
        for y, x in spots
    ]


def make_video(
    path: str | Path,
    *,
    codec: str = "libx264",
    size: tuple[int, int] = (96, 64),
    fps: int = 30,
    frames: int = 30,
    gop: int | None = None,
    pix_fmt: str = "yuv420p",
    bframes: int | None = None,
    rotation: int = 0,
    times_s: Sequence[float] | None = None,
    container_format: str | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Encode ``frames`` pattern frames with PyAV (in-process FFmpeg).

    Args:
        path: output file; the extension picks the container unless ``container_format``.
        codec: FFmpeg encoder name (``libx264``, ``libx265``, ``libvpx-vp9``, ``mpeg4``,
            ``png``, ``qtrle``, ...).
        size: ``(width, height)`` in pixels.
        fps: nominal frame rate, frames per second.
        frames: number of frames (each numbered by its pattern).
        gop: keyframe interval in frames (``None``: the encoder's default).
        pix_fmt: encoded pixel format (``yuv420p``, ``yuv420p10le``, ``yuva420p``, ``rgba``,
            ``argb``, ...); formats with alpha get an RGBA pattern.
        bframes: maximum consecutive B-frames (``None``: the encoder's default).
        rotation: display rotation written to the container, degrees counter-clockwise.
        times_s: presentation time of each frame in seconds (variable frame rate); ``None``
            for constant ``fps``.
        container_format: FFmpeg muxer name (e.g. ``h264`` for a raw elementary stream).
        options: extra encoder options.

    Returns:
        ``path``.
    """
    path = Path(path)
    width, height = size
    alpha = "a" in pix_fmt.replace("yuv", "").replace("gray", "")
    time_base = Fraction(1, 1000) if times_s is not None else Fraction(1, fps)
    opts = dict(options or {})
    if codec in ("libx264", "libx265"):
        key = "x264-params" if codec == "libx264" else "x265-params"
        params = [opts.pop(key, "")]
        if gop is not None:
            params.append(f"keyint={gop}:min-keyint={gop}:scenecut=0")
        if codec == "libx265":
            params.append("log-level=error")
        opts[key] = ":".join(p for p in params if p)
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps, options=opts)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.time_base = time_base
        if gop is not None:
            stream.codec_context.gop_size = gop
        if bframes is not None:
            stream.codec_context.max_b_frames = bframes
        if rotation:
            stream.set_display_rotation(rotation)
        fmt = "rgba" if alpha else "rgb24"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(
                pattern_frame(i, width, height, alpha), format=fmt
            )
            frame.pts = round(times_s[i] * 1000) if times_s is not None else i
            frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def ffmpeg_exe() -> str:
    """The FFmpeg command-line binary bundled with imageio-ffmpeg."""
    return imageio_ffmpeg.get_ffmpeg_exe()


def _run_ffmpeg(graph: ffmpeg.nodes.OutputStream) -> bytes:
    """Run an ffmpeg-python graph with the bundled binary; return what it wrote to stdout.

    Raises:
        RuntimeError: FFmpeg failed; the message holds its stderr.
    """
    graph = graph.global_args("-hide_banner", "-loglevel", "error", "-nostdin").overwrite_output()
    try:
        out, _ = graph.run(cmd=ffmpeg_exe(), capture_stdout=True, capture_stderr=True)
    except ffmpeg.Error as err:
        raise RuntimeError(f"{' '.join(graph.compile(cmd=ffmpeg_exe()))} failed:\n"
                           f"{err.stderr.decode(errors='replace')}") from None
    return out


def remux(
    src: str | Path, dst: str | Path, container_format: str, piped: bool = True
) -> Path:
    """Copy the streams of ``src`` into another container with the FFmpeg binary.

    Args:
        src: input video.
        dst: output file.
        container_format: FFmpeg muxer (``matroska``, ``mpegts``, ...).
        piped: write through a pipe, as a live stream or ``ffmpeg ... | cat > file`` would:
            the muxer cannot seek back, so the header holds no duration and no index.

    Returns:
        ``dst``.
    """
    dst = Path(dst)
    target = "pipe:1" if piped else str(dst)
    out = _run_ffmpeg(ffmpeg.input(str(src)).output(target, c="copy", f=container_format))
    if piped:
        dst.write_bytes(out)
    return dst


def transcode(src: str | Path, dst: str | Path, **options: str | int) -> Path:
    """Re-encode ``src`` with the FFmpeg binary and the given output options.

    For encoders PyAV's FFmpeg lacks, e.g. ``transcode(a, "b.avi", **{"c:v": "libxvid"})``.
    """
    dst = Path(dst)
    _run_ffmpeg(ffmpeg.input(str(src)).output(str(dst), **options))
    return dst


def make_audio_only(path: str | Path, seconds: float = 1.0) -> Path:
    """An ``.mp4`` holding one AAC audio stream (a sine tone) and no video."""
    path = Path(path)
    tone = ffmpeg.input(f"sine=frequency=440:duration={seconds}", f="lavfi")
    _run_ffmpeg(tone.output(str(path), **{"c:a": "aac"}))
    return path


def truncate(src: str | Path, dst: str | Path, fraction: float) -> Path:
    """Copy the first ``fraction`` of the bytes of ``src`` (a download cut short)."""
    dst = Path(dst)
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        f.truncate(int(Path(src).stat().st_size * fraction))
    return dst

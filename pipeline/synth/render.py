"""Drawing and encoding the synthetic videos: numpy signed-distance shapes, H.264 via PyAV.

Encoding happens in-process with PyAV/libx264 (no ffmpeg process per file, which would cost
about 70 ms of start-up each) with one encoder thread, because the dataset generator already
runs one worker per core.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_path
from pipeline.synth.grammar import BACKGROUND, PALETTE, Sprite, VideoPlan

__all__ = ["decode_mp4", "encode_mp4", "render_video", "sprite_state", "visible_colours"]

_SQRT2 = float(np.sqrt(2.0))
# Slope of the triangle's sides (apex up, base at 0.8 of the half-size below the centre).
_TRI_SLOPE, _TRI_BASE = 1.8, 0.8
_TRI_NORM = float(np.hypot(_TRI_SLOPE, 1.0))


def sprite_state(sprite: Sprite, t: int) -> tuple[float, float, float, str] | None:
    """Centre x, centre y, size (pixels) and colour of ``sprite`` at frame ``t``; None if hidden."""
    if not sprite.first <= t < sprite.last:
        return None
    span = max(1, sprite.last - sprite.first - 1)
    u = (t - sprite.first) / span
    x = sprite.xy0[0] + u * (sprite.xy1[0] - sprite.xy0[0])
    y = sprite.xy0[1] + u * (sprite.xy1[1] - sprite.xy0[1])
    size = sprite.size0 + u * (sprite.size1 - sprite.size0)
    colour = sprite.colours[1] if t >= sprite.switch else sprite.colours[0]
    return x, y, size, colour


def visible_colours(plan: VideoPlan, t: int) -> set[str]:
    """Colours of the objects drawn on frame ``t`` according to the timeline."""
    states = (sprite_state(sp, t) for sp in plan.sprites)
    return {s[3] for s in states if s is not None}


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Signed distance in pixels (negative inside) to a shape of half-size ``r``."""
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return np.hypot(dx, dy) - r
    if shape == "square":
        return np.maximum(ax, ay) - r
    if shape == "diamond":
        # A diamond inscribed in the box would look half the area of the square: enlarge it.
        return (ax + ay - 1.25 * r) / _SQRT2
    if shape == "triangle":
        side = (_TRI_SLOPE * ax - dy - r) / _TRI_NORM
        return np.maximum(dy - _TRI_BASE * r, side)
    if shape == "cross":
        w = 0.38 * r
        return np.minimum(np.maximum(ax - r, ay - w), np.maximum(ax - w, ay - r))
    raise ValueError(f"unknown shape {shape!r}")


def render_video(plan: VideoPlan) -> np.ndarray:
    """Draw every frame of ``plan``.

    Returns:
        uint8 ``(T, S, S, 3)`` RGB frames (T = ``plan.num_frames``, S = ``plan.size``).
    """
    t_n, s = plan.num_frames, plan.size
    # Pixel centres; anti-aliased edges (alpha from the signed distance) let objects move and
    # grow by fractions of a pixel per frame without jitter.
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    video = np.empty((t_n, s, s, 3), dtype=np.float32)
    video[:] = np.asarray(BACKGROUND, dtype=np.float32)
    for t in range(t_n):
        frame = video[t]
        for sp in plan.sprites:
            state = sprite_state(sp, t)
            if state is None:
                continue
            x, y, size, colour = state
            alpha = np.clip(0.5 - _signed_distance(sp.shape, xx - x, yy - y, size / 2), 0, 1)
            rgb = np.asarray(PALETTE[colour], dtype=np.float32)
            frame += alpha[..., None] * (rgb - frame)
    return np.rint(video).astype(np.uint8)


def encode_mp4(frames: np.ndarray, path: Path, fps: int, crf: int) -> int:
    """Encode frames as H.264 (yuv420p) in MP4, atomically.

    The file is written under a temporary name and renamed, so ``path`` exists only when whole.

    Args:
        frames: uint8 ``(T, H, W, 3)`` RGB; H and W even.
        path: the final file name.
        fps: frames per second (frame t is shown at t / fps seconds).
        crf: x264 constant rate factor (lower is better quality).

    Returns:
        Size of the file in bytes.
    """
    import av

    with atomic_path(path) as tmp, av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # One encoder thread (x264's threads split the frame differently run to run) leaves the
        # cores to the workers.
        stream.codec_context.thread_count = 1
        stream.codec_context.gop_size = fps  # a keyframe per second: cheap seeks for readers
        # x264's macroblock-tree rate control gives different bits for the same pixels depending
        # on where the input lies in memory (measured: 48 byte offsets, 2 different files);
        # without it the file depends on the pixels alone, so a dataset is the same on every run.
        stream.codec_context.options = {"crf": str(crf), "preset": "medium",
                                        "x264-params": "mbtree=0"}
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path.stat().st_size


def decode_mp4(path: Path) -> np.ndarray:
    """Decode every frame of a video file.

    Returns:
        uint8 ``(T, H, W, 3)`` RGB.
    """
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack(frames)

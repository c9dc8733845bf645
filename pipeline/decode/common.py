"""What every decoding backend returns and raises, and the resize geometry they share.

:mod:`pipeline.decode.video` dispatches to a backend (:mod:`pipeline.decode.pyav`,
:mod:`pipeline.decode.dali`); the backends import these pieces from here, not from the
dispatcher, so no backend imports the module that imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import MofError

__all__ = ["DecodeError", "DecodedVideo", "resized_shape"]


class DecodeError(MofError):
    """A video that cannot be decoded.

    Attributes:
        reason: a short human sentence (e.g. ``"file is empty"``), recorded in
            ``errors.jsonl`` by the shard writer.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class DecodedVideo:
    """R frames of one video and the facts measured while decoding it.

    Attributes:
        frames: uint8 ``(R, S, S, 3)`` RGB, upright (display rotation applied).
        indices: the ``R`` decoded frame indices (presentation order, 0-based, repeats allowed).
        fps: average frame rate, frames per second (``num_frames / duration_s``).
        num_frames: frames in the video stream, counted from the demuxed packets (or the
            decoded frames when packets carry no timestamps), never from header metadata alone.
        duration_s: stream duration in seconds, from the frame timestamps when present.
        backend: the backend that produced ``frames`` (``ffmpeg`` or ``dali``).
        width: upright display width of the source, pixels (after rotation).
        height: upright display height of the source, pixels (after rotation).
        rotation: display rotation applied, degrees counter-clockwise (0, 90, 180 or 270).
        codec: FFmpeg codec name of the stream (e.g. ``h264``).
        pix_fmt: pixel format of the decoded stream (e.g. ``yuv420p``, ``yuv420p10le``).
        decoded_frames: frames the decoder actually produced (work done; ``-1`` if unknown).
    """

    frames: np.ndarray
    indices: list[int]
    fps: float
    num_frames: int
    duration_s: float
    backend: str
    width: int = 0
    height: int = 0
    rotation: int = 0
    codec: str = ""
    pix_fmt: str = ""
    decoded_frames: int = -1


def resized_shape(width: int, height: int, size: int) -> tuple[int, int]:
    """Size ``(w, h)`` of a frame whose short side is resized to ``size`` (aspect kept).

    The long side is rounded to an even number of pixels: swscale's vectorised paths need an
    even output width (an odd one costs twice the time); the aspect changes by at most one
    pixel, most of which the centre crop removes anyway.

    Args:
        width: source width, pixels.
        height: source height, pixels.
        size: target short side ``S``, pixels.

    Returns:
        ``(w, h)`` with ``min(w, h) == size`` and the long side even (or ``size``).
    """
    short, long = min(width, height), max(width, height)
    scaled = max(size, 2 * round(long * size / short / 2))
    return (size, scaled) if width <= height else (scaled, size)

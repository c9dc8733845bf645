"""Decode R frames of a video into an ``(R, S, S, 3)`` uint8 RGB array.

The public entry point of frame decoding. Two backends share one frame-selection rule
(:func:`pipeline.sampling.segment_midpoints` over the decoded frame sequence) and one geometry
(short side resized to ``S`` with an antialiasing filter, then an ``S x S`` centre crop, after
the display rotation of the file is applied):

- ``ffmpeg``: in-process FFmpeg through PyAV (:mod:`pipeline.decode.pyav`), single-threaded,
  decoding only the groups of pictures that hold a target frame.
- ``dali``: NVIDIA DALI's GPU decoder (:mod:`pipeline.decode.dali`) fed the encoded bytes and
  the same explicit frame indices.

A video that cannot be decoded raises :class:`pipeline.decode.common.DecodeError` with a short
human reason; the shard
writer records it and moves on.
"""

from __future__ import annotations

import functools
from pathlib import Path

from pipeline.decode.common import DecodedVideo

__all__ = ["BACKENDS", "available_backends", "decode_video", "resolve_backend"]

#: Backend names accepted by :func:`decode_video` (``auto`` resolves to one of the others).
BACKENDS = ("ffmpeg", "dali", "auto")


@functools.cache
def _dali_usable() -> bool:
    """Whether DALI imports and a CUDA device is visible (cached per process)."""
    try:
        from pipeline.decode import dali as decode_dali
    except ImportError:  # pragma: no cover - the module itself imports nothing heavy
        return False
    return decode_dali.is_available()


def available_backends() -> list[str]:
    """Backends usable in this process: always ``ffmpeg``, plus ``dali`` with CUDA and DALI."""
    return ["ffmpeg", "dali"] if _dali_usable() else ["ffmpeg"]


def resolve_backend(name: str) -> str:
    """Resolve a backend name to a concrete, usable backend.

    Args:
        name: ``ffmpeg``, ``dali`` or ``auto`` (``dali`` when CUDA and DALI are importable and
            usable, else ``ffmpeg``).

    Returns:
        ``ffmpeg`` or ``dali``.

    Raises:
        ValueError: for an unknown name, or ``dali`` where DALI or CUDA is missing.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {name!r}")
    if name == "auto":
        return "dali" if _dali_usable() else "ffmpeg"
    if name == "dali" and not _dali_usable():
        raise ValueError(
            "backend 'dali' needs a CUDA GPU and DALI (pip install -e .[gpu]); "
            "use --backend ffmpeg or auto"
        )
    return name


def decode_video(
    path: str | Path, num_frames: int, size: int, backend: str = "ffmpeg"
) -> DecodedVideo:
    """Decode ``num_frames`` frames of a video at the segment midpoints, as ``S x S`` RGB.

    Args:
        path: the video file.
        num_frames: R, frames to return (repeated when the video has fewer).
        size: S, the output side in pixels.
        backend: ``ffmpeg``, ``dali`` or ``auto`` (see :func:`resolve_backend`).

    Returns:
        A :class:`DecodedVideo` with ``frames`` uint8 ``(R, S, S, 3)``.

    Raises:
        DecodeError: the video cannot be decoded (missing, empty, not a video, no video
            stream, no decodable frame, ...); ``reason`` says why.
        ValueError: ``num_frames`` or ``size`` below 1, or an unusable backend.
    """
    if num_frames < 1 or size < 1:
        raise ValueError(
            f"num_frames and size must be >= 1; got {num_frames} and {size}"
        )
    resolved = resolve_backend(backend)
    path = Path(path)
    if resolved == "dali":
        from pipeline.decode import dali as decode_dali

        return decode_dali.decode_dali(path, num_frames, size)
    from pipeline.decode import pyav as decode_pyav

    return decode_pyav.decode_pyav(path, num_frames, size)

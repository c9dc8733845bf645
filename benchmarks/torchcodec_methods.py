"""torchcodec (PyTorch's video decoder, CPU) fetching the same frames as our CPU backend.

The decoder users would pick instead of ours, timed by ``bench_shard.py`` in the same run:
R frames at the segment midpoints of the decoded frame sequence, one FFmpeg thread, as uint8
RGB, in four variants:

- ``tc-decode``: ``VideoDecoder(seek_mode="exact").get_frames_at(indices)`` at full size, no
  resize or crop (less work than ours, which also resizes and crops);
- ``tc-approx``: the same with ``seek_mode="approximate"`` (frame count from the header);
- ``tc+torch-resize``: ``tc-decode`` then torchvision's antialiased short-side ``resize`` and
  ``center_crop`` on one torch thread (what a user would write);
- ``tc-transforms``: torchcodec's decoder-side ``Resize`` + ``CenterCrop`` (resized by FFmpeg
  while decoding).

torchcodec loads the system's FFmpeg libraries (``make bench`` installs them with apt).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.decode.common import resized_shape
from pipeline.sampling import segment_midpoints

__all__ = ["METHODS", "available"]


def available() -> str | None:
    """``None`` when torchcodec and its FFmpeg libraries load, else why not."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401
    except (ImportError, RuntimeError, OSError) as exc:  # missing wheel or FFmpeg libraries
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def _decoder(path: Path, seek_mode: str = "exact", transforms=None):
    from torchcodec.decoders import VideoDecoder

    return VideoDecoder(str(path), seek_mode=seek_mode, num_ffmpeg_threads=1, device="cpu",
                        transforms=transforms)


def _frames_at(decoder, r: int) -> np.ndarray:
    """``(R, H, W, 3)`` uint8 frames at the segment midpoints of the decoder's frame count."""
    indices = segment_midpoints(decoder.metadata.num_frames, r)
    return decoder.get_frames_at(indices).data.permute(0, 2, 3, 1).numpy()


def decode_tc(path: Path, r: int, size: int) -> np.ndarray:
    """Exact seek mode, full-size frames (no resize or crop)."""
    return _frames_at(_decoder(path), r)


def decode_tc_approx(path: Path, r: int, size: int) -> np.ndarray:
    """Approximate seek mode, full-size frames."""
    return _frames_at(_decoder(path, "approximate"), r)


def decode_tc_torch_resize(path: Path, r: int, size: int) -> np.ndarray:
    """Exact seek mode, then torchvision's antialiased resize and centre crop."""
    from torchvision.transforms.v2 import functional as F

    decoder = _decoder(path)
    indices = segment_midpoints(decoder.metadata.num_frames, r)
    frames = decoder.get_frames_at(indices).data
    frames = F.center_crop(F.resize(frames, [size], antialias=True), [size, size])
    return frames.permute(0, 2, 3, 1).numpy()


def decode_tc_transforms(path: Path, r: int, size: int) -> np.ndarray:
    """Exact seek mode with decoder-side Resize + CenterCrop."""
    from torchvision.transforms import v2

    meta = _decoder(path, "approximate").metadata  # the header alone: no scan of the file
    width, height = resized_shape(meta.width, meta.height, size)
    decoder = _decoder(path, transforms=[v2.Resize((height, width)), v2.CenterCrop(size)])
    return _frames_at(decoder, r)


#: Method name -> ``fn(path, r, size)``.
METHODS = {
    "tc-decode": decode_tc,
    "tc-approx": decode_tc_approx,
    "tc+torch-resize": decode_tc_torch_resize,
    "tc-transforms": decode_tc_transforms,
}

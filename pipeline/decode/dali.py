"""The GPU backend: NVIDIA DALI's video decoder (NVDEC) fed encoded bytes and explicit indices.

Written against the documented DALI 2.4 API (``nvidia-dali-cuda130==2.4.0``, the ``[gpu]``
extra). DALI is imported lazily: this module imports on any machine, and
:func:`is_available` answers without importing DALI or initialising CUDA.

One video at a time:

1. The CPU index pass of :mod:`pipeline.decode.pyav` (demux only) counts the frames, so the
   target indices are exactly those of the ``ffmpeg`` backend; the first frame is decoded on
   the CPU only to learn the display rotation and the pixel format.
2. A per-process DALI pipeline (built once per output size) runs
   ``fn.decoders.video(encoded, device="mixed", frames=indices)`` then
   ``fn.resize(resize_shorter=S, antialias=True)`` and a centre ``fn.crop`` to ``S x S``.
3. The rotation is applied to the ``(R, S, S, 3)`` result on the host.

Videos NVDEC cannot decode (e.g. H.264 10-bit or 4:4:4, MPEG-4 part 2 on some GPUs, codecs
DALI's demuxer lacks) and streams without timestamps fall back to the ``ffmpeg`` backend; the
returned :class:`~pipeline.decode.video.DecodedVideo` then says ``backend="ffmpeg"``.

``device="cpu"`` runs the same pipeline with DALI's CPU decoder, which reads VP8, VP9 and
MJPEG only (DALI's bundled FFmpeg has no H.264, HEVC or MPEG-4 decoder): it is how the tests
exercise this module on a machine without a GPU, not a CPU backend for real datasets.

CUDA cannot be used in a process forked after CUDA was initialised: run DALI decoding in the
main process or in workers started with the ``spawn`` method.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging
import os
from pathlib import Path

import numpy as np

from pipeline.decode.common import DecodedVideo

__all__ = ["DEVICES", "cuda_device_count", "dali_installed", "decode_dali", "is_available"]

log = logging.getLogger(__name__)


def cuda_device_count() -> int:
    """Number of visible NVIDIA GPUs, asked of NVML (fork-safe: does not initialise CUDA).

    Returns:
        0 without a driver, without GPUs, or with ``CUDA_VISIBLE_DEVICES`` set empty or to -1.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return 0
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return 0
    if nvml.nvmlInit_v2() != 0:
        return 0
    try:
        count = ctypes.c_uint(0)
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return 0
        return int(count.value)
    finally:
        nvml.nvmlShutdown()


def dali_installed() -> bool:
    """Whether the ``nvidia.dali`` package can be imported (without importing it)."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ImportError:  # no `nvidia` namespace package at all
        return False


def is_available() -> bool:
    """Whether DALI is installed and a CUDA GPU is visible."""
    return dali_installed() and cuda_device_count() > 0


#: Where :func:`decode_dali` decodes: ``gpu`` (NVDEC, the ``dali`` backend) or ``cpu`` (DALI's
#: CPU decoder, which reads VP8, VP9 and MJPEG only; used to test this module without a GPU).
DEVICES = ("gpu", "cpu")


@functools.lru_cache(maxsize=4)
def _pipeline(size: int, device_id: int | None, device: str = "gpu"):
    """Build (once per process, output size and device) the decode-resize-crop pipeline."""
    from nvidia.dali import fn, pipeline_def, types

    # The same graph on either device: only where decoding happens changes ("mixed" is CPU
    # demuxing feeding NVDEC, whose frames then stay on the GPU for resize and crop).
    decoder = "mixed" if device == "gpu" else "cpu"

    @pipeline_def(
        batch_size=1,
        num_threads=1,
        device_id=device_id if device == "gpu" else None,
        prefetch_queue_depth=1,
    )
    def video_pipeline():
        encoded = fn.external_source(
            name="encoded", device="cpu", dtype=types.UINT8, ndim=1
        )
        frames = fn.external_source(
            name="frames", device="cpu", dtype=types.INT32, ndim=1
        )
        # `frames` is an argument input: any order, repeats allowed, one list per sample.
        video = fn.decoders.video(
            encoded, device=decoder, frames=frames
        )  # (F, H, W, 3) uint8
        video = fn.resize(
            video, resize_shorter=size, antialias=True, interp_type=types.INTERP_LINEAR
        )
        return fn.crop(video, crop=(size, size), crop_pos_x=0.5, crop_pos_y=0.5)

    pipe = video_pipeline()
    pipe.build()
    return pipe


def _first_frame(cc, packets):
    """Decode packets on the CPU until the first frame comes out (None if none does)."""
    from pipeline.decode.pyav import decode_packet

    for packet in [*packets, None]:
        frames = decode_packet(cc, packet)
        if frames:
            return frames[0]
    return None


def _run_dali(
    path: Path, indices: list[int], size: int, device_id: int, device: str = "gpu"
) -> np.ndarray:
    """Decode ``indices`` of ``path`` with DALI on ``device``; returns uint8 ``(R, S, S, 3)``."""
    pipe = _pipeline(size, device_id, device)
    pipe.feed_input("encoded", [np.fromfile(path, dtype=np.uint8)])
    pipe.feed_input("frames", [np.asarray(indices, dtype=np.int32)])
    try:
        (out,) = pipe.run()
    except Exception:
        # A pipeline that raised may hold a half-run iteration: build a fresh one next time.
        _pipeline.cache_clear()
        raise
    host = out.as_cpu() if device == "gpu" else out
    return np.asarray(host.as_array()[0])


def decode_dali(
    path: Path, num_frames: int, size: int, device_id: int = 0, device: str = "gpu"
) -> DecodedVideo:
    """Decode ``num_frames`` frames at the segment midpoints of a video on the GPU.

    Args:
        path: the video file.
        num_frames: R, frames to return.
        size: S, the output side in pixels.
        device_id: CUDA device to decode on.
        device: ``gpu``, or ``cpu`` to run the same pipeline with DALI's CPU decoder (VP8,
            VP9 and MJPEG only; other codecs fall back to the ``ffmpeg`` backend).

    Returns:
        A :class:`~pipeline.decode.video.DecodedVideo` with ``frames`` uint8 ``(R, S, S, 3)``;
        ``backend`` is ``dali``, or ``ffmpeg`` where the video fell back to the CPU.

    Raises:
        DecodeError: the video cannot be decoded by either backend; ``reason`` says why.
    """
    from pipeline.decode.pyav import decode_pyav, index_video, open_video
    from pipeline.sampling import segment_midpoints

    container, stream = open_video(path)
    try:
        index = index_video(container, stream)
        first = _first_frame(stream.codec_context, index.packets)
    finally:
        container.close()
    if index.frame_pts is None or first is None:
        # Without timestamps DALI cannot be trusted to count frames as we do.
        return decode_pyav(path, num_frames, size)
    indices = segment_midpoints(index.num_frames, num_frames)
    try:
        frames = _run_dali(path, indices, size, device_id, device)
    except Exception as exc:  # noqa: BLE001 - DALI raises assorted errors with C++ messages
        log.info("%s: DALI could not decode (%s); using the ffmpeg backend", path, exc)
        return decode_pyav(path, num_frames, size)
    if frames.shape != (num_frames, size, size, 3):
        log.info(
            "%s: DALI returned shape %s; using the ffmpeg backend", path, frames.shape
        )
        return decode_pyav(path, num_frames, size)
    rotation = round(first.rotation / 90) % 4 * 90
    if rotation:
        frames = np.ascontiguousarray(np.rot90(frames, rotation // 90, axes=(1, 2)))
    swap = rotation in (90, 270)
    return DecodedVideo(
        frames=frames,
        indices=indices,
        fps=index.fps,
        num_frames=index.num_frames,
        duration_s=index.duration_s,
        backend="dali",
        width=first.height if swap else first.width,
        height=first.width if swap else first.height,
        rotation=rotation,
        codec=index.codec,
        pix_fmt=first.format.name,
        decoded_frames=-1,
    )

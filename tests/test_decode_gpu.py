"""The DALI GPU backend against the CPU backend on the same generated videos.

Skipped without a CUDA GPU and DALI (``pip install -e .[gpu]``; run with ``make test-gpu``).

Tolerance: both backends pick the same frame indices, so each frame must show the same
pattern number. Pixels differ only by resampling and colour conversion (swscale's area filter
on the CPU, DALI's antialiased linear resize after NVDEC's YUV to RGB on the GPU), so the mean
absolute difference per frame must stay within ``MEAN_TOL`` = 8 levels of 255 (neighbouring
frames of these videos differ by far more in the digit cells).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.decode import dali as decode_dali
from pipeline.decode.video import decode_video, resolve_backend
from tests.decode_checks import assert_matches_ffmpeg
from tests.videos import make_video, remux

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not decode_dali.is_available(), reason="needs a CUDA GPU and DALI"
    ),
]

R, S = 8, 64
MEAN_TOL = 8.0
# NVDEC's minimum sizes: 144x144 for HEVC, 128x128 for VP9; keep every video above them.
SIZE = (256, 160)
VFR_TIMES = [0.05 * i for i in range(20)] + [1.0 + 0.2 * i for i in range(20)]

GPU_VIDEOS = {
    "h264_bframes": {"frames": 90},
    "h264_gop10": {"frames": 90, "gop": 10},
    "vfr": {"frames": 40, "times_s": VFR_TIMES},
    "rot90": {"frames": 20, "rotation": 90},
    "one": {"frames": 1},
    "hevc": {"codec": "libx265", "frames": 30},
    "vp9.webm": {"codec": "libvpx-vp9", "frames": 30},
    "mpeg4.avi": {"codec": "mpeg4", "frames": 40, "bframes": 2, "gop": 12},
}
# quarter turns counter-clockwise of the upright output
TURNS = {"rot90": 1}


@pytest.fixture(scope="module")
def gpu_videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gpu_videos")
    paths = {
        name: make_video(
            root / (name if "." in name else f"{name}.mp4"), size=SIZE, **kwargs
        )
        for name, kwargs in GPU_VIDEOS.items()
    }
    paths["piped.mkv"] = remux(paths["h264_bframes"], root / "piped.mkv", "matroska")
    paths["h264_10bit"] = make_video(
        root / "h264_10bit.mp4", size=SIZE, frames=20, pix_fmt="yuv420p10le"
    )
    return paths


def test_auto_resolves_to_dali():
    assert resolve_backend("auto") == "dali"


@pytest.mark.parametrize("name", [*sorted(GPU_VIDEOS), "piped.mkv"])
def test_dali_matches_ffmpeg(gpu_videos, name):
    cpu = decode_video(gpu_videos[name], R, S, backend="ffmpeg")
    gpu = decode_video(gpu_videos[name], R, S, backend="dali")
    assert gpu.backend == "dali"
    assert_matches_ffmpeg(gpu, cpu, S, TURNS.get(name, 0), MEAN_TOL)


def test_video_nvdec_cannot_decode_falls_back_to_ffmpeg(gpu_videos):
    """H.264 High 10 is outside NVDEC's H.264 support: the CPU decodes it, same frames."""
    cpu = decode_video(gpu_videos["h264_10bit"], R, S, backend="ffmpeg")
    gpu = decode_video(gpu_videos["h264_10bit"], R, S, backend="dali")
    assert gpu.indices == cpu.indices
    if gpu.backend == "ffmpeg":
        np.testing.assert_array_equal(gpu.frames, cpu.frames)
    else:  # a GPU generation that decodes it must still agree within the tolerance
        diff = np.abs(gpu.frames.astype(np.int16) - cpu.frames.astype(np.int16))
        assert diff.mean() <= MEAN_TOL

"""The ``dali`` backend's own pipeline, run with DALI's CPU decoder, against the ``ffmpeg`` backend.

DALI's CPU video decoder reads VP8, VP9 and MJPEG only, so these videos are encoded with those
codecs; everything else of the backend runs as on a GPU: the frame count and indices from the
CPU index pass, ``fn.decoders.video(frames=indices)``, the antialiased short-side resize, the
centre crop, the display rotation applied on the host, and the fall-back to ``ffmpeg`` for a
codec DALI cannot decode. What only a GPU exercises (NVDEC itself, ``device="mixed"``, the copy
back to the host) stays in ``tests/test_decode_gpu.py``. ``make test-dali`` installs DALI and
runs this file; without DALI it is skipped.

Tolerance: both backends decode the same frame indices, so every frame must show the same
pattern number (frames next to each other differ by at least 36 grey levels in the digit
cells). Pixels differ by resampling (swscale's area filter against DALI's antialiased linear
resize) and by the YUV to RGB conversion; measured on these videos at S = 48, the mean
absolute difference per frame is 2.0 to 2.7 levels of 255 (single pixels up to 59 levels, on
the pattern's sharp edges, where the two resize filters differ most). ``MEAN_TOL`` = 8 levels,
the GPU test's bound, leaves room for other builds of either library.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.decode.dali import dali_installed, decode_dali
from pipeline.decode.video import decode_video
from tests.decode_checks import assert_matches_ffmpeg
from tests.videos import make_video, remux

pytestmark = [
    pytest.mark.dali,
    pytest.mark.skipif(not dali_installed(), reason="needs DALI (make test-dali installs it)"),
]

R, S = 8, 48
MEAN_TOL = 8.0
SIZE = (96, 64)
# 20 frames at 20 fps, then 20 at 5 fps: a variable frame rate.
VFR_TIMES = [0.05 * i for i in range(20)] + [1.0 + 0.2 * i for i in range(20)]

VIDEOS = {
    "vp9.webm": {"codec": "libvpx-vp9", "frames": 45},
    "vp9_gop10.webm": {"codec": "libvpx-vp9", "frames": 45, "gop": 10},
    "vp8.webm": {"codec": "libvpx", "frames": 30},
    "vp9_rot90.webm": {"codec": "libvpx-vp9", "frames": 20, "rotation": 90},
    "vp9_rot270.mkv": {"codec": "libvpx-vp9", "frames": 20, "rotation": 270},
    "vp9_vfr.webm": {"codec": "libvpx-vp9", "frames": 40, "times_s": VFR_TIMES},
    "vp9_short.webm": {"codec": "libvpx-vp9", "frames": 5},  # fewer frames than R
    "mjpeg.avi": {"codec": "mjpeg", "frames": 20, "pix_fmt": "yuvj420p"},
}
# quarter turns counter-clockwise of the upright output
TURNS = {"vp9_rot90.webm": 1, "vp9_rot270.mkv": 3}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dali_cpu")
    paths = {name: make_video(root / name, size=SIZE, **kw) for name, kw in VIDEOS.items()}
    # Written through a pipe: a WebM without duration or cues in its header.
    paths["vp9_piped.webm"] = remux(paths["vp9.webm"], root / "vp9_piped.webm", "webm")
    paths["h264.mp4"] = make_video(root / "h264.mp4", size=SIZE, frames=20)
    return paths


@pytest.mark.parametrize("name", [*VIDEOS, "vp9_piped.webm"])
def test_dali_pipeline_matches_ffmpeg(videos, name):
    cpu = decode_video(videos[name], R, S, backend="ffmpeg")
    dali = decode_dali(videos[name], R, S, device="cpu")
    assert dali.backend == "dali", "fell back to ffmpeg"
    assert dali.fps == pytest.approx(cpu.fps) and dali.duration_s == pytest.approx(cpu.duration_s)
    assert_matches_ffmpeg(dali, cpu, S, TURNS.get(name, 0), MEAN_TOL)


def test_codec_the_cpu_decoder_lacks_falls_back_to_ffmpeg(videos):
    """DALI's CPU decoder has no H.264: the backend decodes it with FFmpeg, identically."""
    cpu = decode_video(videos["h264.mp4"], R, S, backend="ffmpeg")
    dali = decode_dali(videos["h264.mp4"], R, S, device="cpu")
    assert dali.backend == "ffmpeg" and dali.indices == cpu.indices
    np.testing.assert_array_equal(dali.frames, cpu.frames)

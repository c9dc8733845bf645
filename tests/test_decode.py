"""Frame sampling and the CPU decoding backend on real videos generated with FFmpeg.

The bad-input matrix: every case is generated here (no binary is stored), decoded with
``decode_video`` and checked for its exact outcome: the frames it must show (read back from
the pattern of ``tests/videos.py``), their orientation and colours, the frame count, or the
reason of the ``DecodeError``.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.decode.common import DecodedVideo, DecodeError, resized_shape
from pipeline.decode.pyav import frame_to_rgb
from pipeline.decode.video import available_backends, decode_video, resolve_backend
from pipeline.sampling import segment_midpoints, uniform_subset
from tests.videos import (
    QUADRANT_COLOURS,
    make_audio_only,
    make_video,
    quadrant_colours,
    read_index,
    remux,
    transcode,
    truncate,
)

R, S = 8, 64
# Colour tolerance per channel after lossy 4:2:0 coding, resizing and RGB conversion.
COLOUR_TOL = 12
VFR_TIMES = [0.05 * i for i in range(20)] + [1.0 + 0.2 * i for i in range(20)]


# --- sampling --------------------------------------------------------------------------------


def _midpoints_by_definition(n: int, r: int) -> list[int]:
    """Segment k = [floor(k n / r), floor((k+1) n / r)); its midpoint; empty -> its start."""
    out = []
    for k in range(r):
        start, end = (k * n) // r, ((k + 1) * n) // r
        out.append(min((start + max(end, start + 1) - 1) // 2, n - 1))
    return out


def test_segment_midpoints_match_frozen_uniform_sampling():
    # Frozen in Time's test-time sampling gives these indices on the same inputs.
    assert segment_midpoints(10, 4) == [0, 3, 5, 8]
    assert segment_midpoints(300, 4) == [37, 112, 187, 262]


def test_segment_midpoints_against_definition():
    for n in range(1, 80):
        for r in (1, 2, 3, 4, 7, 8, 12, 16, 32):
            got = segment_midpoints(n, r)
            assert got == _midpoints_by_definition(n, r), (n, r)
            assert len(got) == r and got == sorted(got)
            assert got[0] >= 0 and got[-1] < n
            if n >= r:
                assert len(set(got)) == r, (
                    n,
                    r,
                )  # distinct frames when there are enough


def test_segment_midpoints_repeat_short_videos():
    assert segment_midpoints(1, 4) == [0, 0, 0, 0]
    assert segment_midpoints(2, 4) == [0, 0, 1, 1]
    assert segment_midpoints(3, 4) == [0, 0, 1, 2]
    with pytest.raises(ValueError, match="n >= 1"):
        segment_midpoints(0, 4)


def test_uniform_subset_picks_stored_positions():
    assert uniform_subset(32, 4) == segment_midpoints(32, 4) == [3, 11, 19, 27]
    assert uniform_subset(4, 4) == [0, 1, 2, 3]
    assert uniform_subset(2, 4) == [0, 0, 1, 1]


def test_resized_shape_keeps_aspect_with_short_side_s():
    # 320 * 224 / 240 = 298.7 -> 298 (even), 321 * 64 / 241 = 85.2 -> 86 (even).
    assert resized_shape(320, 240, 224) == (298, 224)
    assert resized_shape(240, 320, 224) == (224, 298)
    assert resized_shape(640, 360, 224) == (398, 224)
    assert resized_shape(321, 241, 64) == (86, 64)
    assert resized_shape(64, 64, 64) == (64, 64)
    assert resized_shape(100, 101, 64) == (64, 64)  # never below S


# --- the generated videos ----------------------------------------------------------------------

# name -> make_video keyword arguments (file names without an extension get .mp4).
VIDEOS = {
    "h264": {"frames": 90},  # libx264 defaults: B-frames, one GOP
    "h264_gop10": {"frames": 90, "gop": 10},
    "vfr": {"frames": 40, "times_s": VFR_TIMES},
    "rot90": {"frames": 20, "rotation": 90},
    "rot270": {"frames": 20, "rotation": 270},
    "odd.webm": {"codec": "libvpx-vp9", "size": (321, 241), "frames": 20},
    "alpha.webm": {"codec": "libvpx-vp9", "pix_fmt": "yuva420p", "frames": 20},
    "png.mov": {"codec": "png", "pix_fmt": "rgba", "frames": 12},
    "qtrle.mov": {"codec": "qtrle", "pix_fmt": "argb", "frames": 12},
    "h264_10bit": {"pix_fmt": "yuv420p10le", "frames": 20},
    "hevc_10bit": {"codec": "libx265", "pix_fmt": "yuv420p10le", "frames": 20},
    "mpeg4.avi": {"codec": "mpeg4", "frames": 40, "bframes": 2, "gop": 12},
    "one": {"frames": 1},
    "raw.h264": {"frames": 30, "container_format": "h264"},
}


@pytest.fixture(scope="session")
def videos(tmp_path_factory) -> dict[str, Path]:
    """Every test video of this module, generated once per session (about 1.5 s)."""
    root = tmp_path_factory.mktemp("decode_videos")
    paths = {}
    for name, kwargs in VIDEOS.items():
        paths[name] = make_video(
            root / (name if "." in name else f"{name}.mp4"), **kwargs
        )
    paths["piped.mkv"] = remux(
        paths["h264"], root / "piped.mkv", "matroska", piped=True
    )
    # Xvid in AVI packs B-frames with their P-frame and leaves placeholder packets (MSVD's format).
    xvid = {"c:v": "libxvid", "bf": 2, "g": 12}
    paths["xvid.avi"] = transcode(paths["h264"], root / "xvid.avi", **xvid)
    full_mkv = remux(paths["h264"], root / "full.mkv", "matroska", piped=False)
    paths["truncated.mkv"] = truncate(full_mkv, root / "truncated.mkv", 0.6)
    paths["truncated.mp4"] = truncate(paths["h264"], root / "truncated.mp4", 0.6)
    paths["audio.mp4"] = make_audio_only(root / "audio.mp4")
    paths["text.mp4"] = root / "text.mp4"
    paths["text.mp4"].write_text("this is a text file, not a video\n")
    paths["empty.mp4"] = root / "empty.mp4"
    paths["empty.mp4"].write_bytes(b"")
    paths["missing.mp4"] = root / "missing.mp4"
    return paths


def _reference(path: Path, r: int, size: int) -> tuple[np.ndarray, list[int], int]:
    """Brute force: decode every frame in order, pick the segment midpoints, convert them."""
    frames = []
    with av.open(str(path)) as container:
        for packet in container.demux(video=0):
            try:
                frames.extend(packet.decode())
            except av.error.FFmpegError:
                continue  # a damaged packet yields no frame
    indices = segment_midpoints(len(frames), r)
    return (
        np.stack([frame_to_rgb(frames[i], size) for i in indices]),
        indices,
        len(frames),
    )


def _assert_shows(video: DecodedVideo, n: int, quarter_turns: int = 0) -> None:
    """The video has n frames, R frames at the midpoints, each showing its own pattern."""
    assert video.num_frames == n
    assert video.indices == segment_midpoints(n, R)
    assert video.frames.shape == (R, S, S, 3) and video.frames.dtype == np.uint8
    upright = [np.rot90(f, -quarter_turns) for f in video.frames]
    assert [read_index(f) for f in upright] == video.indices
    expected = np.rot90(np.array(QUADRANT_COLOURS).reshape(2, 2, 3), quarter_turns)
    for frame in video.frames:
        got = np.array(quadrant_colours(frame)).reshape(2, 2, 3)
        assert np.abs(got - expected).max() <= COLOUR_TOL, (
            got.tolist(),
            expected.tolist(),
        )


# --- correct decoding --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["h264", "h264_gop10", "mpeg4.avi", "piped.mkv", "vfr"]
)
def test_decode_equals_decode_everything(videos, name):
    """GOP skipping, non-reference skipping and timestamp matching change no pixel."""
    video = decode_video(videos[name], R, S)
    frames, indices, n = _reference(videos[name], R, S)
    assert video.indices == indices and video.num_frames == n
    np.testing.assert_array_equal(video.frames, frames)


@pytest.mark.parametrize("r", [1, 2, 8])
def test_packed_b_frames_are_numbered_in_display_order(videos, r):
    """Xvid AVI timestamps do not follow the display order: frames are counted as decoded.

    Matching targets by timestamp here would show a neighbour of the target (R=1, R=2).
    """
    video = decode_video(videos["xvid.avi"], r, S)
    frames, indices, n = _reference(videos["xvid.avi"], r, S)
    assert 88 <= n <= 90  # the final packed frames may be lost with their placeholders
    assert video.num_frames == n and video.indices == indices
    assert [read_index(f) for f in video.frames] == indices
    np.testing.assert_array_equal(video.frames, frames)


def test_long_gop_h264_with_b_frames(videos):
    with av.open(str(videos["h264"])) as container:
        assert container.streams.video[
            0
        ].codec_context.has_b_frames  # the case under test
    video = decode_video(videos["h264"], R, S)
    _assert_shows(video, 90)
    assert (
        video.backend == "ffmpeg"
        and video.codec == "h264"
        and video.pix_fmt == "yuv420p"
    )
    assert video.fps == pytest.approx(30.0) and video.duration_s == pytest.approx(3.0)
    assert (video.width, video.height, video.rotation) == (96, 64, 0)
    # Non-reference B-frames without a target are skipped, not decoded.
    assert video.decoded_frames < video.num_frames


def test_short_gop_decodes_only_target_gops(videos):
    video = decode_video(videos["h264_gop10"], 4, S)
    assert video.indices == segment_midpoints(90, 4) == [10, 33, 55, 78]
    assert [read_index(f) for f in video.frames] == video.indices
    # Four GOPs of ten frames hold a target; the decoder stops at each target.
    assert video.decoded_frames <= 4 * 10


def test_more_frames_requested_than_the_video_has(videos):
    video = decode_video(videos["h264_gop10"], 128, 32)
    assert video.frames.shape == (128, 32, 32, 3)
    assert video.indices == segment_midpoints(90, 128)
    assert [read_index(f) for f in video.frames] == video.indices


BAD_INPUT_DECODED = {
    # name: (frame count, quarter turns counter-clockwise, codec, pixel format)
    "one": (1, 0, "h264", "yuv420p"),
    "vfr": (40, 0, "h264", "yuv420p"),
    "raw.h264": (30, 0, "h264", "yuv420p"),
    "piped.mkv": (90, 0, "h264", "yuv420p"),
    "rot90": (20, 1, "h264", "yuv420p"),
    "rot270": (20, 3, "h264", "yuv420p"),
    "odd.webm": (20, 0, "vp9", "yuv420p"),
    "alpha.webm": (20, 0, "vp9", "yuv420p"),
    "png.mov": (12, 0, "png", "rgba"),
    "qtrle.mov": (12, 0, "qtrle", "argb"),
    "h264_10bit": (20, 0, "h264", "yuv420p10le"),
    "hevc_10bit": (20, 0, "hevc", "yuv420p10le"),
    "mpeg4.avi": (40, 0, "mpeg4", "yuv420p"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUT_DECODED))
def test_awkward_inputs_decode_correctly(videos, name):
    n, quarter_turns, codec, pix_fmt = BAD_INPUT_DECODED[name]
    video = decode_video(videos[name], R, S)
    _assert_shows(video, n, quarter_turns)
    assert (video.codec, video.pix_fmt) == (codec, pix_fmt)
    assert video.rotation == 90 * quarter_turns


def test_rotated_video_reports_upright_size(videos):
    video = decode_video(videos["rot90"], R, S)
    assert (video.width, video.height) == (64, 96)  # encoded 96x64, displayed portrait


def test_timing_comes_from_timestamps_not_headers(videos):
    vfr = decode_video(videos["vfr"], R, S)
    # 40 frames shown from 0 s to 4.8 s, plus the last frame's duration (the muxer's guess).
    assert VFR_TIMES[-1] < vfr.duration_s <= VFR_TIMES[-1] + 0.2
    assert vfr.fps == pytest.approx(40 / vfr.duration_s)
    with av.open(str(videos["piped.mkv"])) as container:
        assert container.duration is None  # nothing in the header
    piped = decode_video(videos["piped.mkv"], R, S)
    assert piped.duration_s == pytest.approx(
        3.0, abs=0.01
    ) and piped.fps == pytest.approx(30, abs=0.3)
    raw = decode_video(
        videos["raw.h264"], R, S
    )  # no timestamps at all: the stream's rate
    assert raw.fps == pytest.approx(30.0) and raw.duration_s == pytest.approx(1.0)


def test_truncated_streamable_file_decodes_what_is_there(videos):
    video = decode_video(videos["truncated.mkv"], R, S)
    frames, indices, n = _reference(videos["truncated.mkv"], R, S)
    assert 0 < n < 90
    assert video.num_frames == n and video.indices == indices
    assert [read_index(f) for f in video.frames] == indices
    np.testing.assert_array_equal(video.frames, frames)


def test_damaged_packets_fall_back_to_counting_decoded_frames(videos, tmp_path):
    """Garbage in the middle of the data: the frames that decode are numbered as decoded."""
    data = bytearray(videos["h264"].read_bytes())
    third = len(data) // 3
    data[third : 2 * third] = np.random.default_rng(0).bytes(third)
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    video = decode_video(damaged, R, S)
    frames, indices, n = _reference(damaged, R, S)
    assert 0 < n < 90  # some packets no longer decode
    assert video.num_frames == n and video.indices == indices
    np.testing.assert_array_equal(video.frames, frames)


# --- errors ------------------------------------------------------------------------------------

BAD_INPUT_ERRORS = {
    "missing.mp4": "file not found",
    "empty.mp4": "file is empty",
    "text.mp4": "not a video file FFmpeg can read (Invalid data found when processing input)",
    # moov atom at the end of the file: cut off, so nothing can be demuxed.
    "truncated.mp4": "not a video file FFmpeg can read (Invalid data found when processing input)",
    "audio.mp4": "no video stream (audio-only or data file)",
}


@pytest.mark.parametrize("name", sorted(BAD_INPUT_ERRORS))
def test_undecodable_inputs_raise_decode_error_with_reason(videos, name):
    with pytest.raises(DecodeError) as info:
        decode_video(videos[name], R, S)
    assert info.value.reason == BAD_INPUT_ERRORS[name]
    assert str(info.value) == BAD_INPUT_ERRORS[name]


def test_invalid_arguments_are_value_errors(videos):
    with pytest.raises(ValueError, match="num_frames and size"):
        decode_video(videos["one"], 0, S)
    with pytest.raises(ValueError, match="backend must be one of"):
        decode_video(videos["one"], R, S, backend="opencv")


def test_backend_resolution():
    assert "ffmpeg" in available_backends()
    assert resolve_backend("ffmpeg") == "ffmpeg"
    assert resolve_backend("auto") in available_backends()
    if "dali" not in available_backends():
        assert resolve_backend("auto") == "ffmpeg"
        with pytest.raises(ValueError, match="needs a CUDA GPU and DALI"):
            resolve_backend("dali")

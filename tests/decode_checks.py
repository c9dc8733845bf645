"""Checks shared by the tests that compare a backend's frames with the ``ffmpeg`` backend's."""

from __future__ import annotations

import numpy as np

from pipeline.decode.common import DecodedVideo
from pipeline.sampling import segment_midpoints
from tests.videos import read_index

__all__ = ["assert_matches_ffmpeg"]


def assert_matches_ffmpeg(
    other: DecodedVideo, cpu: DecodedVideo, size: int, turns: int, mean_tol: float
) -> None:
    """``other`` shows the frames ``cpu`` (the ``ffmpeg`` backend) shows, within ``mean_tol``.

    Args:
        other: the video decoded by the backend under test.
        cpu: the same video decoded by the ``ffmpeg`` backend.
        size: S, the output side.
        turns: quarter turns counter-clockwise of the upright output (display rotation).
        mean_tol: the largest mean absolute difference per frame, in levels of 255.
    """
    r = len(cpu.indices)
    assert other.num_frames == cpu.num_frames
    assert other.indices == cpu.indices == segment_midpoints(cpu.num_frames, r)
    assert other.frames.shape == (r, size, size, 3) and other.frames.dtype == np.uint8
    assert (other.width, other.height, other.rotation) == (cpu.width, cpu.height, cpu.rotation)
    assert [read_index(np.rot90(f, -turns)) for f in other.frames] == other.indices
    diff = np.abs(other.frames.astype(np.int16) - cpu.frames.astype(np.int16))
    per_frame = diff.reshape(r, -1).mean(axis=1)
    assert per_frame.max() <= mean_tol, per_frame.tolist()

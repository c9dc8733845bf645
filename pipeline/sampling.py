"""Frame-index selection shared by the decoders, the trainer and the evaluator.

All functions work in *frame indices* (positions in the decoded frame sequence, presentation
order), never in seconds, so that every backend picks the same frames of a video whatever its
timestamps look like (variable frame rate, missing durations).
"""

from __future__ import annotations

import numpy as np

__all__ = ["segment_midpoints", "uniform_subset"]


def segment_midpoints(n: int, r: int) -> list[int]:
    """Pick ``r`` frames at the midpoints of ``r`` equal segments of ``n`` frames.

    Segment ``k`` covers the frames ``[edges[k], edges[k + 1])`` with
    ``edges = linspace(0, n, r + 1)`` truncated to integers, and contributes the frame
    ``(start + end - 1) // 2``: the test-time ("uniform") sampling of Frozen in Time, e.g.
    ``n=10, r=4 -> [0, 3, 5, 8]``. When ``n < r`` some segments are empty; an empty segment
    takes its start frame, so frames repeat in order (``n=2, r=4 -> [0, 0, 1, 1]``).

    Args:
        n: number of frames in the sequence (>= 1).
        r: number of frames to pick (>= 1).

    Returns:
        ``r`` non-decreasing frame indices in ``[0, n)``.

    Raises:
        ValueError: if ``n`` or ``r`` is smaller than 1.
    """
    if n < 1 or r < 1:
        raise ValueError(f"segment_midpoints needs n >= 1 and r >= 1, got n={n}, r={r}")
    edges = np.linspace(0, n, r + 1).astype(np.int64)
    starts, ends = edges[:-1], edges[1:]
    # An empty segment (only when n < r) behaves as the one-frame segment [start, start + 1).
    ends = np.maximum(ends, starts + 1)
    mids = np.minimum((starts + ends - 1) // 2, n - 1)
    return [int(i) for i in mids]


def uniform_subset(r_stored: int, u: int) -> list[int]:
    """Positions of ``u`` frames at the segment midpoints of ``r_stored`` stored frames.

    Used to initialise the learnable frames and to pick the test-time frames from a shard
    sample that holds ``r_stored`` frames (docs/decoding.md, "Which frames").

    Args:
        r_stored: frames stored per video in the shard (R).
        u: frames the model sees (U).

    Returns:
        ``u`` positions in ``[0, r_stored)``, non-decreasing (repeats when ``u > r_stored``).

    Raises:
        ValueError: if ``r_stored`` or ``u`` is smaller than 1.
    """
    return segment_midpoints(r_stored, u)

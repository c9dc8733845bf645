"""Records and sample types that cross module boundaries of the data pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np

__all__ = ["SHARD_FORMAT_VERSION", "ShardSample", "VideoRecord"]

# Bump when a field of the shard sample's json or its array layout changes.
SHARD_FORMAT_VERSION = 1


@dataclass(frozen=True)
class VideoRecord:
    """One video of a dataset split, as a manifest parser yields it.

    Attributes:
        video_id: the dataset's own id (e.g. ``video7020``, a DiDeMo file name).
        path: the video file, relative to the dataset root.
        captions: every caption that is a query for this video, in file order.
        split: ``train``, ``val`` or ``test``.
        extra: parser-specific facts kept for provenance (e.g. a source line number).
    """

    video_id: str
    path: str
    captions: tuple[str, ...]
    split: str
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


class ShardSample(TypedDict):
    """One sample as the shard reader yields it.

    ``frames`` is uint8 ``(R, S, S, 3)`` RGB; ``meta`` is the sample's json (``video_id``,
    ``captions``, ``split``, ``dataset``, ``source``, ``fps``, ``num_frames``, ``duration_s``,
    ``indices``, ``backend``, ``format_version``).
    """

    key: str
    frames: np.ndarray
    meta: dict[str, Any]

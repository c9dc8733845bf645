"""The MOF store's format: its arrays and attributes, the row record, creating and checking one.

:class:`pipeline.framestore.store.FrameStore` is the handle that opens a store and reads and writes
its rows; this module holds what does not need an open store.

One store per training run (``runs/<name>/mof.zarr``), a Zarr v3 group on the local disk::

    frames      (N, U, 3, H, W)  float16 | float32   the learnable frames ε, model-normalised
    exp_avg     (N, U, 3, H, W)  float32 (| float16)  Adam first moment of each video
    exp_avg_sq  (N, U, 3, H, W)  float32              Adam second moment (never float16: squared
                                                      meta-gradients underflow there)
    step        (N,)             int64                Adam steps taken per video; -1 = never
                                                      initialised
    video_ids   (N,)             string               the video id of each row

A ``mix`` store (``frame_param`` attribute; each learnable frame a softmax mix of the video's R
fixed regular frames plus a pixel residual, see ``docs/variants.md``) adds, with ``frames``
still holding the frame the model sees::

    mix_logits      (N, U, R)    float32              mixing logits of each learnable frame
    mix_exp_avg     (N, U, R)    float32              their Adam first moment
    mix_exp_avg_sq  (N, U, R)    float32              their Adam second moment

Every array is chunked one video per chunk and never sharded: a sharded write rewrites the whole
shard, multiplying the write volume and losing updates when two processes write rows of one
shard. Zarr's local store writes each chunk to a temporary name and renames it, so a killed
writer never leaves a torn chunk (only an orphan ``*.partial`` file, swept at the next
``open(..., "r+")``), and processes writing disjoint rows never lose each other's updates.

The group's attributes record what the store was built for (``U``, ``R``, ``H``, ``W``,
``mean``, ``std``, ``dataset``, ``shards``, ``dtype``, ``frame_param``), the ``format_version``, the
``last_phase`` completed and the ``initialised_rows`` count. See ``docs/framestore.md``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
import zarr.codecs

from pipeline.atomic import atomic_directory
from pipeline.errors import MofError

__all__ = [
    "EXPECTABLE",
    "FIELDS",
    "FRAME_STORE_FORMAT_VERSION",
    "MIX_FIELDS",
    "READABLE_FORMAT_VERSIONS",
    "FrameRows",
    "FrameStoreMismatchError",
    "attribute_mismatches",
    "bytes_per_video",
    "check_fields",
    "create_store",
    "sweep_partial_files",
]

# Bump when an array, its dtype or an attribute changes meaning. 2: the ``frame_param``
# attribute and the ``mix_*`` arrays of a ``mix`` store.
FRAME_STORE_FORMAT_VERSION = 2
#: Versions :meth:`FrameStore.open` reads: a version-1 store is a ``pixels`` store.
READABLE_FORMAT_VERSIONS = (1, 2)

#: What a row of a ``pixels`` store holds; ``FrameStore.read(rows, fields=...)`` reads a subset.
FIELDS = ("frames", "exp_avg", "exp_avg_sq", "step")
#: The arrays a ``mix`` store adds, each ``(N, U, R)``.
MIX_FIELDS = ("mix_logits", "mix_exp_avg", "mix_exp_avg_sq")
_ALL_FIELDS = FIELDS + MIX_FIELDS
_FRAME_PARAMS = ("pixels", "mix")
_DTYPES = ("float16", "float32")
_COMPRESSIONS = ("blosc-lz4", "blosc-zstd")
#: Attributes a run may pin with ``FrameStore.open(..., expect=...)``.
EXPECTABLE = ("U", "R", "H", "W", "mean", "std", "dataset", "shards", "dtype", "num_videos",
              "frame_param")


class FrameStoreMismatchError(MofError, ValueError):
    """The store on disk was built for another run (other U, size, dataset, shards...)."""


@dataclass
class FrameRows:
    """The state of ``n`` videos as read from or written to the store.

    A read of some :data:`FIELDS` only (``FrameStore.read(rows, fields=("frames",))``) leaves
    the others ``None``; a write needs all four.

    Attributes:
        frames: float32 ``(n, U, 3, H, W)`` learnable frames in the model's normalised space.
        exp_avg: float32 ``(n, U, 3, H, W)`` Adam first moment, or ``None`` (not read).
        exp_avg_sq: float32 ``(n, U, 3, H, W)`` Adam second moment, or ``None`` (not read).
        step: int64 ``(n,)`` Adam steps taken by each video (-1: never initialised), or
            ``None`` (not read).
        mix_logits, mix_exp_avg, mix_exp_avg_sq: float32 ``(n, U, R)``, a ``mix`` store's
            mixing logits and their Adam moments, or ``None`` (a ``pixels`` store; not read).
    """

    frames: np.ndarray
    exp_avg: np.ndarray | None = None
    exp_avg_sq: np.ndarray | None = None
    step: np.ndarray | None = None
    mix_logits: np.ndarray | None = None
    mix_exp_avg: np.ndarray | None = None
    mix_exp_avg_sq: np.ndarray | None = None

    def __post_init__(self) -> None:
        shape = np.shape(self.frames)
        problems = [
            f"{name} has shape {np.shape(getattr(self, name))}, frames has {shape}"
            for name in ("exp_avg", "exp_avg_sq")
            if getattr(self, name) is not None and np.shape(getattr(self, name)) != shape
        ]
        if len(shape) != 5 or shape[2] != 3:
            problems.append(f"frames must be (n, U, 3, H, W), got shape {shape}")
        elif self.step is not None and np.shape(self.step) != shape[:1]:
            problems.append(f"step has shape {np.shape(self.step)}, expected {shape[:1]}")
        mix = [np.shape(getattr(self, n)) for n in MIX_FIELDS if getattr(self, n) is not None]
        if mix and (len(set(mix)) > 1 or len(mix[0]) != 3 or mix[0][:2] != shape[:2]):
            problems.append(f"mix arrays have shapes {mix}, expected (n, U, R) with (n, U) = "
                            f"{shape[:2]}")
        if problems:
            raise ValueError("invalid FrameRows: " + "; ".join(problems))

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields this object holds (in :data:`FIELDS` + :data:`MIX_FIELDS` order)."""
        return tuple(name for name in _ALL_FIELDS if getattr(self, name) is not None)

    def take(self, index: Sequence[int] | np.ndarray) -> FrameRows:
        """The rows at positions ``index`` of this batch (positions, not store rows)."""
        index = np.asarray(index, dtype=np.int64)
        return FrameRows(**{name: getattr(self, name)[index] for name in self.fields})


def check_fields(fields: Sequence[str], available: Sequence[str] = _ALL_FIELDS
                 ) -> tuple[str, ...]:
    """Validate a ``fields=`` selection; returns it in :data:`FIELDS` + :data:`MIX_FIELDS` order.

    Args:
        fields: the selection.
        available: the fields of the store it is for (a ``pixels`` store has no mix fields).

    Raises:
        ValueError: not a subset of ``available`` that holds ``frames`` (every
            :class:`FrameRows` has its frames).
    """
    if isinstance(fields, str) or "frames" not in fields or set(fields) - set(available):
        raise ValueError(f"fields must be a subset of {tuple(available)} with 'frames', got "
                         f"{fields!r}")
    return tuple(name for name in _ALL_FIELDS if name in fields)


def bytes_per_video(
    num_frames: int, frame_size: int, dtype: str = "float16", exp_avg_dtype: str = "float32",
    mix_regular_frames: int = 0,
) -> int:
    """Uncompressed bytes one video occupies in the store (frames, both moments, step).

    ``mix_regular_frames``: R of a ``mix`` store, whose three float32 ``(U, R)`` arrays add
    ``12 U R`` bytes; 0 for a ``pixels`` store.
    """
    pixels = num_frames * 3 * frame_size * frame_size
    itemsize = np.dtype(dtype).itemsize + np.dtype(exp_avg_dtype).itemsize + 4
    mix = len(MIX_FIELDS) * 4 * num_frames * mix_regular_frames
    return pixels * itemsize + np.dtype(np.int64).itemsize + mix


def _check_create_args(
    video_ids: Sequence[str], num_frames: int, frame_size: int, regular_frames: int,
    mean: Sequence[float], std: Sequence[float], dataset: str, dtype: str, exp_avg_dtype: str,
    compression: str | None, frame_param: str,
) -> None:
    problems = []
    if frame_param not in _FRAME_PARAMS:
        problems.append(f"frame_param must be one of {_FRAME_PARAMS}, got {frame_param!r}")
    if len(video_ids) == 0:
        problems.append("video_ids is empty")
    elif len(set(video_ids)) != len(video_ids):
        seen: set[str] = set()
        dups = sorted({v for v in video_ids if v in seen or seen.add(v)})
        problems.append(f"video_ids has duplicates: {dups[:10]}")
    for name, value in (("num_frames", num_frames), ("frame_size", frame_size),
                        ("regular_frames", regular_frames)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            problems.append(f"{name} must be a positive integer, got {value!r}")
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        problems.append(f"mean and std must be 3 values with std > 0, got {mean!r}, {std!r}")
    if not dataset:
        problems.append("dataset must be a non-empty name")
    for name, value in (("dtype", dtype), ("exp_avg_dtype", exp_avg_dtype)):
        if value not in _DTYPES:
            problems.append(f"{name} must be one of {_DTYPES}, got {value!r}")
    if compression is not None and compression not in _COMPRESSIONS:
        problems.append(f"compression must be None or one of {_COMPRESSIONS}, got {compression!r}")
    if problems:
        raise ValueError("cannot create frame store: " + "; ".join(problems))


def _compressors(compression: str | None) -> list | None:
    if compression is None:
        return None
    # Byte-shuffle suits float data; clevel 1 because the store is rewritten every phase and
    # higher levels cost far more write CPU than they save (float16 frames compress ~1.6x).
    cname = compression.split("-", 1)[1]
    return [zarr.codecs.BloscCodec(cname=cname, clevel=1, shuffle="shuffle")]


def create_store(
    path: str | os.PathLike,
    video_ids: Sequence[str],
    *,
    num_frames: int,
    frame_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    regular_frames: int,
    shards: Sequence[str],
    dataset: str,
    dtype: Literal["float16", "float32"] = "float16",
    exp_avg_dtype: Literal["float16", "float32"] = "float32",
    compression: str | None = None,
    overwrite: bool = False,
    frame_param: Literal["pixels", "mix"] = "pixels",
) -> Path:
    """Create an empty store on disk (every row uninitialised); returns its path.

    Args:
        path: the store directory (``runs/<name>/mof.zarr``).
        video_ids: the training videos; row ``i`` holds ``video_ids[i]``.
        num_frames: U, learnable frames per video.
        frame_size: H = W, the model's input size in pixels.
        mean: per-channel RGB mean of the model's normalisation (pixels in [0, 1]).
        std: per-channel RGB std of the model's normalisation.
        regular_frames: R, the regular frames per video the frames are trained against.
        shards: the train shards the frames are initialised from (recorded, compared).
        dataset: the dataset name.
        dtype: storage dtype of the frames (they are read back as float32).
        exp_avg_dtype: storage dtype of the Adam first moment; the second moment is
            always float32.
        compression: ``None`` (default: the store is rewritten every phase and Blosc saves
            little on float frames), ``"blosc-lz4"`` or ``"blosc-zstd"``.
        overwrite: replace an existing store at ``path``.
        frame_param: ``pixels``, or ``mix`` to add the :data:`MIX_FIELDS` arrays
            ``(N, U, R)`` (the mixing logits over R regular frames and their Adam moments).

    Raises:
        ValueError: invalid arguments (all problems listed).
        FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    video_ids = [str(v) for v in video_ids]
    _check_create_args(video_ids, num_frames, frame_size, regular_frames, mean, std,
                       dataset, dtype, exp_avg_dtype, compression, frame_param)
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"frame store {path} exists (pass overwrite=True to replace)")
    # Built under a temporary name and swapped in: a store directory is never half-created.
    with atomic_directory(path) as tmp:
        group = zarr.open_group(tmp, mode="w")
        shape = (len(video_ids), num_frames, 3, frame_size, frame_size)
        for name, dt in (("frames", dtype), ("exp_avg", exp_avg_dtype), ("exp_avg_sq", "float32")):
            group.create_array(name, shape=shape, chunks=(1, *shape[1:]), dtype=dt,
                               fill_value=0.0, compressors=_compressors(compression))
        if frame_param == "mix":
            mix_shape = (len(video_ids), num_frames, regular_frames)
            for name in MIX_FIELDS:
                group.create_array(name, shape=mix_shape, chunks=(1, *mix_shape[1:]),
                                   dtype="float32", fill_value=0.0,
                                   compressors=_compressors(compression))
        group.create_array("step", shape=shape[:1], chunks=(1,), dtype="int64", fill_value=-1)
        ids = group.create_array("video_ids", shape=shape[:1], chunks=shape[:1], dtype=str)
        ids[:] = np.asarray(video_ids)
        group.attrs.update({
            "format_version": FRAME_STORE_FORMAT_VERSION,
            "U": int(num_frames), "R": int(regular_frames),
            "H": int(frame_size), "W": int(frame_size),
            "mean": [float(m) for m in mean], "std": [float(s) for s in std],
            "dataset": str(dataset), "shards": [str(s) for s in shards],
            "dtype": dtype, "exp_avg_dtype": exp_avg_dtype, "compression": compression,
            "num_videos": len(video_ids), "last_phase": -1, "initialised_rows": 0,
            "frame_param": frame_param,
        })
    return path


def attribute_mismatches(attrs: dict[str, Any], expect: dict[str, Any]) -> list[str]:
    """One line per ``expect`` entry whose value differs from the store's ``attrs``.

    ``mean``/``std`` compare to a relative 1e-6 and ``shards`` as a set of names.

    Raises:
        ValueError: keys outside :data:`EXPECTABLE`.
    """
    unknown = sorted(set(expect) - set(EXPECTABLE))
    if unknown:
        raise ValueError(f"cannot expect {unknown}; expectable attributes: {EXPECTABLE}")
    problems = []
    for key, want in expect.items():
        # A version-1 store predates frame_param: it is a pixels store.
        have = attrs.get(key, "pixels" if key == "frame_param" else None)
        if key in ("mean", "std"):
            same = have is not None and np.allclose(have, want, rtol=1e-6, atol=0)
        elif key == "shards":
            same = sorted(map(str, have or [])) == sorted(map(str, want))
        else:
            same = have == want
        if not same:
            problems.append(f"{key}: store has {have!r}, run expects {want!r}")
    return problems


def sweep_partial_files(path: str | os.PathLike, min_age_s: float = 60.0) -> list[Path]:
    """Delete orphan ``*.partial`` chunk files older than ``min_age_s`` seconds under ``path``.

    Zarr writes every chunk to ``<key>.<uuid>.partial`` and renames it; a writer killed in
    between leaves the temporary file behind. Returns the removed paths.
    """
    now, removed = time.time(), []
    for folder, _, files in os.walk(path):
        for name in files:
            if not name.endswith(".partial"):
                continue
            file = Path(folder, name)
            try:
                if now - file.stat().st_mtime >= min_age_s:
                    file.unlink()
                    removed.append(file)
            except FileNotFoundError:  # renamed or swept by another process meanwhile
                continue
    return removed

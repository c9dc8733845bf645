"""The MOF store's handle: open a store, read and write rows of U learnable frames and Adam state.

The format (arrays, attributes, the :class:`FrameRows` record, creation, the sweep of orphan
``*.partial`` files) is :mod:`pipeline.framestore.format`; import its names from there. Every
array is chunked one video per chunk, and Zarr's local store writes each chunk to a temporary
name and renames it, so a killed writer never leaves a torn chunk and processes writing disjoint
rows never lose each other's updates. See ``docs/framestore.md``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import zarr

from pipeline.framestore.format import (
    FIELDS,
    MIX_FIELDS,
    READABLE_FORMAT_VERSIONS,
    FrameRows,
    FrameStoreMismatchError,
    attribute_mismatches,
    bytes_per_video,
    check_fields,
    create_store,
    sweep_partial_files,
)

if TYPE_CHECKING:  # typing.Self is 3.11+; annotations are never evaluated here
    from typing import Self

__all__ = ["FrameStore"]

_STATE_ARRAYS = FIELDS[:3]  # the float arrays of a row's frames


def _as_rows(rows: Sequence[int] | np.ndarray, num_videos: int) -> np.ndarray:
    """Validate store row indices: 1-D, integers in ``[0, N)``, no duplicates."""
    out = np.asarray(rows)
    if out.ndim != 1 or (out.size and not np.issubdtype(out.dtype, np.integer)):
        raise ValueError(f"rows must be a 1-D sequence of integers, got {rows!r}")
    out = out.astype(np.int64)
    bad = out[(out < 0) | (out >= num_videos)]
    if bad.size:
        raise IndexError(f"rows {bad.tolist()} outside the store's [0, {num_videos})")
    if np.unique(out).size != out.size:
        raise ValueError(f"rows contain duplicates: {out.tolist()}")
    return out


class FrameStore:
    """Learnable frames and per-video Adam state of one training run, one video per chunk.

    Build one with :meth:`create` or :meth:`open`; it is a context manager. Reads and writes go
    by row (``row_of`` maps video ids to rows). Processes may write disjoint rows concurrently;
    only one process should call :meth:`set_last_phase` and :meth:`finish_init` (rank 0).
    """

    def __init__(self, group: zarr.Group, path: Path, mode: str):
        self._group = group
        self.path = path
        self.mode = mode
        #: The arrays of a row: :data:`FIELDS`, plus :data:`MIX_FIELDS` in a ``mix`` store.
        self.fields = FIELDS + (MIX_FIELDS if "mix_logits" in group else ())
        self._arrays = {name: group[name] for name in self.fields}
        #: Chunks read per array since the store was opened (one chunk = one video's row).
        self.chunks_read = dict.fromkeys(self.fields, 0)
        self._count_lock = threading.Lock()  # reads may run on several threads
        self._video_ids: list[str] | None = None
        self._row_map: dict[str, int] | None = None

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike, video_ids: Sequence[str], **settings: Any
               ) -> FrameStore:
        """Create an empty store (every row uninitialised) and open it for writing.

        Takes the arguments of :func:`pipeline.framestore.format.create_store` (U, frame size,
        normalisation, R, shards, dataset, dtypes, compression, ``overwrite``).
        """
        return cls.open(create_store(path, video_ids, **settings), mode="r+")

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        mode: Literal["r", "r+"] = "r",
        expect: dict[str, Any] | None = None,
        *,
        sweep_min_age_s: float = 60.0,
    ) -> FrameStore:
        """Open an existing store, checking it was built for this run.

        Args:
            path: the store directory.
            mode: ``"r"`` (read only) or ``"r+"`` (read and write; sweeps orphan ``*.partial``
                files of killed writers first).
            expect: attribute values the run needs (keys from :data:`EXPECTABLE`, e.g.
                ``{"U": 8, "H": 224, "dataset": "msrvtt", "shards": [...]}``).
            sweep_min_age_s: only ``*.partial`` files older than this are swept, so a process
                opening the store cannot delete the temporary file of another process that is
                writing right now (DDP ranks open the same store).

        Raises:
            FileNotFoundError: no store at ``path``.
            FrameStoreMismatchError: the store's format or an ``expect`` entry differs (every
                mismatch listed).
        """
        path = Path(path)
        if mode not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}")
        if not (path / "zarr.json").is_file():
            raise FileNotFoundError(f"no frame store at {path}")
        if mode == "r+":
            sweep_partial_files(path, sweep_min_age_s)
        group = zarr.open_group(path, mode=mode)
        attrs = dict(group.attrs)
        version = attrs.get("format_version")
        if version not in READABLE_FORMAT_VERSIONS:
            raise FrameStoreMismatchError(
                f"frame store {path} has format_version {version!r}; this version of mof reads "
                f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))}"
            )
        store = cls(group, path, mode)
        if expect:
            store.check(expect)
        return store

    def check(self, expect: dict[str, Any]) -> None:
        """Raise :class:`FrameStoreMismatchError` listing every attribute that differs."""
        problems = attribute_mismatches(self.attrs, expect)
        if problems:
            raise FrameStoreMismatchError(
                f"frame store {self.path} was built for another run:\n  " + "\n  ".join(problems)
                + "\nStart a new run directory, or delete the store to rebuild it."
            )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Nothing is buffered (every write is on disk when it returns); kept for symmetry."""

    # -- metadata -----------------------------------------------------------------------------

    @property
    def attrs(self) -> dict[str, Any]:
        """A copy of the group's attributes."""
        return dict(self._group.attrs)

    @property
    def num_videos(self) -> int:
        return int(self._arrays["step"].shape[0])

    @property
    def num_frames(self) -> int:
        """U, the learnable frames per video."""
        return int(self._arrays["frames"].shape[1])

    @property
    def frame_size(self) -> int:
        return int(self._arrays["frames"].shape[-1])

    @property
    def frame_param(self) -> str:
        """``pixels`` or ``mix`` (the learnable frames' parametrisation)."""
        return "mix" if "mix_logits" in self._arrays else "pixels"

    @property
    def row_nbytes(self) -> int:
        """Uncompressed bytes of one row (frames, both moments, step, mix arrays)."""
        a = self._arrays
        mix = int(a["mix_logits"].shape[-1]) if "mix_logits" in a else 0
        return bytes_per_video(self.num_frames, self.frame_size, str(a["frames"].dtype),
                               str(a["exp_avg"].dtype), mix)

    @property
    def last_phase(self) -> int:
        return int(self._group.attrs["last_phase"])

    @property
    def video_ids(self) -> list[str]:
        """The video id of every row (read once, then cached)."""
        if self._video_ids is None:
            self._video_ids = [str(v) for v in self._group["video_ids"][:]]
        return self._video_ids

    def row_of(self, video_ids: Sequence[str]) -> np.ndarray:
        """int64 rows of ``video_ids``.

        Raises:
            KeyError: ids not in the store (all of them listed, up to 20).
        """
        if self._row_map is None:
            self._row_map = {v: i for i, v in enumerate(self.video_ids)}
        missing = [v for v in video_ids if v not in self._row_map]
        if missing:
            raise KeyError(f"{len(missing)} video ids not in frame store {self.path}: "
                           f"{missing[:20]}")
        return np.asarray([self._row_map[v] for v in video_ids], dtype=np.int64)

    def set_last_phase(self, phase: int) -> None:
        """Record the last completed phase (call from one process, after its rows are written)."""
        self._require_writable()
        self._group.attrs["last_phase"] = int(phase)

    # -- rows ---------------------------------------------------------------------------------

    def read(self, rows: Sequence[int] | np.ndarray, *, fields: Sequence[str] | None = None,
             allow_uninitialised: bool = False) -> FrameRows:
        """Read ``fields`` of ``rows`` (in the given order) as float32 / int64.

        Only the chunks of the named arrays are read: a phase without a frame-level step
        needs the frames alone, not the Adam state (3x their bytes with float16 frames).

        Args:
            rows: store rows.
            fields: the arrays to read (a subset of :attr:`fields`; ``None``: all of them);
                the others are ``None`` in the result.
            allow_uninitialised: return never-initialised rows (zeros, step -1) instead of
                raising.

        Raises:
            IndexError, ValueError: rows out of range or duplicated; unknown fields.
            ValueError: a row was never initialised (unless ``allow_uninitialised``).
        """
        rows = _as_rows(rows, self.num_videos)
        fields = check_fields(self.fields if fields is None else fields, self.fields)
        step = None
        if "step" in fields:
            # Row by row with basic indexing: several times faster than oindex in zarr 3.1.
            step = np.asarray([self._arrays["step"][r] for r in rows], dtype=np.int64)
            initialised = step >= 0
        elif not allow_uninitialised:
            # Without reading the step chunks: a row is initialised once its step chunk exists.
            chunks = self.path / "step" / "c"
            initialised = np.asarray([(chunks / str(r)).is_file() for r in rows.tolist()],
                                     dtype=bool)
        if not allow_uninitialised and not initialised.all():
            bad = rows[~initialised]
            ids = [self.video_ids[i] for i in bad[:10]]
            raise ValueError(f"frame store {self.path}: rows {bad.tolist()[:10]} (videos {ids}) "
                             "were never initialised")
        state = {}
        for name in (f for f in fields if f != "step"):
            state[name] = np.empty((len(rows), *self._arrays[name].shape[1:]), dtype=np.float32)
            for j, row in enumerate(rows):
                state[name][j] = self._arrays[name][row]
        with self._count_lock:
            for name in fields:
                self.chunks_read[name] += len(rows)
        return FrameRows(step=step, **state)

    def write(self, rows: Sequence[int] | np.ndarray, data: FrameRows) -> None:
        """Write the state of ``rows``, one chunk per array and row.

        Each chunk lands atomically (temporary file, then rename). The arrays of a row are
        written in the order frames, exp_avg, exp_avg_sq, the mix arrays, step, so a writer
        killed in between leaves a row whose step count lags its frames by one update, never
        a torn chunk.

        Raises:
            ValueError: shapes that do not fit the store, non-finite frames (named by row), or
                ``data`` without every field.
        """
        self._require_writable()
        if data.fields != self.fields:
            raise ValueError(f"a write needs every field of this {self.frame_param} store "
                             f"{self.fields}, got only {data.fields}")
        rows = _as_rows(rows, self.num_videos)
        expected = (len(rows), *self._arrays["frames"].shape[1:])
        if data.frames.shape != expected:
            raise ValueError(f"frames of shape {data.frames.shape} do not fit rows of this "
                             f"store: expected {expected}")
        with np.errstate(over="ignore"):  # overflow to inf in float16 is reported below
            cast = {name: np.asarray(getattr(data, name), dtype=self._arrays[name].dtype)
                    for name in _STATE_ARRAYS + self.fields[len(FIELDS):]}
        if "mix_logits" in cast and cast["mix_logits"].shape[1:] != self._arrays[
                "mix_logits"].shape[1:]:
            raise ValueError(f"mix arrays of shape {cast['mix_logits'].shape} do not fit rows "
                             "of this store: expected "
                             f"(n, *{self._arrays['mix_logits'].shape[1:]})")
        finite = np.isfinite(cast["frames"].reshape(len(rows), -1)).all(axis=1)
        if not finite.all():
            raise ValueError(f"non-finite frames (NaN/inf after casting to "
                             f"{cast['frames'].dtype}) for rows {rows[~finite].tolist()}")
        step = np.asarray(data.step, dtype=np.int64)
        # Row by row with basic indexing: 2x faster than an oindex write in zarr 3.1.
        for j, row in enumerate(rows):
            for name, value in cast.items():
                self._arrays[name][row] = value[j]
            self._arrays["step"][row] = step[j]

    def init_rows(self, rows: Sequence[int] | np.ndarray, frames: np.ndarray,
                  mix_logits: np.ndarray | None = None) -> None:
        """Initialise ``rows`` with ``frames`` (float32 ``(n, U, 3, H, W)``), zero Adam state.

        A ``mix`` store also needs ``mix_logits`` ``(n, U, R)`` (their Adam state starts at 0).

        Raises:
            ValueError: ``mix_logits`` missing for a ``mix`` store, or given for a ``pixels``
                one.
        """
        if (mix_logits is None) != (self.frame_param == "pixels"):
            raise ValueError(f"frame store {self.path} is a {self.frame_param} store: mix_logits "
                             f"{'required' if mix_logits is None else 'not accepted'}")
        frames = np.asarray(frames, dtype=np.float32)
        zeros = np.zeros_like(frames)
        mix = {}
        if mix_logits is not None:
            logits = np.asarray(mix_logits, dtype=np.float32)
            mix = {"mix_logits": logits, "mix_exp_avg": np.zeros_like(logits),
                   "mix_exp_avg_sq": np.zeros_like(logits)}
        self.write(rows, FrameRows(frames, zeros, zeros, np.zeros(len(frames), np.int64),
                                   **mix))

    def missing_rows(self) -> np.ndarray:
        """int64 rows never initialised, sorted.

        A row is initialised once its step chunk is stored (an unset step reads as the fill
        value -1 and has no chunk), so a directory listing answers without reading N chunks.
        """
        chunk_dir = self.path / "step" / "c"
        stored = np.asarray(
            [int(n) for n in os.listdir(chunk_dir) if n.isdigit()] if chunk_dir.is_dir() else [],
            dtype=np.int64,
        )
        return np.setdiff1d(np.arange(self.num_videos, dtype=np.int64), stored)

    def finish_init(self) -> int:
        """Count the initialised rows into the ``initialised_rows`` attribute and return it."""
        self._require_writable()
        count = self.num_videos - len(self.missing_rows())
        self._group.attrs["initialised_rows"] = count
        return count

    def _require_writable(self) -> None:
        if self.mode != "r+":
            raise PermissionError(f"frame store {self.path} is open read-only")

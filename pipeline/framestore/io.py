"""Overlap frame-store I/O with compute: prefetch the next batch's rows, write back behind it.

A MOF phase reads the rows of its batch, computes for a while, and writes them back. Zarr is
CPU-bound (a few ms per chunk), so :class:`AsyncFrameIO` moves both directions onto threads:

    io = AsyncFrameIO(store)
    pending = io.prefetch(rows_of_batch[0])
    for k in range(num_batches):
        state = io.get(pending)                      # waits only if the read is not done
        if k + 1 < num_batches:
            pending = io.prefetch(rows_of_batch[k + 1])
        ...compute, update state...
        io.write(rows_of_batch[k], state)            # returns at once
    io.flush()                                       # before a checkpoint

Consistency: a read always returns the latest value written through this object, even when the
write is still pending or was submitted after the prefetch began. Writes run in submission order
on one thread, so two writes of one row never reorder. An error in a background write is raised
at the next call (and every call after it: the store no longer matches the trainer's state).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.framestore.format import FrameRows, check_fields
from pipeline.framestore.store import FrameStore

if TYPE_CHECKING:  # typing.Self is 3.11+; annotations are never evaluated here
    from typing import Self

__all__ = ["AsyncFrameIO", "PendingRead", "time_round_trips"]


@dataclass(frozen=True)
class PendingRead:
    """A prefetch in flight; pass it to :meth:`AsyncFrameIO.get`.

    Attributes:
        rows: the store rows, in the order the result will have.
        fields: the arrays being read (the others are ``None`` in the result).
        seq: the number of writes submitted before the prefetch (for staleness checks).
        future: the background read.
    """

    rows: np.ndarray
    fields: tuple[str, ...]
    seq: int
    future: Future


class AsyncFrameIO:
    """Background prefetch and write-back for one :class:`FrameStore`.

    Args:
        store: an open store (``r+`` to write).
        max_pending_writes: ``write`` blocks while this many writes are queued, bounding the
            memory the queued batches hold.
        copy: copy the arrays given to ``write`` (set ``False`` to hand them over, saving a
            memcpy, when the caller never touches them again).
    """

    def __init__(self, store: FrameStore, *, max_pending_writes: int = 2, copy: bool = True):
        if max_pending_writes < 1:
            raise ValueError(f"max_pending_writes must be >= 1, got {max_pending_writes}")
        self.store = store
        self.max_pending_writes = max_pending_writes
        self.copy = copy
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="framestore-read")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="framestore-write")
        self._lock = threading.Lock()
        self._seq = 0
        # row -> (seq, future) of the latest write submitted for it. Never cleared: a prefetch
        # begun before a write must still see that the write is newer (one entry per row).
        self._last_write: dict[int, tuple[int, Future]] = {}
        self._pending: deque[tuple[np.ndarray, Future]] = deque()
        self._error: BaseException | None = None
        self._error_rows = np.zeros(0, dtype=np.int64)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        # Leaving on an exception still waits for the queued writes, but must not mask it.
        self.close(raise_errors=exc_type is None)

    # -- reads --------------------------------------------------------------------------------

    def prefetch(self, rows, fields: Sequence[str] | None = None) -> PendingRead:
        """Start reading ``fields`` (``None``: all of the store's) of ``rows`` in the
        background, after pending writes of them; a phase with no frame-level step needs only
        ``("frames",)``."""
        self._raise_background_error()
        rows = np.asarray(rows, dtype=np.int64)
        fields = check_fields(self.store.fields if fields is None else fields, self.store.fields)
        with self._lock:
            seq = self._seq
            deps = [self._last_write[r][1] for r in rows.tolist() if r in self._last_write]
        future = self._reader.submit(self._read_after, rows, fields, deps)
        return PendingRead(rows, fields, seq, future)

    def get(self, pending: PendingRead) -> FrameRows:
        """The rows of a prefetch, patched with any write of them submitted after it began."""
        data = pending.future.result()
        with self._lock:
            newer = [(j, self._last_write[r][1]) for j, r in enumerate(pending.rows.tolist())
                     if r in self._last_write and self._last_write[r][0] > pending.seq]
        if newer:
            wait([future for _, future in newer])
            self._raise_background_error()
            index = np.asarray([j for j, _ in newer], dtype=np.int64)
            fresh = self.store.read(pending.rows[index], fields=pending.fields)
            for name in pending.fields:
                getattr(data, name)[index] = getattr(fresh, name)
        return data

    def read(self, rows, fields: Sequence[str] | None = None) -> FrameRows:
        """Read ``fields`` of ``rows`` now (after their pending writes)."""
        return self.get(self.prefetch(rows, fields))

    def _read_after(self, rows: np.ndarray, fields: tuple[str, ...], deps: list[Future]
                    ) -> FrameRows:
        wait(deps)
        return self.store.read(rows, fields=fields)

    # -- writes -------------------------------------------------------------------------------

    def write(self, rows, data: FrameRows) -> None:
        """Queue a write of ``rows``; returns once it is queued (may wait for queue space)."""
        self._raise_background_error()
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) != len(data):
            raise ValueError(f"{len(rows)} rows but {len(data)} rows of data")
        if data.fields != self.store.fields:
            raise ValueError(f"a write needs every field of the store {self.store.fields}, "
                             f"got only {data.fields}")
        if self.copy:
            data = FrameRows(**{name: np.array(getattr(data, name)) for name in data.fields})
        while len(self._pending) >= self.max_pending_writes:
            wait([self._pending[0][1]])
            self._raise_background_error()
        with self._lock:
            self._seq += 1
            future = self._writer.submit(self.store.write, rows, data)
            for r in rows.tolist():
                self._last_write[r] = (self._seq, future)
            self._pending.append((rows, future))

    def flush(self) -> None:
        """Wait for every queued write; raise the first background error."""
        wait([future for _, future in list(self._pending)])
        self._raise_background_error()

    def close(self, raise_errors: bool = True) -> None:
        """Flush and stop the threads."""
        try:
            if raise_errors:
                self.flush()
            else:
                wait([future for _, future in list(self._pending)])
        finally:
            self._reader.shutdown(wait=True)
            self._writer.shutdown(wait=True)

    def _raise_background_error(self) -> None:
        while self._pending and self._pending[0][1].done():
            rows, future = self._pending.popleft()
            if future.exception() is not None and self._error is None:
                self._error = future.exception()
                self._error_rows = rows
        if self._error is not None:
            raise RuntimeError(
                f"a background write of frame-store rows {self._error_rows.tolist()[:16]} "
                f"to {self.store.path} failed: {self._error!r}"
            ) from self._error


def time_round_trips(store: FrameStore, batch_size: int = 16, steps: int = 5, seed: int = 0
                     ) -> dict[str, float]:
    """Time reading and writing back random batches of initialised rows (a benchmark helper).

    Writes back the rows it read, unchanged, so the store's content is preserved.

    Returns:
        milliseconds per batch: ``read_ms`` and ``write_ms`` (synchronous, median of
        ``steps``), and ``overlapped_ms``, a prefetch-next / write-back-previous loop with no
        compute, per batch; plus ``mb_per_batch`` moved each way.
    """
    rng = np.random.default_rng(seed)
    batches = [rng.choice(store.num_videos, size=batch_size, replace=False)
               for _ in range(steps)]
    reads, writes = [], []
    for rows in batches:
        start = time.perf_counter()
        data = store.read(rows)
        reads.append(time.perf_counter() - start)
        start = time.perf_counter()
        store.write(rows, data)
        writes.append(time.perf_counter() - start)
    start = time.perf_counter()
    with AsyncFrameIO(store, copy=False) as io:
        pending = io.prefetch(batches[0])
        for k, rows in enumerate(batches):
            data = io.get(pending)
            if k + 1 < steps:
                pending = io.prefetch(batches[k + 1])
            io.write(rows, data)
    overlapped = (time.perf_counter() - start) / steps
    return {"read_ms": 1e3 * float(np.median(reads)), "write_ms": 1e3 * float(np.median(writes)),
            "overlapped_ms": 1e3 * overlapped, "mb_per_batch": batch_size * store.row_nbytes / 1e6}

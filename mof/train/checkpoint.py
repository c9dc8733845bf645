"""Checkpoints that resume exactly: model, optimiser, trainer state, and a consistent MOF store.

The trainer state is the run's :class:`Progress` (its data position and running sums), the
optimiser, the scheduler and the RNG.

The store is written every phase, a checkpoint only now and then, so after a crash the store
is ahead of the last checkpoint. The trainer keeps an **undo journal**: before a phase writes
the rows of its batch back, it saves their previous contents (which it has just read anyway)
in ``RUN_DIR/journal/<S>/``, where ``S`` is the step of the last checkpoint. Resuming from
checkpoint ``S`` writes those pre-images back (newest first, so a row journaled twice ends at
its oldest version, the one checkpoint ``S`` saw) and drops the journal. A checkpoint is
committed by renaming its directory into place, and only then is the previous journal deleted,
so a crash at any point leaves a checkpoint and a journal that match.

The pre-images are known when a phase starts, so the trainer hands them to
:meth:`RowJournal.record_in_background` and computes meanwhile; :meth:`RowJournal.wait` joins
the write (durable: fsync, then rename) before the first of those rows is overwritten.

Layout::

    RUN_DIR/checkpoints/last/   model (save_model format) + trainer_state.pt
    RUN_DIR/checkpoints/best/   a copy of last at the best evaluation
    RUN_DIR/journal/<S>/r<rank>-s<step>.npy   a sequence of .npy records: the names (rows
                                              first), then one array per name
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.atomic import atomic_directory, atomic_open, previous_version

__all__ = [
    "Progress",
    "RowJournal",
    "commit_checkpoint",
    "find_checkpoint",
    "load_trainer_state",
    "rng_state",
    "save_trainer_state",
    "set_rng_state",
]

STATE_NAME = "trainer_state.pt"


@dataclass
class Progress:
    """Where the run is (saved in ``trainer_state.pt``; the data position is epoch/stage/batch).

    Attributes:
        epoch: current epoch (0-based). stage: ``model`` or ``frames``.
        batch: batches of the current stage already done.
        step: model-level steps done. phase: batches done in any stage (journal order).
        frame_epochs: completed ``frames`` stages (StepLR of the epoch schedule).
        loss_sum, loss_count, frame_loss_sum, frame_count: the current epoch's running sums.
        best, best_epoch: best value of ``metric`` so far and its epoch (1-based).
        evaluated_step: step of the last evaluation.
        fd_step: the ``finite-diff`` step checked against the exact meta-gradient on the first
            frame-level batch (``None``: not checked yet, or the check is off).
    """

    epoch: int = 0
    stage: str = "model"
    batch: int = 0
    step: int = 0
    phase: int = 0
    frame_epochs: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    frame_loss_sum: float = 0.0
    frame_count: int = 0
    best: float | None = None
    best_epoch: int | None = None
    evaluated_step: int = -1
    fd_step: float | None = None


def rng_state() -> dict[str, Any]:
    """torch's CPU (and CUDA) generator states as tensors (loadable with ``weights_only``)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_trainer_state(directory: Path, state: dict[str, Any]) -> None:
    torch.save(state, directory / STATE_NAME)


def load_trainer_state(directory: Path) -> dict[str, Any]:
    """The trainer state of a checkpoint; tensors and plain containers only (no pickled code)."""
    return torch.load(directory / STATE_NAME, map_location="cpu", weights_only=True)


def commit_checkpoint(root: Path, name: str, write: Callable[[Path], None]) -> Path:
    """Write a checkpoint directory under a temporary name and rename it to ``root/name``.

    ``write(tmp_dir)`` fills the directory. An existing ``root/name`` is kept as its
    :func:`~pipeline.atomic.previous_version` until the rename (see :func:`find_checkpoint`).
    """
    with atomic_directory(root / name) as tmp:
        write(tmp)
    return root / name


def find_checkpoint(root: Path, name: str = "last") -> Path | None:
    """``root/name``, or the previous version left by a crash in the middle of a commit."""
    for candidate in (root / name, previous_version(root / name)):
        if (candidate / STATE_NAME).is_file():
            return candidate
    return None


_ENTRY = re.compile(r"r(\d+)-s(\d+)\.np[yz]$")  # .npz: the format of earlier versions


def _read_entry(path: Path) -> dict[str, np.ndarray]:
    """The arrays of one journal entry by name (``rows`` among them)."""
    if path.suffix == ".npz":
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    with open(path, "rb") as fh:
        names = np.load(fh).tolist()
        return {name: np.load(fh) for name in names}


class RowJournal:
    """Pre-images of the store rows written since the last checkpoint (one writer per rank).

    Args:
        root: ``RUN_DIR/journal``.
        rank: this process's rank (entries of different ranks never share a file).
    """

    def __init__(self, root: Path, rank: int = 0):
        self.root = Path(root)
        self.rank = rank
        self.generation: int | None = None
        self._saved: set[int] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def start(self, generation: int) -> None:
        """Journal into ``root/<generation>`` from now on (the step of the new checkpoint)."""
        self.wait()
        self.generation = generation
        self._saved = set()
        (self.root / str(generation)).mkdir(parents=True, exist_ok=True)

    def record(self, step: int, rows: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
        """Save the pre-images of ``rows`` not yet saved in this generation, before they change.

        Args:
            step: the phase's global step (orders entries).
            rows: store rows ``(B,)``.
            arrays: the rows' current contents, each with leading dimension ``B``.
        """
        if self.generation is None:
            raise RuntimeError("RowJournal.start() must be called before record()")
        keep = np.array([int(r) not in self._saved for r in rows], dtype=bool)
        if not keep.any():
            return
        path = self.root / str(self.generation) / f"r{self.rank}-s{step}.npy"
        with atomic_open(path, "wb") as fh:
            # Plain .npy records, not np.savez: a zip's CRC-32 doubled the CPU time of an entry.
            np.save(fh, np.array(["rows", *arrays]))
            np.save(fh, np.asarray(rows)[keep])
            for value in arrays.values():
                np.save(fh, np.asarray(value)[keep])
        self._saved.update(int(r) for r in np.asarray(rows)[keep])

    def record_in_background(self, step: int, rows: np.ndarray,
                             arrays: dict[str, np.ndarray]) -> None:
        """:meth:`record` on the journal's thread; call :meth:`wait` before writing ``rows``.

        Entries are written one at a time in submission order. ``arrays`` must stay unchanged
        until :meth:`wait` returns.
        """
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="row-journal")
        self._pending.append(self._executor.submit(self.record, step, rows, arrays))

    def wait(self) -> None:
        """Block until every entry recorded in the background is durable; raise its error."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        """Wait for background entries and stop the thread."""
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    def pending(self, generation: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Entries of ``generation``, newest first: ``(rows, arrays)`` to write back in order."""
        directory = self.root / str(generation)
        entries = []
        for path in directory.iterdir() if directory.is_dir() else []:
            match = _ENTRY.match(path.name)
            if match:
                entries.append((int(match.group(2)), path))
        for _, path in sorted(entries, key=lambda e: e[0], reverse=True):
            arrays = _read_entry(path)
            yield arrays.pop("rows"), arrays

    def drop_except(self, generation: int | None) -> None:
        """Delete every journal generation but ``generation`` (``None``: all of them)."""
        if not self.root.is_dir():
            return
        for child in self.root.iterdir():
            if child.name != str(generation):
                shutil.rmtree(child, ignore_errors=True)

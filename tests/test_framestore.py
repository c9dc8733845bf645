"""The Zarr frame store: layout, round trips, run checks, background I/O, crashes, concurrency."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
import zarr.storage

from pipeline.framestore.format import (
    FIELDS,
    FrameRows,
    FrameStoreMismatchError,
    bytes_per_video,
    sweep_partial_files,
)
from pipeline.framestore.io import AsyncFrameIO, time_round_trips
from pipeline.framestore.store import FrameStore

REPO = Path(__file__).resolve().parents[1]
U, H = 2, 16


def _create(path: Path, n: int = 8, **kw) -> FrameStore:
    args = {"num_frames": U, "frame_size": H, "mean": (0.48, 0.46, 0.41),
            "std": (0.27, 0.26, 0.28), "regular_frames": 8,
            "shards": ["train-000000.tar", "train-000001.tar"], "dataset": "synthetic"}
    args.update(kw)
    return FrameStore.create(path, [f"video{i}" for i in range(n)], **args)


def _rows_state(n: int, value: float, step: int = 0) -> FrameRows:
    shape = (n, U, 3, H, H)
    return FrameRows(np.full(shape, value, np.float32), np.full(shape, value, np.float32),
                     np.full(shape, value, np.float32), np.full(n, step, np.int64))


def test_layout_and_round_trip(tmp_path):
    store = _create(tmp_path / "mof.zarr", n=6)
    assert sorted(os.listdir(tmp_path)) == ["mof.zarr"]  # no temporary directory left
    meta = json.loads((tmp_path / "mof.zarr/frames/zarr.json").read_text())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [1, U, 3, H, H]
    assert [c["name"] for c in meta["codecs"]] == ["bytes"]  # no sharding, no compression
    assert meta["data_type"] == "float16"
    for name in ("exp_avg", "exp_avg_sq"):
        assert json.loads((tmp_path / f"mof.zarr/{name}/zarr.json").read_text())["data_type"] \
            == "float32"
    attrs = store.attrs
    assert (attrs["U"], attrs["R"], attrs["H"], attrs["W"]) == (U, 8, H, H)
    assert attrs["last_phase"] == -1 and attrs["initialised_rows"] == 0
    assert store.row_of(["video4", "video1"]).tolist() == [4, 1]
    with pytest.raises(KeyError, match="nope"):
        store.row_of(["video1", "nope"])

    rng = np.random.default_rng(0)
    frames = rng.normal(size=(6, U, 3, H, H)).astype(np.float32)
    store.init_rows(np.arange(6), frames)
    before = store.read(np.arange(6))
    update = FrameRows(rng.normal(size=(2, U, 3, H, H)).astype(np.float32),
                       rng.normal(size=(2, U, 3, H, H)).astype(np.float32),
                       np.full((2, U, 3, H, H), 3e-12, np.float32), np.array([5, 7]))
    store.write([4, 1], update)
    got = FrameStore.open(tmp_path / "mof.zarr").read([1, 4, 0, 2, 3, 5])
    assert got.frames.dtype == np.float32 and got.step.dtype == np.int64
    np.testing.assert_array_equal(got.frames[:2], update.frames[[1, 0]].astype(np.float16))
    np.testing.assert_array_equal(got.exp_avg[:2], update.exp_avg[[1, 0]])
    # The second moment keeps magnitudes that float16 flushes to zero.
    np.testing.assert_array_equal(got.exp_avg_sq[:2], np.float32(3e-12))
    assert got.step.tolist() == [7, 5, 0, 0, 0, 0]
    for name in ("frames", "exp_avg", "exp_avg_sq"):  # other rows bit-identical
        np.testing.assert_array_equal(getattr(got, name)[2:],
                                      getattr(before, name)[[0, 2, 3, 5]])


def test_uninitialised_rows_are_detected(tmp_path):
    store = _create(tmp_path / "mof.zarr", n=5)
    assert store.missing_rows().tolist() == [0, 1, 2, 3, 4]
    store.init_rows([3, 1], np.zeros((2, U, 3, H, H), np.float32))  # all-zero state too
    assert store.missing_rows().tolist() == [0, 2, 4]
    with pytest.raises(ValueError, match=r"rows \[0\] \(videos \['video0'\]\)"):
        store.read([1, 0])
    assert store.read([1, 0], allow_uninitialised=True).step.tolist() == [0, -1]
    assert store.finish_init() == 2
    store.set_last_phase(12)
    reopened = FrameStore.open(tmp_path / "mof.zarr", "r")
    assert (reopened.attrs["initialised_rows"], reopened.last_phase) == (2, 12)


def test_read_of_some_fields_gets_only_their_chunks(tmp_path, caplog):
    path = tmp_path / "mof.zarr"
    _create(path, n=6).init_rows(np.arange(5), np.ones((5, U, 3, H, H), np.float32))
    # The same store through zarr's LoggingStore, which logs every key it gets from disk.
    logged = zarr.storage.LoggingStore(zarr.storage.LocalStore(path, read_only=True))
    store = FrameStore(zarr.open_group(logged, mode="r"), path, "r")
    full = store.read([4, 1])
    caplog.clear()
    with caplog.at_level(logging.INFO):
        frames_only = store.read([4, 1, 3], fields=["frames"])
    got = re.findall(r"Calling LocalStore\.get\((\S+)\)", caplog.text)
    assert sorted(got) == [f"frames/c/{r}/0/0/0/0" for r in (1, 3, 4)]
    assert frames_only.fields == ("frames",) and frames_only.step is None
    np.testing.assert_array_equal(frames_only.frames[:2], full.frames)
    assert store.chunks_read == {"frames": 5, "exp_avg": 2, "exp_avg_sq": 2, "step": 2}
    # Uninitialised rows are still refused, from the step chunks' presence alone.
    with pytest.raises(ValueError, match=r"rows \[5\]"):
        store.read([0, 5], fields=("frames",))
    assert store.read([5], fields=("frames",), allow_uninitialised=True).frames.max() == 0
    for bad in ((), ("exp_avg",), ("frames", "momentum"), "frames"):
        with pytest.raises(ValueError, match="fields must be"):
            store.read([0], fields=bad)
    writable = FrameStore.open(path, "r+")
    with pytest.raises(ValueError, match="a write needs every field"):
        writable.write([4], frames_only.take([0]))
    with AsyncFrameIO(writable) as io, pytest.raises(ValueError, match="every field"):
        io.write([4], frames_only.take([0]))


def test_open_lists_every_mismatch(tmp_path):
    _create(tmp_path / "mof.zarr")
    ok = {"U": U, "H": H, "W": H, "R": 8, "dataset": "synthetic", "dtype": "float16",
          "mean": [0.48, 0.46, 0.41], "shards": ["train-000001.tar", "train-000000.tar"]}
    FrameStore.open(tmp_path / "mof.zarr", "r", expect=ok)
    bad = {**ok, "U": 8, "H": 224, "dataset": "msrvtt", "shards": ["other-000000.tar"]}
    with pytest.raises(FrameStoreMismatchError) as err:
        FrameStore.open(tmp_path / "mof.zarr", "r", expect=bad)
    message = str(err.value)
    for fragment in ("U: store has 2, run expects 8", "H: store has 16, run expects 224",
                     "dataset: store has 'synthetic'", "shards: store has"):
        assert fragment in message
    assert "R:" not in message and "mean:" not in message
    with pytest.raises(ValueError, match="cannot expect"):
        FrameStore.open(tmp_path / "mof.zarr", "r", expect={"frames": 8})
    with pytest.raises(FileExistsError):
        _create(tmp_path / "mof.zarr")
    with pytest.raises(FileNotFoundError):
        FrameStore.open(tmp_path / "absent.zarr")


def test_invalid_arguments_and_writes(tmp_path):
    with pytest.raises(ValueError) as err:
        FrameStore.create(tmp_path / "x.zarr", ["a", "b", "a"], num_frames=0, frame_size=H,
                          mean=(0.5, 0.5), std=(1, 1, 1), regular_frames=4, shards=[],
                          dataset="", dtype="int8")
    for option in ("duplicates", "num_frames", "mean and std", "dataset", "dtype"):
        assert option in str(err.value)
    store = _create(tmp_path / "mof.zarr", n=4)
    bad = _rows_state(2, 1.0)
    bad.frames[1, 0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"non-finite frames .* rows \[3\]"):
        store.write([0, 3], bad)
    with pytest.raises(ValueError, match="float16"):  # finite in float32, inf after the cast
        store.write([0], _rows_state(1, 1e6))
    with pytest.raises(ValueError, match="duplicates"):
        store.write([1, 1], _rows_state(2, 0.5))
    with pytest.raises(IndexError):
        store.read([4])
    with pytest.raises(ValueError, match="do not fit"):
        store.write([0], FrameRows(*(np.zeros((1, U, 3, 8, 8), np.float32),) * 3,
                                   np.zeros(1, np.int64)))
    assert store.missing_rows().tolist() == [0, 1, 2, 3]  # nothing was written
    with pytest.raises(PermissionError):
        FrameStore.open(tmp_path / "mof.zarr", "r").set_last_phase(1)


def test_blosc_option_and_bytes_per_video(tmp_path):
    store = _create(tmp_path / "mof.zarr", n=3, compression="blosc-zstd", dtype="float32")
    meta = json.loads((tmp_path / "mof.zarr/frames/zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]] == ["bytes", "blosc"]
    frames = np.random.default_rng(1).normal(size=(3, U, 3, H, H)).astype(np.float32)
    store.init_rows([0, 1, 2], frames)
    np.testing.assert_array_equal(store.read([0, 1, 2]).frames, frames)
    # U=8 frames at 224 px: float16 frames + float32 moments = 10 bytes per pixel value.
    assert bytes_per_video(8, 224) == 8 * 3 * 224 * 224 * 10 + 8


def test_sweep_keeps_fresh_partials_and_read_mode_sweeps_nothing(tmp_path):
    store = _create(tmp_path / "mof.zarr", n=2)
    store.init_rows([0, 1], np.ones((2, U, 3, H, H), np.float32))
    chunk_dir = tmp_path / "mof.zarr/frames/c/0/0/0/0"
    old, fresh = chunk_dir / "0.aaaa.partial", chunk_dir / "0.bbbb.partial"
    old.write_bytes(b"torn"), fresh.write_bytes(b"in flight")
    os.utime(old, (time.time() - 3600,) * 2)
    FrameStore.open(tmp_path / "mof.zarr", "r")
    assert old.exists() and fresh.exists()
    FrameStore.open(tmp_path / "mof.zarr", "r+")
    assert not old.exists() and fresh.exists()
    assert sweep_partial_files(tmp_path / "mof.zarr", min_age_s=0) == [fresh]
    np.testing.assert_array_equal(FrameStore.open(tmp_path / "mof.zarr").read([0]).frames, 1.0)


def test_async_io_reads_see_pending_writes(tmp_path):
    """Random prefetch/get/write sequences against a plain dict of the latest written values."""
    n = 10
    store = _create(tmp_path / "mof.zarr", n=n)
    store.init_rows(np.arange(n), np.zeros((n, U, 3, H, H), np.float32))
    latest = dict.fromkeys(range(n), 0.0)
    rng = np.random.default_rng(2)
    pending, checked, patched = [], 0, 0
    with AsyncFrameIO(store, max_pending_writes=3) as io:
        for op in range(150):
            rows = rng.choice(n, size=3, replace=False)
            action = rng.integers(3)
            if action == 0:  # every other prefetch reads the frames alone
                pending.append(io.prefetch(rows, FIELDS if op % 2 else ["frames"]))
            elif action == 1 and pending:
                handle = pending.pop(0)
                patched += any(latest[r] != 0.0 for r in handle.rows.tolist())
                got = io.get(handle)
                expected = [latest[r] for r in handle.rows.tolist()]
                assert got.frames[:, 0, 0, 0, 0].tolist() == expected
                if handle.fields == FIELDS:
                    assert got.step.tolist() == [int(v) for v in expected]
                else:
                    assert got.fields == ("frames",)
                checked += 1
            else:
                for r in rows.tolist():
                    latest[r] = float(op)
                io.write(rows, _rows_state(3, float(op), step=op))
    assert checked > 25 and patched > 10
    final = FrameStore.open(tmp_path / "mof.zarr").read(np.arange(n))
    assert final.frames[:, 0, 0, 0, 0].tolist() == [latest[r] for r in range(n)]


def test_async_io_surfaces_background_errors(tmp_path):
    store = _create(tmp_path / "mof.zarr", n=4)
    store.init_rows(np.arange(4), np.zeros((4, U, 3, H, H), np.float32))
    io = AsyncFrameIO(store)
    io.write([2], _rows_state(1, np.inf))
    with pytest.raises(RuntimeError, match=r"rows \[2\]") as err:
        for _ in range(200):  # the error surfaces at the first call after the write fails
            io.prefetch([0])
            time.sleep(0.01)
    assert isinstance(err.value.__cause__, ValueError)
    with pytest.raises(RuntimeError):  # and at every call after it
        io.flush()
    io.close(raise_errors=False)


def test_time_round_trips_leaves_the_store_unchanged(tmp_path):
    store = _create(tmp_path / "mof.zarr", n=6)
    frames = np.random.default_rng(4).normal(size=(6, U, 3, H, H)).astype(np.float32)
    store.write(np.arange(6), FrameRows(frames, frames, frames**2, np.arange(6)))
    before = store.read(np.arange(6))
    timing = time_round_trips(store, batch_size=3, steps=2)
    assert set(timing) == {"read_ms", "write_ms", "overlapped_ms", "mb_per_batch"}
    assert timing["mb_per_batch"] == 3 * store.row_nbytes / 1e6
    after = store.read(np.arange(6))
    for name in ("frames", "exp_avg", "exp_avg_sq", "step"):
        np.testing.assert_array_equal(getattr(after, name), getattr(before, name))


# -- real processes ------------------------------------------------------------------------

_WRITER = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from pipeline.framestore.store import FrameStore, FrameRows
    path, go, rounds = sys.argv[1], sys.argv[3], int(sys.argv[4])
    rows = [int(r) for r in sys.argv[2].split(",")]
    store = FrameStore.open(path, "r+")
    state = store.read(rows, allow_uninitialised=True)
    version = int(max(state.frames.max(), state.step.max())) + 1
    print("ready", flush=True)
    while go and not os.path.exists(go):
        time.sleep(0.001)
    for _ in range(rounds):
        for r in rows:
            v = np.full((1, *state.frames.shape[1:]), version, np.float32)
            store.write([r], FrameRows(v, v, v, np.array([version])))
        version += 1
""")


def _spawn(path: Path, rows: list[int], go: str = "", rounds: int = 10**6) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), ",".join(map(str, rows)), go, str(rounds)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_sigkilled_writer_never_tears_a_chunk(tmp_path):
    path = tmp_path / "mof.zarr"
    n = 6
    # float32 frames hold integer versions exactly; 442 kB chunks widen the write window.
    FrameStore.create(path, [f"v{i}" for i in range(n)], num_frames=4, frame_size=96,
                      mean=(0.5,) * 3, std=(0.5,) * 3, regular_frames=8, shards=[],
                      dataset="synthetic", dtype="float32")
    rng = np.random.default_rng(3)
    orphans = 0
    for _ in range(6):
        proc = _spawn(path, list(range(n)))
        time.sleep(rng.uniform(0.02, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        orphans += len(list(path.rglob("*.partial")))
        swept = FrameStore.open(path, "r+", sweep_min_age_s=0)
        assert not list(path.rglob("*.partial"))
        state = swept.read(np.arange(n), allow_uninitialised=True)
        for r in range(n):
            values = [np.unique(getattr(state, name)[r]) for name in
                      ("frames", "exp_avg", "exp_avg_sq")] + [state.step[r:r + 1]]
            assert all(len(v) == 1 for v in values), f"row {r} is torn"
            versions = [float(x[0]) for x in values]
            versions[3] = max(versions[3], 0.0)  # a never-written row: version 0, step -1
            # Arrays of a row are written frames -> exp_avg -> exp_avg_sq -> step: a kill can
            # leave later arrays behind (one update per interrupted write), never ahead.
            assert versions == sorted(versions, reverse=True), f"row {r}: {versions}"
            assert all(v == int(v) for v in versions), f"row {r}: {versions}"
    print(f"orphan .partial files seen after 6 SIGKILLs: {orphans}")


def test_two_processes_writing_disjoint_rows_lose_nothing(tmp_path):
    path = tmp_path / "mof.zarr"
    n = 16
    FrameStore.create(path, [f"v{i}" for i in range(n)], num_frames=U, frame_size=H,
                      mean=(0.5,) * 3, std=(0.5,) * 3, regular_frames=8, shards=[],
                      dataset="synthetic", dtype="float32")
    go = tmp_path / "go"
    evens, odds = list(range(0, n, 2)), list(range(1, n, 2))
    procs = [_spawn(path, evens, str(go), rounds=5), _spawn(path, odds, str(go), rounds=5)]
    go.touch()
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    state = FrameStore.open(path).read(np.arange(n))
    # Each writer found its rows unset (version 0) and wrote versions 1..5.
    assert state.step.tolist() == [5] * n
    assert (state.frames == 5).all() and (state.exp_avg_sq == 5).all()

"""Crash-safe writes: whole or absent, under a real SIGKILL, for files and directories."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mof.train.checkpoint import commit_checkpoint, find_checkpoint
from pipeline.atomic import (
    atomic_directory,
    atomic_open,
    atomic_write_json,
    atomic_write_yaml,
    previous_version,
    remove_temporaries,
    temporaries,
)

ROOT = Path(__file__).resolve().parent.parent


def test_writes_round_trip_and_leave_no_temporaries(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    atomic_write_yaml(tmp_path / "c.yaml", {"z": 1, "a": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"a": [1, 2], "b": 1}
    assert (tmp_path / "c.yaml").read_text() == "z: 1\na: 2\n"  # key order kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "c.yaml"]


def test_an_error_inside_the_block_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(ZeroDivisionError), atomic_open(path, "w") as fh:
        fh.write("new, half")
        1 / 0  # noqa: B018
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
    with pytest.raises(ValueError, match="mode"):
        atomic_open(path, "a").__enter__()


_KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from pipeline.atomic import atomic_open
    with atomic_open(sys.argv[1], "wb") as fh:
        fh.write(b"x" * 1_000_000)
        fh.flush()
        print("half", flush=True)
        time.sleep(60)
""")


def test_a_killed_writer_leaves_the_old_file_and_a_sweepable_temporary(tmp_path):
    path = tmp_path / "index.json"
    path.write_text("old")
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "half"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert path.read_text() == "old"
    (orphan,) = temporaries(path)
    assert orphan.stat().st_size == 1_000_000 and orphan.name.startswith("index.json.")
    assert temporaries(tmp_path / "index") == []  # another file's name is not matched
    assert remove_temporaries(tmp_path) == 1 and not orphan.exists()


def test_directory_swap_replaces_keeps_old_on_error_and_sweeps_temporaries(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        (tmp / "w").write_text("1")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "w").write_text("2")
        raise RuntimeError("killed mid-write")
    assert (target / "w").read_text() == "1"
    stale = tmp_path / "ckpt.99-deadbeef.tmp"  # a killed writer's leftover
    stale.mkdir()
    with atomic_directory(target) as tmp:
        (tmp / "w").write_text("3")
    assert (target / "w").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_crash_between_the_two_renames_leaves_a_readable_previous_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"

    def write(step: int):
        return lambda d: (d / "trainer_state.pt").write_text(str(step))

    commit_checkpoint(root, "last", write(1))
    # The state the swap passes through: the old version moved aside, the new one not yet in.
    (root / "last").rename(previous_version(root / "last"))
    assert find_checkpoint(root) == previous_version(root / "last")
    commit_checkpoint(root, "last", write(2))
    assert find_checkpoint(root) == root / "last"
    assert (root / "last" / "trainer_state.pt").read_text() == "2"
    assert sorted(p.name for p in root.iterdir()) == ["last"]

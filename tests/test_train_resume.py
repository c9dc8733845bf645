"""Resuming reaches the parameters and frames of an uninterrupted run, after a clean stop and
after a SIGKILL of a real ``mof-cli train`` process in the middle of an epoch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mof.train import train
from mof.train.checkpoint import RowJournal
from mof.train.config import load_train_config
from pipeline.framestore.store import FrameStore
from tests.train_data import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

EPOCHS = 2  # 3 batches each: the interruptions below fall inside the second epoch


def run_state(run: Path) -> dict[str, np.ndarray]:
    """Model weights of ``checkpoints/last`` and every array of the MOF store."""
    state = {k: v.numpy() for k, v in
             load_file(run / "checkpoints" / "last" / "model.safetensors").items()}
    store = FrameStore.open(run / "mof.zarr")
    rows = store.read(np.arange(store.num_videos))
    state.update({f"store.{n}": getattr(rows, n)
                  for n in ("frames", "exp_avg", "exp_avg_sq", "step")})
    return state


def assert_same_state(got: dict[str, np.ndarray], want: dict[str, np.ndarray],
                      atol: float = 1e-6) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=0, atol=atol, err_msg=name)
    assert not np.array_equal(want["store.frames"], np.zeros_like(want["store.frames"]))


@pytest.fixture(scope="module")
def uninterrupted(train_data, tmp_path_factory) -> dict[str, np.ndarray]:
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("uninterrupted")
    train(tiny_config(train_data, run, epochs=EPOCHS), progress=False)
    return run_state(run)


def test_stop_and_resume_matches_uninterrupted(train_data, tmp_path, uninterrupted):
    run = tmp_path / "run"
    first = train(tiny_config(train_data, run, epochs=EPOCHS, max_steps=4), progress=False)
    assert first["steps"] == 4 and first["epochs"] == 1  # stopped inside the second epoch
    resumed = train(load_train_config(None, {"resume": str(run), "max_steps": None}),
                    progress=False)
    assert resumed["steps"] == 3 * EPOCHS
    assert_same_state(run_state(run), uninterrupted)


def test_resume_with_frame_step_every_2_matches_uninterrupted(train_data, tmp_path):
    # Steps 0, 2, 4 take a frame-level step; the run stops after step 4 and resumes at step 5,
    # a phase that reads the frames alone and writes nothing.
    whole, run = tmp_path / "whole", tmp_path / "stopped"
    train(tiny_config(train_data, whole, epochs=EPOCHS, frame_step_every=2), progress=False)
    first = train(tiny_config(train_data, run, epochs=EPOCHS, frame_step_every=2, max_steps=5),
                  progress=False)
    assert first["steps"] == 5
    train(load_train_config(None, {"resume": str(run), "max_steps": None}), progress=False)
    want = run_state(whole)
    assert want["store.step"].sum() == 3 * 4  # 3 of the 6 batches of 4 videos stepped
    assert_same_state(run_state(run), want, atol=0)  # bit-identical


def _journal_entries(run: Path, after_generation: int) -> list[Path]:
    journal = run / "journal"
    if not journal.is_dir():
        return []
    return [f for d in journal.iterdir() if d.name.isdigit() and int(d.name) >= after_generation
            for f in d.glob("*.npy")]


def test_sigkill_and_resume_matches_uninterrupted(train_data, tmp_path, uninterrupted):
    run = tmp_path / "killed"
    command = [str(Path(sys.executable).parent / "mof-cli"), "train",
               "--model", "frozen-tiny", "--train", train_data["train"], "--out", str(run),
               "--frames", "8:2", "--epochs", str(EPOCHS), "--batch-size", "4", "--lr", "1e-3",
               "--workers", "0", "--shuffle-buffer", "4", "--checkpoint-every", "2", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=Path(__file__).parent.parent)
    deadline = time.time() + 120
    # Kill once a phase after the second checkpoint has journaled its rows: the store on disk
    # is then ahead of the checkpoint, and only the journal can bring it back.
    while proc.poll() is None and time.time() < deadline and not _journal_entries(run, 2):
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    resumed = train(load_train_config(None, {"resume": str(run)}), progress=False)
    assert resumed["steps"] == 3 * EPOCHS
    assert not _journal_entries(run, 0)  # dropped at the final checkpoint
    assert_same_state(run_state(run), uninterrupted)


def test_background_journal_is_durable_after_wait_and_reports_errors(tmp_path):
    journal = RowJournal(tmp_path / "journal", rank=1)
    journal.start(0)
    arrays = {"frames": np.arange(12, dtype=np.float32).reshape(3, 4),
              "step": np.array([5, 6, 7])}
    journal.record_in_background(4, np.array([7, 2, 9]), arrays)
    journal.record_in_background(5, np.array([2, 3]), {k: v[:2] + 100 for k, v in arrays.items()})
    journal.wait()
    # An entry of the earlier .npz format is still read back.
    np.savez(tmp_path / "journal" / "0" / "r0-s1.npz", rows=np.array([4]), step=np.array([8]))
    entries = list(journal.pending(0))  # newest first; row 2 was saved once, at step 4
    assert [e[0].tolist() for e in entries] == [[3], [7, 2, 9], [4]]
    assert entries[2][1]["step"].tolist() == [8]
    np.testing.assert_array_equal(entries[0][1]["frames"], arrays["frames"][1:2] + 100)
    np.testing.assert_array_equal(entries[1][1]["step"], arrays["step"])
    (tmp_path / "journal" / "1").write_text("not a directory")
    journal.generation = 1  # a generation whose directory cannot be written to
    journal.record_in_background(6, np.array([0]), {"step": np.array([0])})
    with pytest.raises(OSError):
        journal.wait()
    journal.close()

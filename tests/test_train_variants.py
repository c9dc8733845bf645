"""Training with the variants of docs/variants.md on the tiny dataset: a SIGKILLed and resumed
``mof-cli train`` run of ``mix`` + ``adamw`` + 2 frame steps ends in the rows and weights of an
uninterrupted one, and ``export-frames`` draws each frame's mixing weights."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mof.export.export import ExportConfig, export_frames
from mof.export.render import mix_strips
from mof.frame_mix import mix_frames
from mof.reproduce.diagnose import mix_drift
from mof.train import train
from mof.train.config import load_train_config
from mof.train.data import anchor_positions
from pipeline.framestore.store import FrameStore
from pipeline.sampling import uniform_subset
from pipeline.sharding.samples import iter_shard, resolve_shards
from tests.train_data import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

EPOCHS = 2
VARIANT = {"frame_param": "mix", "inner_step": "adamw", "frame_steps": 2, "mix_lr": 0.3}


def _state(run: Path) -> dict[str, np.ndarray]:
    state = {k: v.numpy() for k, v in
             load_file(run / "checkpoints" / "last" / "model.safetensors").items()}
    store = FrameStore.open(run / "mof.zarr")
    rows = store.read(np.arange(store.num_videos))
    state.update({f"store.{n}": getattr(rows, n) for n in store.fields})
    return state


@pytest.fixture(scope="module")
def uninterrupted(train_data, tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("variants") / "run"
    train(tiny_config(train_data, run, epochs=EPOCHS, **VARIANT), progress=False)
    return run


def test_sigkill_and_resume_matches_uninterrupted(train_data, tmp_path, uninterrupted):
    run = tmp_path / "killed"
    command = [str(Path(sys.executable).parent / "mof-cli"), "train",
               "--model", "frozen-tiny", "--train", train_data["train"], "--out", str(run),
               "--frames", "8:2", "--epochs", str(EPOCHS), "--batch-size", "4", "--lr", "1e-3",
               "--workers", "0", "--shuffle-buffer", "4", "--checkpoint-every", "2", "--quiet"]
    for key, value in VARIANT.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=Path(__file__).parent.parent)
    deadline = time.time() + 180
    # Kill once a phase after the second checkpoint has journaled its rows (mix arrays
    # included): the store is then ahead of the checkpoint, and only the journal brings it back.
    journal = run / "journal"
    while proc.poll() is None and time.time() < deadline and not any(
            f for d in (journal.iterdir() if journal.is_dir() else [])
            if d.name.isdigit() and int(d.name) >= 2 for f in d.glob("*.npy")):
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    resumed = train(load_train_config(None, {"resume": str(run)}), progress=False)
    assert resumed["steps"] == 3 * EPOCHS
    got, want = _state(run), _state(uninterrupted)
    assert got.keys() == want.keys() and "store.mix_logits" in want
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-6, err_msg=name)
    assert (want["store.step"] == 2 * EPOCHS).all()  # 2 frame steps per phase, 1 phase/epoch


def test_mix_rows_are_their_anchors_mix_and_export_draws_the_weights(
        train_data, uninterrupted, tmp_path):
    store = FrameStore.open(uninterrupted / "mof.zarr")
    config = load_train_config(None, {"resume": str(uninterrupted)})
    samples = {s["key"]: s for shard in resolve_shards(train_data["train"])
               for s in iter_shard(shard)}
    key = store.video_ids[0]
    rows = store.read(store.row_of([key]))
    from mof.frames import to_model_input
    from mof.models import create_model

    contract = create_model("frozen-tiny").contract
    stored = samples[key]["frames"]
    anchors = to_model_input(stored, contract, anchor_positions(len(stored),
                                                                config.regular_frames))
    logits = torch.from_numpy(rows.mix_logits)
    # The logits moved well beyond the pixels' reach (mix_lr 0.3 over 4 steps).
    assert np.abs(rows.mix_logits - rows.mix_logits.round()).max() > 0.1
    # frames = mix + residual: the residual moved by at most 4 Adam steps of frame_lr each.
    residual = torch.from_numpy(rows.frames) - mix_frames(logits, None, anchors[None])
    assert residual.abs().max().item() <= 4 * config.frame_lr * 1.01

    # The diagnosis, against a hand computation: each learned frame starts with weight
    # e^peak / (e^peak + R - 1) on the regular frame nearest its uniform position.
    drift = mix_drift(uninterrupted)
    regular, used = config.regular_frames, config.num_frames
    at = anchor_positions(len(stored), regular)
    nearest = [min(range(regular), key=lambda r, p=p: abs(at[r] - p))
               for p in uniform_subset(len(stored), used)]
    peak = math.exp(config.mix_init_logit)
    w0 = np.full((used, regular), 1 / (peak + regular - 1))
    w0[np.arange(used), nearest] = peak / (peak + regular - 1)
    every = store.read(np.arange(store.num_videos), fields=("frames", "mix_logits"))
    w = torch.softmax(torch.from_numpy(every.mix_logits).double(), -1).numpy()
    assert drift["start_weight"] == pytest.approx(w0.max())
    assert drift["end_weight"] == pytest.approx(w[:, np.arange(used), nearest].mean())
    assert drift["tv"] == pytest.approx(0.5 * np.abs(w - w0).sum(-1).mean())
    assert drift["tv"] > 0.01 and drift["argmax_moved"] == (w.argmax(-1) != nearest).mean()

    summary = export_frames(ExportConfig(run=str(uninterrupted), out=str(tmp_path / "x"),
                                         ids=[key], progress=False))
    video = summary["videos"][0]
    weights = np.asarray(video["mix_weights"])
    assert weights.shape == (2, config.regular_frames)
    np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-3)
    np.testing.assert_allclose(weights, torch.softmax(logits[0].double(), -1).numpy(),
                               atol=1e-4)
    grid = np.asarray(Image.open(video["files"]["grid"]).convert("RGB"))
    strips = mix_strips(weights)
    for (left, top, right, bottom), strip in zip(video["grid_boxes"]["mix"], strips,
                                                  strict=True):
        assert bottom > video["grid_boxes"]["mof"][0][3]  # under the learned frames
        scale = (right - left) // strip.shape[1]
        np.testing.assert_array_equal(grid[top:bottom:scale, left:right:scale], strip)

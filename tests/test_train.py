"""The trainer end to end on tiny synthetic shards: real videos, shards, Zarr store, CPU.

The shards are generated once per session (the ``train_data`` fixture, :mod:`tests.train_data`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from mof.models import create_model
from mof.models.io import load_model
from mof.train import train
from mof.train.config import ConfigError, TrainConfig, load_train_config
from mof.train.phases import FrameState, frame_level_update
from mof.train.trainer import Trainer
from pipeline.framestore.store import FrameStore
from tests.train_data import TRAIN_VIDEOS, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def read_store(run: Path):
    store = FrameStore.open(Path(run) / "mof.zarr")
    return store, store.read(np.arange(store.num_videos))


def test_cli_baseline_end_to_end(train_data, tmp_path):
    from cli import main

    run = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "train", "--model", "frozen-tiny", "--train", train_data["train"], "--test",
        train_data["test"], "--out", str(run), "--frames", "2", "--epochs", "1",
        "--batch-size", "4", "--lr", "1e-3", "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["frames"] == "2" and saved["lr"] == 1e-3 and saved["frame_lr"] == 8e-4
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and "t2v/R@1" in rows[0].split(",")
    for name in ("last", "best"):
        assert (run / "checkpoints" / name / "trainer_state.pt").is_file()
    assert not (run / "mof.zarr").exists()  # the baseline keeps no learnable frames
    model = load_model(run / "checkpoints" / "last")
    assert model.spec["name"] == "frozen-tiny"
    assert list((run / "tb").iterdir())


def test_mof_end_to_end_updates_every_row_once(train_data, tmp_path):
    run = tmp_path / "mof"
    summary = train(tiny_config(train_data, run, test=train_data["test"]), progress=False)
    assert summary["steps"] == TRAIN_VIDEOS // 4
    store, rows = read_store(run)
    assert store.num_videos == TRAIN_VIDEOS and store.last_phase == TRAIN_VIDEOS // 4
    assert (rows.step == 1).all()  # one frame-level Adam step per video and epoch
    assert np.isfinite(rows.frames).all() and (rows.exp_avg_sq > 0).any()
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"epoch", "step", "train_loss", "frame_outer_loss", "t2v/R@1"} <= set(header)
    assert (run / "checkpoints" / "best" / "model.safetensors").is_file()


@pytest.mark.parametrize("meta_grad", ["exact", "finite-diff", "finite-diff/forward"])
def test_one_phase_changes_exactly_the_rows_of_its_batch(train_data, tmp_path, meta_grad):
    meta_grad, _, scheme = meta_grad.partition("/")
    trainer = Trainer(tiny_config(train_data, tmp_path / "run", meta_grad=meta_grad,
                                  fd_scheme=scheme or "central"), progress_bar=False)
    try:
        trainer.setup()
        _, before = read_store(tmp_path / "run")
        batch, state, draw = next(trainer._batches())
        trainer._phase(batch, state, draw)
        trainer.io.flush()
        rows = trainer.store.row_of(batch.keys)
    finally:
        trainer.cleanup()
    _, after = read_store(tmp_path / "run")
    others = np.setdiff1d(np.arange(TRAIN_VIDEOS), rows)
    for name in ("frames", "exp_avg", "exp_avg_sq", "step"):
        assert np.array_equal(getattr(after, name)[others], getattr(before, name)[others]), name
    assert (after.step[rows] == before.step[rows] + 1).all()
    changed = np.abs(after.frames[rows] - before.frames[rows]).reshape(len(rows), -1).max(1)
    assert (changed > 0).all()


@pytest.mark.parametrize("meta_grad", ["exact", "finite-diff", "first-order"])
def test_frame_level_step_leaves_the_model_untouched(meta_grad):
    torch.manual_seed(0)
    model = create_model("frozen-tiny").train()
    model.set_attention("math" if meta_grad == "exact" else "fused")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    b, u, r, size = 3, 2, 4, model.contract.frame_size
    state = FrameState(torch.randn(b, u, 3, size, size), torch.zeros(b, u, 3, size, size),
                       torch.zeros(b, u, 3, size, size), torch.zeros(b, dtype=torch.long))
    text = model.tokenize(["a red circle", "a blue square", "a green star"])
    new, stats = frame_level_update(
        model, state, torch.randn(b, r, 3, size, size), text, None, alpha=1e-3, mode=meta_grad,
        fd_step=1e-3, lr=8e-4, betas=(0.9, 0.999), seed=1, amp=False)
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name
        assert param.grad is None, name
    assert (new.step == 1).all() and not torch.equal(new.frames, state.frames)
    assert np.isfinite(stats["outer_loss"])


def test_epoch_schedule_steps_every_video_once_per_epoch(train_data, tmp_path):
    run = tmp_path / "epoch"
    train(tiny_config(train_data, run, frame_schedule="epoch", augment="none"), progress=False)
    store, rows = read_store(run)
    assert (rows.step == 1).all()
    assert store.last_phase == 2 * TRAIN_VIDEOS // 4  # a model pass and a frame pass


def test_frame_step_every_k_skips_batches_and_their_adam_state(train_data, tmp_path):
    run = tmp_path / "every2"
    trainer = Trainer(tiny_config(train_data, run, frame_step_every=2), progress_bar=False)
    try:
        trainer.setup()
        trainer.train()
        chunks_read = dict(trainer.store.chunks_read)
    finally:
        trainer.cleanup()
    _, rows = read_store(run)
    # Batches 0 and 2 of the 3 take a frame-level step; batch 1 does not.
    assert sorted(rows.step.tolist()) == [0] * 4 + [1] * 8
    # Batch 1 read the frames of its 4 videos and none of their Adam state.
    assert chunks_read == {"frames": 12, "exp_avg": 8, "exp_avg_sq": 8, "step": 8}


def test_config_reports_every_problem_at_once():
    with pytest.raises(ConfigError) as err:
        TrainConfig(model="", train="x", out="y", frames="4:8", batch_size=1, lr=0,
                    meta_grad="second-order", crop_scale=2.0, frame_betas=(0.9,),
                    metric="t2v/R@2")
    message = str(err.value)
    for fragment in ("--model is required", "R must be >= U", "--batch-size", "--lr",
                     "--meta-grad", "--crop-scale", "--frame-betas", "--metric"):
        assert fragment in message


def test_yaml_config_then_command_line_options(tmp_path):
    from mof.train.cli_options import config_from_options

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": "frozen-tiny", "train": "shards", "out": "runs/a",
                                    "frames": "16:4", "lr": 0.01, "frame-lr": 0.002,
                                    "epochs": 3}))
    config = config_from_options({"config_file": str(path), "lr": 0.5, "epochs": None,
                                  "model_arg": ("depth=3",), "quiet": True})
    assert (config.lr, config.frame_lr, config.epochs) == (0.5, 0.002, 3)
    assert (config.regular_frames, config.num_frames, config.model_args) == (16, 4, {"depth": 3})
    assert config.batch_size == TrainConfig.batch_size  # untouched: the dataclass default
    path.write_text(yaml.safe_dump({"model": "m", "train": "t", "out": "o", "lerning_rate": 1}))
    with pytest.raises(ConfigError, match="unknown setting 'lerning_rate'"):
        load_train_config(path)


def test_resume_rejects_changed_settings(tmp_path):
    from mof.train.config import save_train_config

    save_train_config(TrainConfig(model="frozen-tiny", train="t", out=str(tmp_path)),
                      tmp_path / "config.yaml")
    with pytest.raises(ConfigError, match="--lr cannot change on resume"):
        load_train_config(None, {"resume": str(tmp_path), "lr": 0.1, "epochs": 20})
    config = load_train_config(None, {"resume": str(tmp_path), "epochs": 20})
    assert config.epochs == 20 and config.model == "frozen-tiny"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("meta_grad", ["exact", "finite-diff"])
def test_mof_on_gpu_with_bf16_and_checkpointing(train_data, tmp_path, meta_grad):
    run = tmp_path / "gpu"
    summary = train(tiny_config(train_data, run, test=train_data["test"], device="cuda",
                                amp=True, grad_checkpointing=True, meta_grad=meta_grad),
                    progress=False)
    assert summary["steps"] == TRAIN_VIDEOS // 4 and "t2v/R@1" in summary
    _, rows = read_store(run)
    assert (rows.step == 1).all() and np.isfinite(rows.frames).all()


def test_setup_lists_videos_from_the_sidecar_without_opening_a_shard(train_data, tmp_path,
                                                                      caplog):
    from mof.train.distributed import DistInfo
    from mof.train.store_setup import scan_train_shards
    from pipeline.sharding.samples import resolve_shards

    one = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    intact, broken = tmp_path / "intact", tmp_path / "broken"
    for copy in (intact, broken):
        shutil.copytree(train_data["train"], copy)
    (intact / "samples.jsonl").unlink()
    with caplog.at_level(logging.WARNING, logger="mof.train.store_setup"):
        scanned = scan_train_shards(resolve_shards(intact), one, workers=0, progress=False)
    notices = [r.getMessage() for r in caplog.records]
    assert len(notices) == 1 and "no samples.jsonl" in notices[0]
    # Shards that cannot be read at all: set-up must not open them.
    for shard in broken.glob("*.tar"):
        shard.write_bytes(b"not a tar")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mof.train.store_setup"):
        listed = scan_train_shards(resolve_shards(broken), one, workers=0, progress=False)
    assert caplog.records == []
    assert listed.keys == scanned.keys and len(listed.keys) == TRAIN_VIDEOS
    assert sorted(listed.captions) == sorted(scanned.captions)
    assert (listed.stored_frames, listed.frame_side, listed.dataset, listed.rank_samples) == (
        scanned.stored_frames, scanned.frame_side, scanned.dataset, scanned.rank_samples)


def test_setup_names_the_keys_two_training_shards_share(train_data, tmp_path):
    from mof.train.distributed import DistInfo
    from mof.train.store_setup import scan_train_shards
    from pipeline.sharding.samples import resolve_shards

    one = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    again = tmp_path / "again"
    shutil.copytree(train_data["train"], again)
    shards = resolve_shards(train_data["train"]) + resolve_shards(again)
    first = scan_train_shards(resolve_shards(train_data["train"]), one, workers=0,
                              progress=False)
    with pytest.raises(ValueError, match="duplicate training keys") as error:
        scan_train_shards(shards, one, workers=0, progress=False)
    assert str(first.keys[:10]) in str(error.value)

"""The pre-training corpus of ``mof-cli reproduce table4`` on the synthetic dataset: generated
once (its own seed, its own directory keyed by its settings), sharded with the warm start's
frame count, trained on by the warm start, reused by later calls and resumed after a crash.

Real components throughout: generated H.264 videos, tar shards, a training run of two steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mof.reproduce import reproduce_table4
from mof.reproduce.config import (
    TINY_FINE_TUNE_LR,
    TINY_PRETRAIN_VIDEOS,
    TINY_WARM_START_LR,
    Table4Config,
)
from mof.reproduce.grid import Cell
from mof.reproduce.paths import PRETRAIN_SEED, cell_dir, warm_start_dir
from mof.reproduce.runner import shard_paths
from mof.reproduce.warm_start import run_warm_start
from pipeline.sharding.index import read_index
from tests.table4_micro import micro_config


def _config(base: Path, **overrides) -> Table4Config:
    settings = {"grid": "1", "jobs": 1, "warm_start_frames": 2, "pretrain_videos": 6}
    return micro_config(base, **{**settings, **overrides})


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("pretrain")
    cfg = _config(base)
    threads = torch.get_num_threads()
    summary = reproduce_table4(cfg)
    return {"base": base, "cfg": cfg, "summary": summary, "threads": threads}


def test_defaults_and_validation(tmp_path):
    tiny = Table4Config(work=str(tmp_path))
    assert tiny.resolved_pretrain_videos == TINY_PRETRAIN_VIDEOS
    assert Table4Config(work=str(tmp_path), warm_start_epochs=0).resolved_pretrain_videos == 0
    assert Table4Config(work=str(tmp_path), model="frozen").resolved_pretrain_videos == 0
    with pytest.raises(ValueError) as err:
        Table4Config(dataset="msrvtt", root=str(tmp_path), pretrain_videos=10)
    assert "--pretrain-videos" in str(err.value) and "synthetic" in str(err.value)
    with pytest.raises(ValueError, match="--pretrain-videos must be >= 0"):
        Table4Config(pretrain_videos=-1)


def test_learning_rates_of_warm_start_and_cells(tmp_path):
    """Tiny cells fine-tune the warm start at a lower lr than it trained at from random
    weights; without a warm start they train from random weights at the warm start's lr."""
    tiny = Table4Config(work=str(tmp_path))
    assert (tiny.resolved_warm_start_lr, tiny.resolved_lr) == (TINY_WARM_START_LR,
                                                               TINY_FINE_TUNE_LR)
    assert tiny.warm_start_config("t", "o").lr == TINY_WARM_START_LR
    assert tiny.train_config(tiny.cells[0], 0, "t", None, "o").lr == TINY_FINE_TUNE_LR
    assert Table4Config(work=str(tmp_path), warm_start_epochs=0).resolved_lr == TINY_WARM_START_LR
    given = Table4Config(work=str(tmp_path), lr=3e-4, warm_start_lr=2e-3)
    assert (given.resolved_warm_start_lr, given.resolved_lr) == (2e-3, 3e-4)
    assert Table4Config(work=str(tmp_path), model="frozen").resolved_lr == 1e-5
    with pytest.raises(ValueError, match="--warm-start-lr must be > 0"):
        Table4Config(warm_start_lr=0.0)


def test_variant_grids_share_the_warm_start(tmp_path):
    """Frame-level train args (a MOF variant's) leave the warm start, a baseline, as it is;
    other train args reach it."""
    import dataclasses

    from mof.train.config import FRAME_LEVEL_SETTINGS, TrainConfig

    assert {f.name for f in dataclasses.fields(TrainConfig)} >= FRAME_LEVEL_SETTINGS
    plain = Table4Config(work=str(tmp_path), train_args={"augment": "none"})
    variant = Table4Config(work=str(tmp_path), train_args={
        "augment": "none", "frame_param": "mix", "inner_step": "adamw", "frame_steps": 3})
    assert variant.warm_start_config("t", "o") == plain.warm_start_config("t", "o")
    assert variant.warm_start_config("t", "o").augment == "none"
    mof = variant.train_config(variant.cells[-1], 0, "t", None, "o")
    assert (mof.frame_param, mof.inner_step, mof.frame_steps) == ("mix", "adamw", 3)


def test_warm_start_trains_on_the_generated_corpus(grid):
    cfg, summary = grid["cfg"], grid["summary"]
    assert summary.outcomes == {"trained": 1} and not summary.failed
    corpus = Path(cfg.work) / "synthetic" / f"pretrain-n6-seed{PRETRAIN_SEED}"
    lines = (corpus / "annotations.jsonl").read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(x)["split"] == "train" for x in lines)
    # Other videos than the dataset's (its own seed), with the dataset's ids.
    data = Path(cfg.work) / "synthetic" / "data" / "annotations.jsonl"
    first = json.loads(data.read_text().splitlines()[0])
    assert json.loads(lines[0])["video_id"] == first["video_id"]
    assert json.loads(lines[0])["captions"] != first["captions"]
    assert f"seed: {PRETRAIN_SEED}" in (corpus / "synth_config.yaml").read_text()
    shards = shard_paths(cfg)
    index = read_index(shards.pretrain)
    assert index["totals"]["samples"] == 6 and index["config"]["frames"] == 2
    where = warm_start_dir(cfg)
    assert where.name == f"warm-start-pretrain-n6-seed{PRETRAIN_SEED}"
    record = json.loads((where / "warm_start.json").read_text())
    assert record["train_config"]["train"] == shards.pretrain
    # Trained on the grid's cores whatever the process had, which it gets back afterwards.
    assert record["threads"] == cfg.jobs * cfg.threads
    assert torch.get_num_threads() == grid["threads"]
    assert record["metrics"]["t2v"]["count"] == 4 * 20  # the test split: 20 captions a video
    assert "from random weights, seed 0, on a generated pre-training corpus of 6 other videos" in (
        Path(cfg.results) / "table4.md").read_text()
    run_config = (cell_dir(cfg, Cell(1), 0) / "run" / "config.yaml").read_text()
    assert f"init_from: {where / 'run' / 'checkpoints' / 'last'}" in run_config


def test_warm_start_is_reused_keyed_by_settings_and_resumed(grid):
    base, cfg = grid["base"], grid["cfg"]
    where = warm_start_dir(cfg)
    checkpoint = where / "run" / "checkpoints" / "last" / "trainer_state.pt"
    stamp, record = checkpoint.stat().st_mtime_ns, (where / "warm_start.json").read_text()
    # A later call with more seeds reuses the corpus and the warm start as they are.
    again = reproduce_table4(_config(base, seeds=2))
    assert again.outcomes == {"skipped": 1, "trained": 1}
    assert checkpoint.stat().st_mtime_ns == stamp
    assert (where / "warm_start.json").read_text() == record
    # Killed after training, before its record: the run resumes from its last checkpoint and
    # is not trained again.
    (where / "warm_start.json").unlink()
    resumed = run_warm_start(cfg, shard_paths(cfg))
    assert checkpoint.stat().st_mtime_ns == stamp
    assert resumed["epoch_loss"] == json.loads(record)["epoch_loss"]
    # Another corpus size is another corpus and another warm start; the first one stays.
    other = _config(base, pretrain_videos=5)
    assert warm_start_dir(other) != where and shard_paths(other).pretrain != shard_paths(
        cfg).pretrain
    assert run_warm_start(other, _prepared(other))["train_config"]["train"] == shard_paths(
        other).pretrain
    assert checkpoint.stat().st_mtime_ns == stamp


def _prepared(cfg: Table4Config):
    from mof.reproduce.runner import prepare_data

    return prepare_data(cfg)

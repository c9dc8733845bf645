"""``mof-cli export-frames`` on a real tiny MOF run: shards, Zarr store, checkpoint, PNG, MP4.

One run of frozen-tiny (3 phases, 12 videos, R:U = 8:2, 64 px) is trained per module with a
frame learning rate large enough for one Adam step to move the frames by a few grey levels.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import main
from mof.export.export import ExportConfig, export_frames
from mof.train import train
from pipeline.framestore.store import FrameStore
from pipeline.sampling import uniform_subset
from pipeline.sharding.samples import iter_shard, resolve_shards
from tests.train_data import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

R, U, SIZE = 8, 2, 64


@pytest.fixture(scope="module")
def mof_run(train_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("export") / "run"
    # No augmentation (a crop leaves the pixels outside it untouched) and a large inner step
    # and frame learning rate, so that one frame step moves every frame visibly.
    train(tiny_config(train_data, run, frames=f"{R}:{U}", augment="none", inner_lr=1.0,
                      frame_lr=0.05), progress=False)
    return run


def _png(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _shard_frames(train_shards: str) -> dict[str, np.ndarray]:
    return {s["key"]: s["frames"] for shard in resolve_shards(train_shards)
            for s in iter_shard(shard)}


def test_export_grid_frames_attention_and_mp4(mof_run, train_data, tmp_path):
    summary = export_frames(ExportConfig(run=str(mof_run), out=str(tmp_path / "x"), num=3,
                                         mp4=True, attention=True, progress=False))
    store = FrameStore.open(mof_run / "mof.zarr")
    mean, std = (np.asarray(store.attrs[k]).reshape(3, 1, 1) for k in ("mean", "std"))
    stored = _shard_frames(train_data["train"])
    assert [v["video_id"] for v in summary["videos"]] == store.video_ids[:3]
    assert summary["notes"] == [] and summary["attention"]["checkpoint"] == "checkpoints/last"
    for video in summary["videos"]:
        files = video["files"]
        frames = {name: np.stack([_png(p) for p in files[name]])
                  for name in ("regular", "uniform", "mof")}
        assert {k: v.shape for k, v in frames.items()} == {
            "regular": (R, SIZE, SIZE, 3), "uniform": (U, SIZE, SIZE, 3),
            "mof": (U, SIZE, SIZE, 3)}
        # Uniform row: the stored shard frames at the segment midpoints, to the grey level.
        want = stored[video["shard_key"]][uniform_subset(len(stored[video["shard_key"]]), U)]
        assert np.abs(frames["uniform"].astype(int) - want).max() <= 1
        # MOF row: the store's frames de-normalised; and they moved away from the init.
        learned = store.read(store.row_of([video["shard_key"]])).frames[0]
        pixels = np.clip(np.rint((learned * std + mean) * 255), 0, 255).transpose(0, 2, 3, 1)
        assert np.abs(frames["mof"].astype(int) - pixels).max() <= 1
        assert np.abs(frames["mof"].astype(int) - frames["uniform"]).max() >= 2
        # Grid: every labelled cell shows its raw frame (scaled up by an integer factor).
        grid = _png(files["grid"])
        assert list(grid.shape[1::-1]) == video["grid_size"]
        assert set(video["grid_boxes"]) == {"regular", "uniform", "mof", "attention_uniform",
                                            "attention_mof"}
        for name, boxes in video["grid_boxes"].items():
            for (left, top, right, bottom), path in zip(boxes, files[name], strict=True):
                scale = (right - left) // SIZE
                np.testing.assert_array_equal(grid[top:bottom:scale, left:right:scale],
                                              _png(path))
        with np.load(files["attention_maps"]) as maps:
            for name in ("uniform", "mof"):
                assert maps[name].shape == (U, 4, 4)
                np.testing.assert_allclose(maps[name].sum(axis=(1, 2)), 1.0, atol=1e-5)
        from pipeline.synth.render import decode_mp4

        movie = decode_mp4(Path(files["mp4"]))
        assert movie.shape == (U, SIZE, SIZE, 3)
        assert np.abs(movie.astype(int) - frames["mof"]).mean() < 3  # H.264 at crf 12
    saved = json.loads((tmp_path / "x" / "summary.json").read_text())
    assert saved["videos"][0]["files"]["grid"] == summary["videos"][0]["files"]["grid"]
    assert "synth00000/grid.png" in (tmp_path / "x" / "index.html").read_text()


_WRITER = """
import sys, time
import numpy as np
from pipeline.framestore.store import FrameRows, FrameStore
store = FrameStore.open(sys.argv[1], mode="r+", sweep_min_age_s=1e9)
rows = np.arange(4)
shape = (4, *store.read([0]).frames.shape[1:])
zeros = np.zeros(shape, np.float32)
version = 0
while True:
    value = -1.5 + (version % 30) * 0.1  # one constant per version: a torn read would mix two
    store.write(rows, FrameRows(np.full(shape, value, np.float32), zeros, zeros,
                                np.full(4, version, np.int64)))
    if version == 0:
        print("ready", flush=True)
    version += 1
"""


def test_export_reads_while_another_process_writes_rows(mof_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(mof_run, run)
    orphan = run / "mof.zarr" / "frames" / "c" / "old.partial"  # a killed writer's leftover
    orphan.write_bytes(b"")
    os.utime(orphan, (time.time() - 3600, time.time() - 3600))
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(run / "mof.zarr")],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    try:
        assert writer.stdout.readline().strip() == "ready"
        seen = set()
        for i in range(3):
            summary = export_frames(ExportConfig(run=str(run), out=str(tmp_path / f"x{i}"),
                                                 num=4, progress=False))
            for video in summary["videos"]:
                mof = np.stack([_png(p) for p in video["files"]["mof"]])
                flat = mof.reshape(-1, 3)
                assert (flat == flat[0]).all(), "a frame mixes two writes"
                seen.add(tuple(flat[0]))
        assert writer.poll() is None  # the writer was writing during every export
    finally:
        writer.kill()
        writer.wait()
    assert len(seen) > 1  # reads interleaved with writes
    assert orphan.exists()  # the read-only open swept nothing


def test_cli_export_frames(mof_run, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(main, ["export-frames", "--run", str(mof_run), "--ids",
                                       "synth00003,synth00001", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "exported 2 videos" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "summary.json", "synth00001",
                                                    "synth00003"]
    both = CliRunner().invoke(main, ["export-frames", "--run", str(mof_run), "--ids", "a",
                                     "--num", "2", "--out", str(out)])
    assert both.exit_code == 2 and "either --ids or --num" in both.output
    unknown = CliRunner().invoke(main, ["export-frames", "--run", str(mof_run), "--ids",
                                        "nope", "--out", str(out)])
    assert unknown.exit_code == 1 and "['nope'] are in none of the" in unknown.output

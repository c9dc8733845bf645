"""Shard reader and ``mof-cli inspect``: resolution, rank/worker splits, shuffling, corruption."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from torch.utils.data import DataLoader

from cli import main
from pipeline.sharding.contact_sheet import CAPTION_HEIGHT
from pipeline.sharding.reader import ShardDataset
from pipeline.sharding.samples import ShardReadError, iter_shard, resolve_shards
from pipeline.sharding.write import ShardConfig, write_shards
from tests.test_shard import make_dataset

VIDEOS = [f"v{i:02d}" for i in range(10)]
FRAMES, SIZE, SHARD_SIZE = 3, 24, 2


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    root, out = tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("shards")
    make_dataset(root, VIDEOS, {"gone": None})
    write_shards(
        ShardConfig(
            dataset="synthetic",
            root=str(root),
            split="train",
            out=str(out),
            frames=FRAMES,
            size=SIZE,
            backend="ffmpeg",
            shard_size=SHARD_SIZE,
            num_nodes=1,
            node_rank=0,
        ),
        progress=False,
    )
    return out


def keys(dataset: ShardDataset, num_workers: int = 0) -> list[str]:
    return [s["key"] for s in DataLoader(dataset, batch_size=None, num_workers=num_workers)]


def test_resolve_shards_accepts_directory_pattern_glob_and_list(shard_dir, tmp_path):
    listed = resolve_shards(shard_dir)
    assert [Path(p).name for p in listed] == [f"synthetic-train-{k:06d}.tar" for k in range(6)]
    assert resolve_shards(f"{shard_dir}/synthetic-train-{{000000..000005}}.tar") == listed
    assert resolve_shards(f"{shard_dir}/*.tar") == listed
    assert resolve_shards(shard_dir / "index.json") == listed
    assert resolve_shards([listed[1], listed[0]]) == [listed[1], listed[0]]
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_shards(f"{shard_dir}/synthetic-train-{{000000..000009}}.tar")
    with pytest.raises(FileNotFoundError, match="has not finished"):
        resolve_shards(tmp_path)


@pytest.mark.parametrize("world, workers", [(1, 0), (2, 2), (4, 2)])
def test_ranks_and_workers_read_every_sample_exactly_once(shard_dir, world, workers):
    # (4, 2): 6 shards for 8 workers, so two workers idle and the cover must still be complete.
    seen = [
        k
        for rank in range(world)
        for k in keys(
            ShardDataset(shard_dir, shuffle=4, seed=1, rank=rank, world_size=world), workers
        )
    ]
    assert sorted(seen) == VIDEOS


def test_more_ranks_than_shards_is_an_error(shard_dir):
    with pytest.raises(ValueError, match="6 shards cannot feed 7 ranks"):
        keys(ShardDataset(shard_dir, rank=0, world_size=7))


def test_order_is_deterministic_given_seed_and_epoch(shard_dir):
    assert keys(ShardDataset(shard_dir)) == VIDEOS  # no shuffle: index order
    dataset = ShardDataset(shard_dir, shuffle=6, seed=3)
    first, again = keys(dataset, 2), keys(dataset, 2)
    dataset.set_epoch(1)
    second = keys(dataset, 2)
    assert first == again and first != second and sorted(second) == VIDEOS
    assert keys(ShardDataset(shard_dir, shuffle=6, seed=4), 2) != first


def test_samples_are_typed_and_undecoded_mode_keeps_bytes(shard_dir):
    sample = next(iter(ShardDataset(shard_dir)))
    assert sample["frames"].dtype == np.uint8 and sample["frames"].shape == (FRAMES, SIZE, SIZE, 3)
    assert sample["meta"]["video_id"] == sample["key"] == VIDEOS[0]
    raw = next(iter(ShardDataset(shard_dir, decode=False)))
    np.testing.assert_array_equal(np.load(io.BytesIO(raw["frames"])), sample["frames"])


def _rewrite_member(src: str, dst: Path, member: str, data: bytes) -> None:
    with tarfile.open(src) as old, tarfile.open(dst, "w") as new:
        for info in old:
            payload = old.extractfile(info).read()
            if info.name == member:
                payload, info.size = data, len(data)
            new.addfile(info, io.BytesIO(payload))


def test_corrupt_sample_raises_naming_shard_and_key(shard_dir, tmp_path):
    shard = resolve_shards(shard_dir)[1]  # v01, v02 ("gone" sorts first and failed)
    bad_npy = tmp_path / "bad-npy.tar"
    _rewrite_member(shard, bad_npy, f"{VIDEOS[2]}.frames.npy", b"not an array")
    with pytest.raises(ShardReadError, match=rf"bad-npy\.tar: sample '{VIDEOS[2]}'"):
        list(iter_shard(str(bad_npy)))
    floats = io.BytesIO()
    np.save(floats, np.zeros((FRAMES, SIZE, SIZE, 3), np.float32))
    bad_dtype = tmp_path / "bad-dtype.tar"
    _rewrite_member(shard, bad_dtype, f"{VIDEOS[1]}.frames.npy", floats.getvalue())
    with pytest.raises(ShardReadError, match=rf"bad-dtype\.tar: sample '{VIDEOS[1]}'.*float32"):
        list(ShardDataset(str(bad_dtype)))
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(Path(shard).read_bytes()[:5000])
    with pytest.raises(ShardReadError, match=r"truncated\.tar"):
        list(iter_shard(str(truncated)))


def test_cli_inspect_counts_and_contact_sheet(shard_dir, tmp_path):
    sheet = tmp_path / "sheet.png"
    result = CliRunner().invoke(
        main,
        ["inspect", str(shard_dir), "--sheet", str(sheet), "--samples", "3", "--max-frames", "2"],
    )
    assert result.exit_code == 0, result.output
    lines = dict(line.split(":", 1) for line in result.output.splitlines())
    assert int(lines["shards"]) == 6 and int(lines["samples"]) == len(VIDEOS)
    assert int(lines["captions"]) == 2 * len(VIDEOS) and int(lines["errors"]) == 1
    assert lines["frames per sample"].strip() == str(FRAMES)
    assert lines["frame size"].strip() == f"{SIZE}x{SIZE}"
    assert int(lines["bytes"].split()[0]) == sum(p.stat().st_size for p in shard_dir.glob("*.tar"))
    image = np.asarray(Image.open(sheet).convert("RGB"))
    assert image.shape == (3 * (SIZE + CAPTION_HEIGHT), 2 * SIZE, 3)
    first = [s["frames"] for _, s in zip(range(3), ShardDataset(shard_dir))]
    row_h = SIZE + CAPTION_HEIGHT
    for row in range(3):  # two frames shown of three: the first and the last
        np.testing.assert_array_equal(image[row * row_h : row * row_h + SIZE, :SIZE], first[row][0])
        np.testing.assert_array_equal(
            image[row * row_h : row * row_h + SIZE, SIZE:], first[row][-1]
        )
        assert image[row * row_h + SIZE :, :][:CAPTION_HEIGHT].max() > 200  # caption text drawn


def test_inspect_without_errors_file_says_so(shard_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shard_dir, copy)
    (copy / "errors.jsonl").unlink()
    result = CliRunner().invoke(main, ["inspect", str(copy / "synthetic-train-000001.tar")])
    assert result.exit_code == 0, result.output
    assert "no errors.jsonl" in result.output and "samples:           2" in result.output
    assert not (copy / "sheet.png").exists()

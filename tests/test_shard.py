"""``mof-cli shard``: end to end on real encoded videos, resume after SIGKILL, errors, nodes."""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from pipeline.decode.video import decode_video
from pipeline.sharding.index import (
    ShardIndexError,
    merge_indexes,
    read_index,
    read_listed_samples,
)
from pipeline.sharding.reader import ShardDataset
from pipeline.sharding.samples import iter_shard, resolve_shards
from pipeline.sharding.worker import sanitise_keys
from pipeline.sharding.write import ShardConfig, ShardConfigMismatch, write_shards
from tests.videos import make_video
from tests.videos import read_index as frame_number

GOOD = [f"vid{i}" for i in range(7)] + ["clip.with.dots"]
BAD = {"missing": None, "empty": b"", "notavideo": b"this is plain text, not a video\n" * 20}
FRAMES, SIZE, SHARD_SIZE = 4, 32, 3


def make_dataset(
    root: Path, good: list[str], bad: dict[str, bytes | None], split: str = "train"
) -> None:
    """A synthetic-format dataset: ``annotations.jsonl`` plus the files it names."""
    (root / "videos").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, vid in enumerate(good):
        make_video(root / "videos" / f"{vid}.mp4", size=(48, 40), fps=10, frames=8 + 3 * i)
    for vid, content in bad.items():
        if content is not None:
            (root / "videos" / f"{vid}.mp4").write_bytes(content)
    for vid in good + list(bad):
        captions = [f"caption one of {vid}", f"caption two of {vid}"]
        lines.append(
            json.dumps(
                {"video_id": vid, "path": f"videos/{vid}.mp4", "captions": captions, "split": split}
            )
        )
    with open(root / "annotations.jsonl", "a") as f:
        f.write("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_dataset(root, GOOD, BAD)
    return root


def config(root: Path, out: Path, **overrides) -> ShardConfig:
    options = {
        "dataset": "synthetic",
        "root": str(root),
        "split": "train",
        "out": str(out),
        "frames": FRAMES,
        "size": SIZE,
        "backend": "ffmpeg",
        "shard_size": SHARD_SIZE,
        "num_nodes": 1,
        "node_rank": 0,
    }
    options.update(overrides)
    return ShardConfig(**options)


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory) -> Path:
    """One uninterrupted single-process run that the other tests compare against."""
    out = tmp_path_factory.mktemp("reference")
    summary = write_shards(config(data_root, out), progress=False)
    assert summary.written == len(GOOD) and summary.failed == len(BAD)
    return out


def shard_args(root: Path, out: Path) -> list[str]:
    """``mof-cli shard`` arguments equivalent to :func:`config` (``--out`` last)."""
    return ["shard", "--dataset", "synthetic", "--root", str(root), "--split", "train",
            "--frames", str(FRAMES), "--size", str(SIZE), "--backend", "ffmpeg",
            "--shard-size", str(SHARD_SIZE), "--out", str(out)]  # fmt: skip


def tar_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


def test_end_to_end_read_back(data_root, reference):
    samples = list(ShardDataset(reference))
    assert sorted(s["meta"]["video_id"] for s in samples) == sorted(GOOD)
    assert len({s["key"] for s in samples}) == len(GOOD)
    for sample in samples:
        meta = sample["meta"]
        assert "." not in sample["key"]
        decoded = decode_video(data_root / meta["source"], FRAMES, SIZE, backend="ffmpeg")
        np.testing.assert_array_equal(sample["frames"], decoded.frames)
        assert sample["frames"].dtype == np.uint8 and sample["frames"].shape == (
            FRAMES,
            SIZE,
            SIZE,
            3,
        )
        assert meta["indices"] == [int(i) for i in decoded.indices]
        assert [frame_number(f) for f in sample["frames"]] == meta[
            "indices"
        ]  # the frames they name
        assert meta["num_frames"] == decoded.num_frames and meta["fps"] == pytest.approx(
            decoded.fps
        )
        assert meta["duration_s"] == pytest.approx(decoded.duration_s)
        assert meta["captions"] == [
            f"caption one of {meta['video_id']}",
            f"caption two of {meta['video_id']}",
        ]
        assert (meta["split"], meta["dataset"], meta["backend"]) == ("train", "synthetic", "ffmpeg")
        assert meta["source"] == f"videos/{meta['video_id']}.mp4" and meta["format_version"] >= 1
    index = read_index(reference)
    total = len(GOOD) + len(BAD)
    assert [s["name"] for s in index["shards"]] == [
        f"synthetic-train-{k:06d}.tar" for k in range(-(-total // SHARD_SIZE))
    ]
    assert index["totals"]["samples"] == len(GOOD) and index["totals"]["errors"] == len(BAD)
    assert index["totals"]["bytes"] == sum(p.stat().st_size for p in reference.glob("*.tar"))
    assert sum(s["samples"] for s in index["shards"]) == len(GOOD)
    assert index["config"]["frames"] == FRAMES and index["config"]["backend"] == "ffmpeg"


def test_bad_inputs_are_recorded_not_fatal(reference):
    errors = [json.loads(line) for line in (reference / "errors.jsonl").read_text().splitlines()]
    assert sorted(e["video_id"] for e in errors) == sorted(BAD)
    for error in errors:
        assert set(error) >= {"video_id", "source", "reason", "stage"} and error["reason"]
    stages = {e["video_id"]: e["stage"] for e in errors}
    assert (
        stages["missing"] == "read"
        and stages["empty"] == "decode"
        and stages["notavideo"] == "decode"
    )
    assert not list(reference.glob("*.tmp"))


def _plain_tar(members: list[tuple[str, bytes]]) -> bytes:
    """The shard format written with the standard library alone: a PAX tar whose members carry
    mtime 0, mode 0444 and no owner (the bytes every earlier release wrote)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_shards_are_byte_identical_to_the_plain_tar_format(reference):
    for path in sorted(reference.glob("*.tar")):
        with tarfile.open(path) as tar:
            members = [(m.name, tar.extractfile(m).read()) for m in tar]
        names = [name for name, _ in members]
        # Each sample's members adjacent and in field order: frames.npy, then json.
        assert names == [f"{k}.{f}" for k in dict.fromkeys(n.split(".")[0] for n in names)
                         for f in ("frames.npy", "json")]
        assert path.read_bytes() == _plain_tar(members), path.name


def test_parallel_workers_write_identical_shards(data_root, reference, tmp_path):
    summary = write_shards(config(data_root, tmp_path, workers=2), progress=False)
    assert summary.written == len(GOOD)
    assert tar_bytes(tmp_path) == tar_bytes(reference)
    assert (tmp_path / "errors.jsonl").read_text() == (reference / "errors.jsonl").read_text()


def test_rerun_of_finished_job_does_nothing(data_root, reference):
    before = {p.name: p.stat().st_mtime_ns for p in reference.iterdir()}
    summary = write_shards(config(data_root, reference, workers=2), progress=False)
    assert summary.nothing_to_do and summary.written == 0
    assert "nothing to do" in summary.format()
    assert {p.name: p.stat().st_mtime_ns for p in reference.iterdir()} == before


def test_different_config_into_same_out_is_an_error(data_root, reference):
    with pytest.raises(ShardConfigMismatch, match="frames") as info:
        write_shards(config(data_root, reference, frames=FRAMES + 1, size=SIZE * 2), progress=False)
    assert "size" in str(info.value)


def test_config_reports_every_problem_at_once(tmp_path):
    with pytest.raises(ValueError) as info:
        ShardConfig(
            dataset="synthetic",
            root=str(tmp_path / "nope"),
            split="train",
            out=str(tmp_path),
            frames=0,
            workers=0,
            backend="vaapi",
            num_nodes=2,
            node_rank=2,
        )
    for option in ("--root", "--frames", "--workers", "--backend", "--node-rank"):
        assert option in str(info.value)


def test_resume_rewrites_missing_shard_and_sweeps_tmp(data_root, reference, tmp_path):
    out = tmp_path / "out"
    write_shards(config(data_root, out), progress=False)
    victim = sorted(out.glob("*.tar"))[1]
    victim.unlink()
    (out / "index.json").unlink()
    (out / f"{victim.name}.tmp").write_bytes(b"half a shard")
    summary = write_shards(config(data_root, out), progress=False)
    assert summary.shards_written == 1 and summary.skipped == len(GOOD) + len(BAD) - SHARD_SIZE
    assert not list(out.glob("*.tmp"))
    assert tar_bytes(out) == tar_bytes(reference)


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.parametrize("workers, kill_after_shards", [(1, 0), (1, 1), (2, 2)])
def test_sigkill_and_resume_yields_the_same_samples(
    data_root, reference, tmp_path, workers, kill_after_shards
):
    out = tmp_path / "out"
    command = [str(Path(sys.executable).with_name("mof-cli")), *shard_args(data_root, out)]
    command += ["--workers", str(workers)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    # Kill once the run has started (its config is saved) and the wanted shards are complete.
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "shard_config.json").exists() and len(
            list(out.glob("*.tar"))
        ) >= kill_after_shards:
            break
        time.sleep(0.005)
    children = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "index.json").exists()
    deadline = time.monotonic() + 5  # workers must not outlive a killed parent
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in children):
        time.sleep(0.02)
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]
    for tar in out.glob("*.tar"):  # whatever is under a final name is a whole shard
        assert tar.read_bytes() == reference.joinpath(tar.name).read_bytes()
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert tar_bytes(out) == tar_bytes(reference)
    keys = [s["key"] for s in ShardDataset(out)]
    assert sorted(keys) == sorted(sanitise_keys(GOOD)) and len(set(keys)) == len(keys)
    assert (out / "errors.jsonl").read_text() == (reference / "errors.jsonl").read_text()


def test_multi_node_partial_indexes_merge(data_root, reference, tmp_path):
    first = write_shards(config(data_root, tmp_path, num_nodes=2, node_rank=1), progress=False)
    assert not (tmp_path / "index.json").exists() and "--merge-index" in first.format()
    with pytest.raises(ShardIndexError, match="rank"):
        merge_indexes(tmp_path)
    write_shards(config(data_root, tmp_path, num_nodes=2, node_rank=0), progress=False)
    names = sorted(tmp_path.glob("index.node-*-of-00002.json"))
    assert [n.name for n in names] == [
        "index.node-00000-of-00002.json",
        "index.node-00001-of-00002.json",
    ]
    partial = [json.loads(n.read_text()) for n in names]
    own = [{s["name"] for s in p["shards"]} for p in partial]
    assert not own[0] & own[1]
    assert own[0] | own[1] == {p.name for p in reference.glob("*.tar")}
    (tmp_path / "index.json").unlink()  # the last node merged; merge again explicitly
    result = CliRunner().invoke(main, ["shard", "--merge-index", str(tmp_path)])
    assert result.exit_code == 0, result.output
    merged, single = read_index(tmp_path), read_index(reference)
    assert merged["shards"] == single["shards"] and merged["totals"] == single["totals"]
    assert merged["samples_file"] == single["samples_file"]
    assert (tmp_path / "samples.jsonl").read_text() == (reference / "samples.jsonl").read_text()
    assert tar_bytes(tmp_path) == tar_bytes(reference)
    assert (tmp_path / "errors.jsonl").read_text() == (reference / "errors.jsonl").read_text()



def test_samples_sidecar_lists_what_reading_the_shards_yields(reference):
    shards = resolve_shards(reference)
    streamed = [(s["key"], s["meta"]["video_id"], s["meta"]["captions"], Path(shard).name)
                for shard in shards for s in iter_shard(shard, decode=False)]
    listed, reason = read_listed_samples(shards)
    assert reason == "" and listed is not None
    assert [(r["key"], r["video_id"], r["captions"], r["shard"]) for r in listed.rows] == streamed
    assert listed.per_shard == [s["samples"] for s in read_index(reference)["shards"]]
    assert listed.frames_shape == (FRAMES, SIZE, SIZE, 3) and listed.dataset == "synthetic"
    assert read_index(reference)["samples_file"] == {"name": "samples.jsonl",
                                                     "samples": len(GOOD)}


def test_samples_sidecar_missing_or_stale_is_reported(reference, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    shards = resolve_shards(out)
    lines = (out / "samples.jsonl").read_text().splitlines()
    (out / "samples.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    listed, reason = read_listed_samples(shards)
    assert listed is None and f"has {len(lines) - 1} lines" in reason
    (out / "samples.jsonl").write_text("\n".join(["not json"] + lines[1:]) + "\n")
    listed, reason = read_listed_samples(shards)
    assert listed is None and "cannot be read" in reason and "samples.jsonl" in reason
    (out / "samples.jsonl").unlink()
    listed, reason = read_listed_samples(shards)
    assert listed is None and "no samples.jsonl" in reason
    listed, reason = read_listed_samples([str(data) for data in shards[:1]] + [str(tmp_path)])
    assert listed is None


def test_rerun_adds_the_sidecar_to_an_index_without_one(data_root, reference, tmp_path):
    out = tmp_path / "older"
    shutil.copytree(reference, out)
    (out / "samples.jsonl").unlink()
    index = read_index(out)
    del index["samples_file"]
    (out / "index.json").write_text(json.dumps(index))
    tars = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    summary = write_shards(config(data_root, out), progress=False)
    assert summary.written == 0
    assert (out / "samples.jsonl").read_text() == (reference / "samples.jsonl").read_text()
    rewritten, original = read_index(out), read_index(reference)
    assert [rewritten[k] for k in ("shards", "totals", "samples_file")] == [
        original[k] for k in ("shards", "totals", "samples_file")]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == tars


def test_cli_shard_strict_exit_code(data_root, tmp_path):
    args = shard_args(data_root, tmp_path / "unused")[:-2]
    lenient = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a")])
    assert lenient.exit_code == 0, lenient.output
    assert f"{len(GOOD)} written" in lenient.output and f"{len(BAD)} failed" in lenient.output
    strict = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "b"), "--strict"])
    assert strict.exit_code != 0 and "--strict" in strict.output
    assert (tmp_path / "b" / "index.json").exists()  # the work was finished before failing

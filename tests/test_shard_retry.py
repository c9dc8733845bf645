"""``mof-cli shard --retry-failed`` and interrupted runs, on real encoded videos."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.decode.video import decode_video
from pipeline.sharding.index import read_index
from pipeline.sharding.reader import ShardDataset
from pipeline.sharding.write import write_shards
from tests.test_shard import (
    FRAMES,
    SIZE,
    _children,
    config,
    make_dataset,
    shard_args,
    tar_bytes,
)
from tests.videos import make_video

GOOD = [f"ok{i}" for i in range(4)]
# Missing at first; the user then puts real videos there ("fixed") or not ("still").
FIXED = [f"late{i}" for i in range(5)]
STILL = ["broken"]


def _fix(root: Path, ids: list[str]) -> None:
    for i, vid in enumerate(ids):
        make_video(root / "videos" / f"{vid}.mp4", size=(48, 40), fps=10, frames=9 + i)


def _errors(out: Path) -> list[str]:
    lines = (out / "errors.jsonl").read_text().splitlines()
    return [json.loads(line)["video_id"] for line in lines]


def _state(out: Path) -> dict[str, bytes]:
    """Every file of a shard directory but the run config, by name."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != "shard_config.json"}


@pytest.fixture(scope="module")
def broken_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("retry")
    make_dataset(root, GOOD, {**{v: None for v in FIXED}, "broken": b"garbage" * 30})
    return root


@pytest.fixture(scope="module")
def retried(broken_root, tmp_path_factory) -> tuple[Path, Path]:
    """A first run (6 failures), then the videos fixed in a copy of the root and one retry."""
    first = tmp_path_factory.mktemp("first")
    summary = write_shards(config(broken_root, first), progress=False)
    assert summary.failed == len(FIXED) + len(STILL)
    fixed_root = tmp_path_factory.mktemp("fixed")
    shutil.copytree(broken_root, fixed_root, dirs_exist_ok=True)
    _fix(fixed_root, FIXED)
    out = tmp_path_factory.mktemp("out")
    shutil.copytree(first, out, dirs_exist_ok=True)
    # The run config names the root: retry against the fixed copy from the start.
    config_file = out / "shard_config.json"
    saved = json.loads(config_file.read_text())
    saved["root"] = str(fixed_root.resolve())
    config_file.write_text(json.dumps(saved))
    summary = write_shards(config(fixed_root, out, retry_failed=True), progress=False)
    assert (summary.retried, summary.recovered) == (len(FIXED) + len(STILL), len(FIXED))
    assert "retried 6 failed videos: 5 now written, 1 still fail" in summary.format()
    return fixed_root, out


def test_retry_writes_fixed_videos_into_new_shards(retried):
    root, out = retried
    plan = 4  # ceil(10 / SHARD_SIZE)
    names = [s["name"] for s in read_index(out)["shards"]]
    assert names == [f"synthetic-train-{k:06d}.tar" for k in range(plan + 2)]
    assert _errors(out) == STILL
    totals = read_index(out)["totals"]
    assert (totals["samples"], totals["errors"], totals["videos"]) == (9, 1, 10)
    samples = {s["meta"]["video_id"]: s for s in ShardDataset(out)}
    assert sorted(samples) == sorted(GOOD + FIXED)
    for vid in FIXED:
        decoded = decode_video(root / "videos" / f"{vid}.mp4", FRAMES, SIZE, backend="ffmpeg")
        np.testing.assert_array_equal(samples[vid]["frames"], decoded.frames)
    # Each failing video's error is counted once, beside the shard that last attempted it.
    sidecars = {p.name: p.read_text() for p in out.glob("*.errors.jsonl")}
    assert list(sidecars) == [f"synthetic-train-{plan:06d}.errors.jsonl"]


def test_retry_and_rerun_are_idempotent(retried):
    root, out = retried
    before = _state(out)
    again = write_shards(config(root, out, retry_failed=True), progress=False)
    assert (again.retried, again.recovered, again.shards_written) == (1, 0, 0)
    assert _state(out) == before
    plain = write_shards(config(root, out), progress=False)
    assert plain.nothing_to_do and _state(out) == before
    (out / "index.json").unlink()  # a plain resume rebuilds the index with the retry shards
    write_shards(config(root, out), progress=False)
    assert _state(out) == before


def test_nothing_to_retry(broken_root, tmp_path):
    root = tmp_path / "root"
    make_dataset(root, GOOD[:2], {})
    write_shards(config(root, tmp_path / "out"), progress=False)
    summary = write_shards(config(root, tmp_path / "out", retry_failed=True), progress=False)
    assert summary.retried == 0 and "nothing to retry" in summary.format()


def _run_until(command: list[str], ready, sig: int) -> subprocess.CompletedProcess:
    """Start ``command``, send ``sig`` once ``ready()`` holds, and wait for it.

    The command starts with Ctrl-C's default disposition, as from a terminal, whatever the
    suite inherited (an ignored SIGINT passes to children through exec)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.005)
    children = _children(proc.pid)
    # A starved test process can see ready() only after the run has ended: say so, rather
    # than report a signal sent to a finished process as a lost one.
    assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before the signal"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in children):
        time.sleep(0.02)
    assert not [p for p in children if Path(f"/proc/{p}").exists()], "workers outlived the run"
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("extra_shards", [0, 1])
def test_sigkill_during_retry_then_retry_again(retried, broken_root, tmp_path, extra_shards):
    root, reference = retried
    out = tmp_path / "out"
    write_shards(config(broken_root, out), progress=False)
    saved = json.loads((out / "shard_config.json").read_text())
    saved["root"] = str(root.resolve())
    (out / "shard_config.json").write_text(json.dumps(saved))
    command = [str(Path(sys.executable).with_name("mof-cli")), *shard_args(root, out),
               "--retry-failed"]
    plan = len(list(out.glob("*.tar")))
    result = _run_until(command, lambda: len(list(out.glob("*.tar"))) >= plan + extra_shards,
                        signal.SIGKILL)
    assert result.returncode == -signal.SIGKILL, "the retry finished before it could be killed"
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert rerun.returncode == 0, rerun.stderr
    # The resumed retry plans its shards anew from what is still failing, so shard numbers
    # may differ from an uninterrupted retry's; the samples and the errors may not.
    got = [(s["meta"]["video_id"], s["frames"]) for s in ShardDataset(out)]
    want = {s["meta"]["video_id"]: s["frames"] for s in ShardDataset(reference)}
    assert sorted(v for v, _ in got) == sorted(want)  # each video once
    for vid, frames in got:
        np.testing.assert_array_equal(frames, want[vid])
    assert _errors(out) == STILL
    totals, expected = read_index(out)["totals"], read_index(reference)["totals"]
    assert {k: totals[k] for k in ("samples", "errors", "videos")} == {
        k: expected[k] for k in ("samples", "errors", "videos")}


@pytest.mark.parametrize("sig, workers", [(signal.SIGTERM, 1), (signal.SIGINT, 2)])
def test_interrupt_says_how_to_resume(broken_root, tmp_path, sig, workers):
    out = tmp_path / "out"
    command = [str(Path(sys.executable).with_name("mof-cli")), *shard_args(broken_root, out),
               "--workers", str(workers)]
    result = _run_until(command, lambda: (out / "shard_config.json").exists(), sig)
    assert result.returncode == 128 + sig, result.stderr
    assert f"interrupted by {signal.Signals(sig).name}" in result.stderr
    assert "run the same command again to resume" in result.stderr
    assert "Traceback" not in result.stderr and "Aborted!" not in result.stderr, result.stderr
    assert not (out / "index.json").exists()
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert rerun.returncode == 0, rerun.stderr
    reference = tmp_path / "reference"
    write_shards(config(broken_root, reference), progress=False)
    assert tar_bytes(out) == tar_bytes(reference)

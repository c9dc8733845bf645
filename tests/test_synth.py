"""The synthetic dataset: layout, real H.264 files, determinism, resume, captions, time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from cli import main
from pipeline.sampling import segment_midpoints
from pipeline.synth.dataset import (
    SynthConfig,
    SynthConfigError,
    generate_synthetic,
    load_timeline,
    plan_dataset,
)
from pipeline.synth.grammar import BACKGROUND, PALETTE, SHAPES, min_window
from pipeline.synth.render import decode_mp4, encode_mp4, render_video, visible_colours
from pipeline.synth.stats import event_coverage, oracle_recall_at_1

REPO = Path(__file__).resolve().parents[1]
SMALL = {"train": 12, "test": 4, "progress": False}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory):
    """A small dataset made with 2 worker processes; (config, summary)."""
    cfg = SynthConfig(out=tmp_path_factory.mktemp("synth") / "ds", workers=2, **SMALL)
    return cfg, generate_synthetic(cfg)


def _annotations(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "annotations.jsonl").read_text().splitlines()]


def _decoded(root: Path) -> dict[str, np.ndarray]:
    return {p.stem: decode_mp4(p) for p in sorted((root / "videos").glob("*.mp4"))}


def test_layout_annotations_and_summary(small):
    cfg, summary = small
    rows = _annotations(cfg.out)
    assert [set(r) for r in rows] == [{"video_id", "path", "captions", "split"}] * 16
    ids = [r["video_id"] for r in rows]
    assert ids == sorted(ids) and all(len(i) == len("synth00000") for i in ids)
    assert [r["split"] for r in rows] == ["train"] * 12 + ["test"] * 4
    for r in rows:
        assert r["path"] == f"videos/{r['video_id']}.mp4" and (cfg.out / r["path"]).is_file()
        assert len(r["captions"]) == 5 == len(set(r["captions"]))
    assert len({tuple(sorted(r["captions"])) for r in rows}) == 16
    assert yaml.safe_load((cfg.out / "synth_config.yaml").read_text()) == cfg.settings()
    assert not list(cfg.out.rglob("*.tmp"))
    assert (summary.generated, summary.skipped, summary.captions) == (16, 0, 80)
    assert summary.bytes == sum(p.stat().st_size for p in (cfg.out / "videos").iterdir())


def test_videos_are_h264_with_expected_frames(small):
    cfg, _ = small
    for path in sorted((cfg.out / "videos").glob("*.mp4")):
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            assert stream.average_rate == cfg.fps
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert len(frames) == cfg.num_frames == 48
        assert frames[0].shape == (cfg.size, cfg.size, 3)


def test_same_seed_same_dataset_other_seed_differs(small, tmp_path):
    cfg, _ = small
    again = generate_synthetic(SynthConfig(out=tmp_path / "again", workers=1, **SMALL))
    for name in ("annotations.jsonl", "timeline.jsonl"):
        assert (again.out / name).read_bytes() == (cfg.out / name).read_bytes()
    for plan in load_timeline(cfg.out)[:4]:  # what is drawn depends on the plan alone
        np.testing.assert_array_equal(render_video(plan), render_video(plan))
    videos = sorted(p.name for p in (cfg.out / "videos").iterdir())
    assert videos == sorted(p.name for p in (again.out / "videos").iterdir())
    for name in videos:  # bit-identical files, not merely close pixels
        assert (again.out / "videos" / name).read_bytes() == (cfg.out / "videos" / name)\
            .read_bytes(), name
    ref = _decoded(cfg.out)

    other = generate_synthetic(SynthConfig(out=tmp_path / "other", seed=1, workers=1, **SMALL))
    assert (other.out / "annotations.jsonl").read_bytes() != (cfg.out / "annotations.jsonl")\
        .read_bytes()
    assert not np.array_equal(decode_mp4(other.out / "videos/synth00000.mp4"), ref["synth00000"])


def test_encoding_depends_on_the_pixels_not_on_where_they_lie_in_memory(tmp_path):
    # x264's default rate control (macroblock tree) gave 2 different files for these 48 copies;
    # a worker's buffers lie wherever its allocator puts them, so that made datasets differ.
    rng = np.random.default_rng(0)
    frames = (rng.random((24, 64, 64, 3)) * 255).astype(np.uint8)
    frames[:, 20:40, 20:40] = 200
    digests = set()
    for offset in range(48):
        buf = np.empty(frames.nbytes + 64, np.uint8)
        moved = buf[offset:offset + frames.nbytes].reshape(frames.shape)
        moved[...] = frames
        path = tmp_path / f"{offset}.mp4"
        encode_mp4(moved, path, fps=12, crf=18)
        digests.add(path.read_bytes())
    assert len(digests) == 1


# Words that name an action, a direction: a caption's words in order must retell the events.
_ACTION_WORDS = {
    "move": "moves moving slides sliding travels travelling",
    "grow": "grows growing bigger expands expanding",
    "shrink": "shrinks shrinking smaller contracts contracting",
    "turn": "turns turning becomes becoming changes changing",
    "flash": "flashes flashing blinks blinking",
    "appear": "appears appearing emerges emerging comes coming",
    "vanish": "vanishes vanishing disappears disappearing fades fading",
}
_WORD_ACTION = {w: a for a, words in _ACTION_WORDS.items() for w in words.split()}
_WORD_DIRECTION = {"left": "left", "right": "right", "up": "up", "upwards": "up",
                   "down": "down", "downwards": "down"}


def _expected(events, cap) -> dict[str, list[str]]:
    exp: dict[str, list[str]] = {"shape": [], "colour": [], "action": [], "direction": []}
    for n in cap.events:
        ev = events[n]
        exp["shape"] += [ev.shape] if cap.detail in ("full", "shape") else []
        exp["colour"] += [ev.colour] if cap.detail in ("full", "colour") else []
        exp["colour"] += [ev.new_colour] if ev.action == "turn" else []
        exp["action"].append(ev.action)
        exp["direction"] += [ev.direction] if ev.action == "move" else []
    return exp


def test_captions_tell_the_events_in_temporal_order(small):
    cfg, _ = small
    plans = load_timeline(cfg.out)
    rows = _annotations(cfg.out)
    assert [r["captions"] for r in rows] == [[c.text for c in p.captions] for p in plans]
    details = set()
    for plan in plans:
        starts = [ev.start for ev in plan.events]
        assert starts == sorted(starts)
        assert plan.captions[0].events == tuple(range(len(plan.events)))  # canonical: all
        for cap in plan.captions:
            assert list(cap.events) == sorted(set(cap.events))
            assert len(cap.events) >= len(plan.events) - 1
            words = cap.text.replace(",", " ").split()
            got = {
                "shape": [w for w in words if w in SHAPES],
                "colour": [w for w in words if w in PALETTE],
                "action": [_WORD_ACTION[w] for w in words if w in _WORD_ACTION],
                "direction": [_WORD_DIRECTION[w] for w in words if w in _WORD_DIRECTION],
            }
            assert got == _expected(plan.events, cap), cap.text
            details.add(cap.detail)
    assert details == {"full", "shape", "colour"}


def test_resume_after_deleting_a_video(small, tmp_path):
    cfg, _ = small
    out = tmp_path / "ds"
    generate_synthetic(SynthConfig(out=out, workers=1, **SMALL))
    victim = out / "videos/synth00003.mp4"
    victim.unlink()
    (out / "videos/synth00005.mp4.tmp").write_bytes(b"torn")  # left by a killed run
    before = {p.name: p.stat().st_mtime_ns for p in (out / "videos").glob("*.mp4")}
    summary = generate_synthetic(SynthConfig(out=out, workers=1, **SMALL))
    assert (summary.generated, summary.skipped) == (1, 15)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "videos").glob("*.mp4")
            if p != victim} == before
    assert not list(out.rglob("*.tmp"))
    np.testing.assert_array_equal(decode_mp4(victim), decode_mp4(cfg.out / victim.relative_to(out)))
    assert (out / "annotations.jsonl").read_bytes() == (cfg.out / "annotations.jsonl").read_bytes()


def test_resume_after_the_process_is_killed(tmp_path):
    out, opts = tmp_path / "ds", {"train": 40, "test": 10}
    cmd = [sys.executable, "-m", "cli", "synth", "--out", str(out), "--workers", "1", "--quiet",
           "--train", "40", "--test", "10"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(list(out.glob("videos/*.mp4"))) < 3 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(out.glob("videos/*.mp4"))
    assert 3 <= len(done) < 50 and not (out / "annotations.jsonl").exists()
    for path in done:  # whatever carries a final name is a whole video
        assert decode_mp4(path).shape == (48, 64, 64, 3)
    summary = generate_synthetic(SynthConfig(out=out, workers=2, progress=False, **opts))
    assert summary.skipped == len(done) and summary.generated == 50 - len(done)
    rows = _annotations(out)
    assert [r["video_id"] for r in rows] == [f"synth{i:05d}" for i in range(50)]
    assert not list(out.rglob("*.tmp"))


def test_other_settings_on_an_existing_dataset_are_an_error(small, tmp_path):
    cfg, _ = small
    with pytest.raises(SynthConfigError, match=r"seed: 0 there, 1 requested"):
        generate_synthetic(SynthConfig(out=cfg.out, seed=1, **SMALL))
    with pytest.raises(SynthConfigError, match=r"fps: 12 there, 15 requested"):
        generate_synthetic(SynthConfig(out=cfg.out, fps=15, **SMALL))
    # The worker count does not change the output: a re-run just finds everything done.
    again = generate_synthetic(SynthConfig(out=cfg.out, workers=1, **SMALL))
    assert (again.generated, again.skipped) == (0, 16)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SynthConfigError, match="not empty"):
        generate_synthetic(SynthConfig(out=foreign, **SMALL))


def test_config_reports_every_problem_at_once(tmp_path):
    with pytest.raises(ValueError) as err:
        SynthConfig(out=tmp_path, train=-1, size=63, fps=0, crf=99, workers=0)
    for option in ("--train", "--size", "--fps", "--crf", "--workers"):
        assert option in str(err.value)
    with pytest.raises(ValueError, match="--max-events"):
        SynthConfig(out=tmp_path, duration_s=1.5, max_events=8)


def _detected_colours(frame: np.ndarray, min_pixels: int = 12) -> set[str]:
    """Palette colours covering at least ``min_pixels`` pixels of a decoded frame."""
    names = [None, *PALETTE]
    pal = np.array([BACKGROUND, *PALETTE.values()], dtype=np.float32)
    dist = ((frame[:, :, None, :].astype(np.float32) - pal) ** 2).sum(-1)
    near = dist.min(-1) < 60.0**2
    counts = np.bincount(dist.argmin(-1)[near], minlength=len(pal))
    return {names[i] for i in range(1, len(pal)) if counts[i] >= min_pixels}


def test_one_frame_sees_clearly_less_than_eight(small):
    cfg, _ = small
    plans = load_timeline(cfg.out)
    t = cfg.num_frames
    coverage = {r: np.mean([event_coverage(p, segment_midpoints(t, r)) for p in plans])
                for r in (1, 8, 32)}
    assert coverage[1] < 0.4 and coverage[8] > 0.85 and coverage[32] == 1.0, coverage
    seen = {1: [], 8: []}
    for plan in plans:
        frames = decode_mp4(cfg.out / f"videos/{plan.video_id}.mp4")
        detected = [_detected_colours(f) for f in frames]
        # Decoded pixels show exactly the colours the timeline draws: 4:2:0 keeps them apart.
        assert detected == [visible_colours(plan, i) for i in range(t)], plan.video_id
        told = {ev.colour for ev in plan.events} | ({ev.new_colour for ev in plan.events} - {None})
        for r, fractions in seen.items():
            found = set().union(*(detected[i] for i in segment_midpoints(t, r)))
            fractions.append(len(found & told) / len(told))
    assert np.mean(seen[1]) + 0.3 < np.mean(seen[8]), {r: np.mean(v) for r, v in seen.items()}


def test_default_dataset_plan_is_unique_and_not_trivial(tmp_path):
    cfg = SynthConfig(out=tmp_path)
    plans = plan_dataset(cfg)
    test_split = [p for p in plans if p.split == "test"]
    assert len(plans) == 1250 and len({p.video_id for p in plans}) == 1250
    assert len({tuple(c.text for c in p.captions) for p in plans}) == 1250
    assert len({p.captions[0].text for p in plans}) == 1250
    t, shortest = cfg.num_frames, min_window(cfg.num_frames)
    for plan in plans:
        assert cfg.min_events <= len(plan.events) <= cfg.max_events
        for a, b in zip(plan.events, plan.events[1:]):
            assert 0 <= a.start < a.end <= b.start < b.end <= t
        for ev in plan.events:
            assert ev.end - ev.start == cfg.flash_frames if ev.action == "flash" \
                else ev.end - ev.start >= shortest
    # No single visible object identifies a test video: each one is shared by many videos.
    per_identity: dict[tuple[str, str], int] = {}
    for plan in test_split:
        for key in {(ev.colour, ev.shape) for ev in plan.events}:
            per_identity[key] = per_identity.get(key, 0) + 1
    assert len(per_identity) == len(PALETTE) * len(SHAPES)
    assert min(per_identity.values()) >= 10
    # A perfect object recogniser that ignores time retrieves far better from 8 frames than 1.
    one, eight = (oracle_recall_at_1(test_split, r, canonical_only=True) for r in (1, 8))
    assert one < 0.3 and eight > one + 0.5, (one, eight)


def test_cli_synth_wiring(tmp_path):
    runner, out = CliRunner(), tmp_path / "ds"
    args = ["synth", "--out", str(out), "--train", "3", "--test", "1", "--workers", "1", "--quiet"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "4 videos (3 train, 1 test)" in result.output
    assert len(_annotations(out)) == 4
    result = runner.invoke(main, [*args, "--seed", "1"])
    assert result.exit_code != 0 and "seed: 0 there, 1 requested" in result.output
    result = runner.invoke(main, ["synth", "--out", str(tmp_path / "x"), "--size", "63"])
    assert result.exit_code != 0 and "--size" in result.output


def test_more_test_captions_only_add_queries(small, tmp_path):
    # Planned: the default dataset with 20 captions per test video against the default.
    plain = plan_dataset(SynthConfig(out=tmp_path))
    more = plan_dataset(SynthConfig(out=tmp_path, test_captions=20))
    assert [p.video_id for p in more] == [p.video_id for p in plain]
    for a, b in zip(plain, more, strict=True):
        assert (a.split, a.events, a.sprites) == (b.split, b.events, b.sprites)
        if a.split == "train":
            assert a.captions == b.captions
        else:
            assert b.captions[:5] == a.captions and len({c.text for c in b.captions}) == 20
    # Generated: the same drawings, test annotations with more captions, and the setting
    # saved (a directory without it keeps resuming as before).
    cfg, out = small[0], tmp_path / "more"
    result = CliRunner().invoke(main, ["synth", "--out", str(out), "--quiet", "--test-captions",
                                       "9", "--train", "12", "--test", "4"])
    assert result.exit_code == 0, result.output
    rows = {json.loads(x)["video_id"]: json.loads(x)
            for x in (out / "annotations.jsonl").read_text().splitlines()}
    # The frames are drawn from the plans alone (events and sprites, equal above), so they are
    # the same; the timeline holds what they were drawn from.
    for a, b in zip(load_timeline(cfg.out), load_timeline(out), strict=True):
        assert (a.video_id, a.events, a.sprites) == (b.video_id, b.events, b.sprites)
        np.testing.assert_array_equal(render_video(a), render_video(b))
    for line in (cfg.out / "annotations.jsonl").read_text().splitlines():
        row = json.loads(line)
        wanted = 9 if row["split"] == "test" else 5
        assert rows[row["video_id"]]["captions"][:5] == row["captions"]
        assert len(rows[row["video_id"]]["captions"]) == wanted
    assert yaml.safe_load((out / "synth_config.yaml").read_text())["test_captions"] == 9
    assert "test_captions" not in yaml.safe_load((cfg.out / "synth_config.yaml").read_text())
    same = SynthConfig(out=cfg.out, test_captions=5, **{k: v for k, v in SMALL.items()})
    assert generate_synthetic(same).skipped == 16  # as many captions as --captions: no change

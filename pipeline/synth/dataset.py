"""``mof-cli synth``: the embedded synthetic text-video retrieval dataset.

Generates, deterministically from a seed and with nothing downloaded, short H.264 videos of
coloured shapes doing an ordered sequence of things, with captions that tell those events in
order (grammar: ``pipeline/synth/grammar.py``, captions: ``pipeline/synth/captions.py``,
drawing and encoding: ``pipeline/synth/render.py``). Output layout under ``DIR``::

    synth_config.yaml     the resolved settings (written first)
    videos/<id>.mp4       one file per video, renamed into place when complete
    timeline.jsonl        per video: the events, their frame windows, the sprites, the captions
    annotations.jsonl     {"video_id", "path", "captions", "split"} per line (written last)

Re-running with the same settings skips finished videos; other settings on an existing ``DIR``
are an error.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.atomic import atomic_write_text, atomic_write_yaml, remove_temporaries
from pipeline.errors import MofError
from pipeline.sampling import segment_midpoints
from pipeline.synth.captions import caption_video
from pipeline.synth.grammar import (
    Caption,
    Event,
    Sprite,
    VideoPlan,
    min_window,
    plan_events,
    with_captions,
)
from pipeline.synth.stats import event_coverage

__all__ = [
    "SYNTH_FORMAT_VERSION",
    "SynthConfig",
    "SynthConfigError",
    "SynthError",
    "SynthSummary",
    "generate_synthetic",
    "load_timeline",
    "plan_dataset",
]

# Bump when the same settings would produce different files (grammar, drawing, encoding).
SYNTH_FORMAT_VERSION = 1
CONFIG_NAME = "synth_config.yaml"
ANNOTATIONS_NAME = "annotations.jsonl"
TIMELINE_NAME = "timeline.jsonl"
ERRORS_NAME = "errors.jsonl"


class SynthConfigError(MofError, ValueError):
    """The output directory holds a dataset generated with other settings."""


class SynthError(MofError, RuntimeError):
    """Some videos could not be generated (listed in ``DIR/errors.jsonl``)."""


@dataclass
class SynthConfig:
    """Settings of ``mof-cli synth``; every field except ``out``, ``workers`` and ``progress``
    determines the output and is saved to ``DIR/synth_config.yaml``.

    Attributes:
        out: output directory.
        seed: random seed; the dataset is a pure function of the settings.
        train: number of training videos.
        test: number of test videos.
        workers: parallel processes rendering and encoding videos.
        size: side of the square frames in pixels (even, for yuv420p).
        fps: frames per second.
        duration_s: video length in seconds; frames per video is ``round(fps * duration_s)``.
        captions: captions per video (the first one is the canonical, full-detail caption).
        test_captions: captions per test video (``None``: ``captions``). A video's first
            ``captions`` captions do not depend on it and neither do its frames, so more test
            captions only add queries over the same test videos (lower-noise recalls).
        min_events: fewest events in a video.
        max_events: most events in a video.
        flash_frames: length of a ``flash`` event in frames.
        crf: x264 constant rate factor (lower is better quality, bigger files).
        progress: show a progress bar.
    """

    out: Path
    seed: int = 0
    train: int = 1000
    test: int = 250
    workers: int = 2
    size: int = 64
    fps: int = 12
    duration_s: float = 4.0
    captions: int = 5
    test_captions: int | None = None
    min_events: int = 3
    max_events: int = 5
    flash_frames: int = 3
    crf: int = 18
    progress: bool = True

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        problems = []
        if self.seed < 0:
            problems.append(f"--seed must be >= 0, got {self.seed}")
        if self.train < 0 or self.test < 0 or self.train + self.test < 1:
            problems.append(f"--train/--test must be >= 0 with at least one video, got "
                            f"{self.train}/{self.test}")
        if self.workers < 1:
            problems.append(f"--workers must be >= 1, got {self.workers}")
        if not 16 <= self.size <= 1024 or self.size % 2:
            problems.append(f"--size must be even and in [16, 1024], got {self.size}")
        if not 1 <= self.fps <= 120:
            problems.append(f"--fps must be in [1, 120], got {self.fps}")
        if not 1 <= self.captions <= 20:
            problems.append(f"--captions must be in [1, 20], got {self.captions}")
        if self.test_captions is not None and not 1 <= self.test_captions <= 20:
            problems.append(f"--test-captions must be in [1, 20], got {self.test_captions}")
        if not 2 <= self.min_events <= self.max_events <= 8:
            problems.append(f"--min-events/--max-events must satisfy 2 <= min <= max <= 8, "
                            f"got {self.min_events}/{self.max_events}")
        if not 0 <= self.crf <= 51:
            problems.append(f"--crf must be in [0, 51], got {self.crf}")
        t = self.num_frames
        if t < 16:
            problems.append(f"--duration x --fps must give >= 16 frames, got {t}")
        elif not 1 <= self.flash_frames <= min_window(t):
            problems.append(f"--flash-frames must be in [1, {min_window(t)}], "
                            f"got {self.flash_frames}")
        elif self.max_events * min_window(t) > t:
            problems.append(f"--max-events {self.max_events} events of >= {min_window(t)} "
                            f"frames do not fit in {t} frames")
        if problems:
            raise ValueError("invalid synth config:\n  " + "\n  ".join(problems))

    @property
    def num_frames(self) -> int:
        """Frames per video."""
        return round(self.fps * self.duration_s)

    def settings(self) -> dict[str, Any]:
        """The settings that determine the output, as saved in ``synth_config.yaml``."""
        skip = {"out", "workers", "progress"}
        if self.test_captions in (None, self.captions):  # as saved before the option existed
            skip.add("test_captions")
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in skip}
        out.update(num_frames=self.num_frames, format_version=SYNTH_FORMAT_VERSION)
        return out


@dataclass
class SynthSummary:
    """What a run of ``generate_synthetic`` did."""

    out: Path
    train: int
    test: int
    generated: int
    skipped: int
    captions: int
    frames_per_video: int
    bytes: int
    seconds: float
    coverage: dict[int, float]  # R -> mean fraction of events hit by R segment midpoints

    def __str__(self) -> str:
        n = self.train + self.test
        seen = " / ".join(f"{100 * c:.0f}%" for c in self.coverage.values())
        return (
            f"synthetic dataset in {self.out}: {n} videos ({self.train} train, {self.test} test), "
            f"{self.captions} captions, {self.frames_per_video} frames each\n"
            f"  generated {self.generated}, skipped {self.skipped} already complete; "
            f"{self.bytes / 1e6:.1f} MB of video; {self.seconds:.1f} s\n"
            f"  events seen by {' / '.join(map(str, self.coverage))} segment-midpoint frames: "
            f"{seen}"
        )


def _video_id(index: int, total: int) -> str:
    return f"synth{index:0{max(5, len(str(total - 1)))}d}"


def plan_dataset(cfg: SynthConfig) -> list[VideoPlan]:
    """Plan every video (events, sprites, captions) without drawing anything.

    Video ``i`` draws from its own random stream seeded by ``(seed, i, attempt)``; an attempt
    whose canonical caption another video already has is redrawn, so caption sets are unique.

    Returns:
        Plans sorted by video id: the ``train`` videos first, then the ``test`` videos.
    """
    total, seen, plans = cfg.train + cfg.test, set(), []
    for i in range(total):
        split = "train" if i < cfg.train else "test"
        count = cfg.test_captions if split == "test" and cfg.test_captions else cfg.captions
        for attempt in range(1000):
            rng = np.random.default_rng([cfg.seed, i, attempt])
            events, sprites = plan_events(
                rng, num_frames=cfg.num_frames, size=cfg.size, min_events=cfg.min_events,
                max_events=cfg.max_events, flash_frames=cfg.flash_frames)
            captions = caption_video(rng, events, count)
            if captions[0].text not in seen:
                break
        else:
            raise SynthError(f"video {i}: no unique caption set in 1000 draws; allow more events")
        seen.add(captions[0].text)
        plan = VideoPlan(_video_id(i, total), split, cfg.num_frames, cfg.size, events, sprites)
        plans.append(with_captions(plan, captions))
    return plans


def _prepare_dir(cfg: SynthConfig) -> Path:
    """Check ``cfg.out`` against the saved settings, save them, clear stale temp files."""
    out, wanted = cfg.out, cfg.settings()
    saved_path = out / CONFIG_NAME
    if saved_path.exists():
        saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
        diff = [f"{k}: {saved.get(k)!r} there, {v!r} requested"
                for k, v in wanted.items() if saved.get(k) != v]
        if diff:
            raise SynthConfigError(
                f"{out} holds a synthetic dataset made with other settings ("
                + "; ".join(diff) + "); use another --out or the same options")
    elif out.exists() and any(out.iterdir()):
        raise SynthConfigError(f"{out} is not empty and has no {CONFIG_NAME}; refusing to "
                               "write a synthetic dataset into it")
    videos = out / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    atomic_write_yaml(saved_path, wanted)
    # Left by an interrupted run; a video only exists under its final name once complete.
    remove_temporaries(videos)
    return videos


_Job = tuple[VideoPlan, Path, int, int]  # plan, final path, fps, crf
_Result = tuple[str, int, str | None]  # video id, bytes, error message


def _make_video(job: _Job) -> _Result:
    """Worker: draw and encode one video; errors are returned, not raised."""
    from pipeline.synth.render import encode_mp4, render_video

    plan, path, fps, crf = job
    try:
        return plan.video_id, encode_mp4(render_video(plan), path, fps, crf), None
    except Exception as exc:  # noqa: BLE001 - a failed video is a recorded row
        return plan.video_id, 0, f"{type(exc).__name__}: {exc}"


def _run_jobs(jobs: list[_Job], workers: int, progress: bool) -> list[_Result]:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit="video", desc="synth", disable=not progress)
    results = []
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            results.append(_make_video(job))
            bar.update()
    else:
        # fork: workers inherit the imported modules; nothing here holds threads or GPUs.
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(min(workers, len(jobs))) as pool:
            for res in pool.imap_unordered(_make_video, jobs, chunksize=4):
                results.append(res)
                bar.update()
    bar.close()
    return results


def _plan_json(plan: VideoPlan) -> str:
    record = {"video_id": plan.video_id, "split": plan.split, "num_frames": plan.num_frames,
              "size": plan.size, **{k: [dataclasses.asdict(x) for x in getattr(plan, k)]
                                    for k in ("events", "sprites", "captions")}}
    return json.dumps(record)


def load_timeline(root: Path) -> list[VideoPlan]:
    """Read ``ROOT/timeline.jsonl`` back into plans (events, sprites and captions)."""
    plans = []
    with open(Path(root) / TIMELINE_NAME, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            sprites = tuple(Sprite(**{k: tuple(v) if isinstance(v, list) else v
                                      for k, v in s.items()}) for s in d["sprites"])
            plans.append(VideoPlan(
                d["video_id"], d["split"], d["num_frames"], d["size"],
                tuple(Event(**e) for e in d["events"]), sprites,
                tuple(Caption(**{**c, "events": tuple(c["events"])}) for c in d["captions"])))
    return plans


def generate_synthetic(cfg: SynthConfig) -> SynthSummary:
    """Generate (or complete) the synthetic dataset in ``cfg.out``.

    Raises:
        SynthConfigError: ``cfg.out`` holds a dataset made with other settings.
        SynthError: some videos failed (listed in ``errors.jsonl``; a re-run retries them).
    """
    start = time.perf_counter()
    videos = _prepare_dir(cfg)
    plans = plan_dataset(cfg)
    jobs = [(p, videos / f"{p.video_id}.mp4", cfg.fps, cfg.crf) for p in plans
            if not (videos / f"{p.video_id}.mp4").exists()]
    results = _run_jobs(jobs, cfg.workers, cfg.progress)
    failed = sorted((vid, err) for vid, _, err in results if err is not None)
    errors_path = cfg.out / ERRORS_NAME
    if failed:
        atomic_write_text(errors_path, "".join(
            json.dumps({"video_id": v, "error": e}) + "\n" for v, e in failed))
        raise SynthError(f"{len(failed)} of {len(plans)} videos failed, first: {failed[0][0]}: "
                         f"{failed[0][1]}; see {errors_path}")
    errors_path.unlink(missing_ok=True)
    atomic_write_text(cfg.out / TIMELINE_NAME, "".join(_plan_json(p) + "\n" for p in plans))
    # Last, so that a complete annotation file means a complete dataset.
    atomic_write_text(cfg.out / ANNOTATIONS_NAME, "".join(json.dumps({
        "video_id": p.video_id, "path": f"videos/{p.video_id}.mp4",
        "captions": [c.text for c in p.captions], "split": p.split}) + "\n" for p in plans))
    return SynthSummary(
        out=cfg.out, train=cfg.train, test=cfg.test, generated=len(jobs),
        skipped=len(plans) - len(jobs), captions=sum(len(p.captions) for p in plans),
        frames_per_video=cfg.num_frames,
        bytes=sum((videos / f"{p.video_id}.mp4").stat().st_size for p in plans),
        seconds=time.perf_counter() - start,
        coverage={r: float(np.mean([event_coverage(p, segment_midpoints(cfg.num_frames, r))
                                    for p in plans])) for r in (1, 8, 32)})

"""``mof-cli export-frames``: a MOF run's learned frames as images, beside what they started from.

For each chosen training video, under ``OUT/<video id>/``: ``regular/``, ``uniform/`` and
``mof/`` PNGs (the R regular frames at the segment midpoints of the stored shard frames, the U
uniform frames the store was initialised with, and the U learned frames de-normalised with the
store's mean/std), ``grid.png`` (the paper's Fig. 7 rows "regular (R)", "uniform init (U)",
"MOF (U)" and a caption), optionally ``mof.mp4`` and, for Frozen models, the first block's
text-to-patch attention overlays (:mod:`mof.export.attention_overlay`). ``OUT/summary.json`` lists
every file and ``OUT/index.html`` shows the grids; docs/cli.md has the details.

The store is opened read-only and no lock is taken, so a run that is still training can be
exported: each chunk (one video) lands by an atomic rename, so a frame read while the trainer
writes is the old or the new one, whole.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm import tqdm

from mof.export.attention_overlay import (
    ATTENTION_DEFINITION,
    overlay_attention,
    supports_attention,
    text_patch_attention,
)
from mof.export.render import (
    denormalize,
    index_html,
    mix_strips,
    png_bytes,
    render_grid,
    write_pngs,
)
from mof.frames import to_model_input
from mof.models.contract import InputContract
from pipeline.atomic import atomic_write_bytes, atomic_write_json
from pipeline.framestore.format import FrameRows
from pipeline.framestore.store import FrameStore
from pipeline.sampling import uniform_subset
from pipeline.sharding.samples import decode_sample, read_shard_samples, resolve_shards

__all__ = ["DEFAULT_NUM", "ExportConfig", "export_frames", "format_summary"]

#: Videos exported when neither ``ids`` nor ``num`` is given.
DEFAULT_NUM = 4


@dataclass
class ExportConfig:
    """Settings of ``mof-cli export-frames``; the resolved copy goes into ``summary.json``.

    Attributes:
        run: a MOF training run directory (with ``mof.zarr``), finished or still training.
        out: output directory (created; files of an earlier export are overwritten).
        ids: video ids to export (store ids, i.e. shard keys, or the datasets' own ids);
            empty: the first ``num`` videos of the store.
        num: how many videos when ``ids`` is empty (default :data:`DEFAULT_NUM`).
        mp4: also write ``mof.mp4`` of the MOF frames.
        attention: also draw the first block's text-to-patch attention (Frozen models).
        shards: the train shards to read the stored frames from; ``None``: the shards recorded
            in the store (pass this when they have moved).
        columns: frames per grid line; longer rows wrap.
        fps: frame rate of ``mof.mp4``.
        progress: show a progress bar.
    """

    run: str
    out: str
    ids: list[str] = field(default_factory=list)
    num: int | None = None
    mp4: bool = False
    attention: bool = False
    shards: list[str] | None = None
    columns: int = 8
    fps: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        self.ids = [i for item in self.ids for i in str(item).split(",") if i]
        problems = []
        store = Path(self.run) / "mof.zarr"
        if not Path(self.run).is_dir():
            problems.append(f"--run {self.run}: no such directory")
        elif not (store / "zarr.json").is_file():
            problems.append(f"--run {self.run}: no mof.zarr (a baseline run, or a run that has "
                            "not created its frame store yet)")
        if self.ids and self.num is not None:
            problems.append("give either --ids or --num, not both")
        if self.num is not None and self.num < 1:
            problems.append(f"--num must be >= 1, got {self.num}")
        if self.columns < 1:
            problems.append(f"--columns must be >= 1, got {self.columns}")
        if self.fps < 1:
            problems.append(f"--fps must be >= 1, got {self.fps}")
        if not self.out:
            problems.append("--out is required")
        if problems:
            raise ValueError("invalid export config:\n  " + "\n  ".join(problems))


def _find_samples(shards: list[str], wanted: list[str]) -> dict[str, dict[str, Any]]:
    """``{wanted id: {"key", "frames", "meta"}}``, matched by shard key or the json's video_id.

    Only the matching samples are decoded; reading stops once every id is found.
    """
    found: dict[str, dict[str, Any]] = {}
    remaining = set(wanted)
    for shard in shards:
        for raw in read_shard_samples([{"url": shard}]):
            key = raw["__key__"]
            meta_id = json.loads(raw.get("json", b"{}") or b"{}").get("video_id")
            hit = key if key in remaining else meta_id if meta_id in remaining else None
            if hit is None:
                continue
            sample = decode_sample(raw)
            found[hit] = {"key": key, "frames": sample["frames"], "meta": sample["meta"]}
            remaining.discard(hit)
            if not remaining:
                return found
    return found


def _load_latest_model(run: Path, attempts: int = 5, wait_s: float = 0.5):
    """The model of ``run``'s latest checkpoint, or ``(None, reason)``.

    A training run replaces ``checkpoints/last`` by renames; a read that races one is retried.
    """
    from mof.models.io import load_model
    from mof.train.checkpoint import find_checkpoint

    error: Exception | None = None
    for _ in range(attempts):
        directory = find_checkpoint(run / "checkpoints")
        if directory is None:
            return None, "the run has no checkpoint yet"
        try:
            return load_model(directory), directory.relative_to(run).as_posix()
        except (FileNotFoundError, OSError) as err:  # the directory was renamed meanwhile
            error = err
            time.sleep(wait_s)
    return None, f"could not load the checkpoint: {error}"


def _safe_name(video_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", video_id) or "_"


def _attention_rows(model, normalised: dict[str, np.ndarray], shown: dict[str, np.ndarray],
                    caption: str, folder: Path) -> tuple[list, dict[str, Any]]:
    """Overlays of the uniform and MOF frames; returns ``(key, label, frames)`` rows, files."""
    import torch

    maps = {name: text_patch_attention(model, torch.from_numpy(normalised[name]), caption)
            for name in ("uniform", "mof")}
    rows, files = [], {}
    for name, label in (("uniform", "attention, init"), ("mof", "attention, MOF")):
        overlays = np.stack([overlay_attention(f, a) for f, a in zip(shown[name], maps[name])])
        files[f"attention_{name}"] = write_pngs(folder / "attention", overlays, f"{name}_")
        rows.append((f"attention_{name}", label, overlays))
    buffer = io.BytesIO()
    np.savez(buffer, **maps)
    atomic_write_bytes(folder / "attention.npz", buffer.getvalue())
    files["attention_maps"] = str(folder / "attention.npz")
    return rows, files


@dataclass
class _Context:
    """What every video's export shares."""

    attrs: dict[str, Any]
    out: Path
    config: ExportConfig
    model_name: str
    model: Any = None  # a Frozen model for the attention rows, or None
    checkpoint: str | None = None

    @property
    def contract(self) -> InputContract:
        # to_model_input reads only the size and the normalisation; the text fields are unused.
        a = self.attrs
        return InputContract(frame_size=int(a["H"]), mean=tuple(a["mean"]), std=tuple(a["std"]),
                             max_frames=max(a["U"], a["R"]), max_words=1, tokenizer="none")


def _export_video(video_id: str, row: int, sample: dict[str, Any], state: FrameRows,
                  ctx: _Context) -> dict[str, Any]:
    """Write every file of one video; returns its summary entry."""
    attrs, contract, out = ctx.attrs, ctx.contract, ctx.out
    stored = sample["frames"]  # uint8 (R_stored, S, S, 3)
    num_u, num_r = int(attrs["U"]), int(attrs["R"])
    normalised = {
        "regular": to_model_input(stored, contract, uniform_subset(len(stored), num_r)).numpy(),
        "uniform": to_model_input(stored, contract, uniform_subset(len(stored), num_u)).numpy(),
        "mof": np.asarray(state.frames[0], dtype=np.float32),
    }
    shown = {k: denormalize(v, attrs["mean"], attrs["std"]) for k, v in normalised.items()}
    folder = out / _safe_name(video_id)
    files = {name: write_pngs(folder / name, frames) for name, frames in shown.items()}
    rows = [("regular", f"regular (R={num_r})", shown["regular"]),
            ("uniform", f"uniform init (U={num_u})", shown["uniform"]),
            ("mof", f"MOF (U={num_u})", shown["mof"])]
    weights = None
    if state.mix_logits is not None:  # the strip under each MOF frame: its weight per anchor
        logits = np.asarray(state.mix_logits[0], dtype=np.float64)
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        rows.append(("mix", f"mix over R={num_r}", mix_strips(weights)))
    captions = list(sample["meta"].get("captions") or [""])
    step = int(state.step[0])
    if ctx.model is not None:
        extra_rows, extra_files = _attention_rows(ctx.model, normalised, shown, captions[0],
                                                  folder)
        rows += extra_rows
        files.update(extra_files)
    caption = [f'{video_id}: "{captions[0]}"',
               (f"store phase {attrs.get('last_phase')}, {step} frame steps of this video, "
               f"R={num_r}, U={num_u}, model {ctx.model_name}")]
    if ctx.model is not None:
        caption.append(f"attention ({ctx.checkpoint}): {ATTENTION_DEFINITION}")
    cell = int(attrs["H"]) * max(1, -(-96 // int(attrs["H"])))  # small frames scaled up
    image, boxes = render_grid([r[1:] for r in rows], caption, ctx.config.columns, cell)
    atomic_write_bytes(folder / "grid.png", png_bytes(image))
    files["grid"] = str(folder / "grid.png")
    if ctx.config.mp4:
        from pipeline.synth.render import encode_mp4

        frames = shown["mof"]
        pad = ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0))
        encode_mp4(np.pad(frames, pad, mode="edge"), folder / "mof.mp4", ctx.config.fps, crf=12)
        files["mp4"] = str(folder / "mof.mp4")
    moved = np.abs(shown["mof"].astype(np.int16) - shown["uniform"].astype(np.int16))
    unit = normalised["mof"] * np.reshape(attrs["std"], (3, 1, 1)) + np.reshape(
        attrs["mean"], (3, 1, 1))  # pixels in [0, 1] before clipping
    return {"video_id": video_id, "shard_key": sample["key"], "row": row, "caption": captions[0],
            "frame_steps": step, "files": files,
            "grid_boxes": {key: b for (key, _, _), b in zip(rows, boxes, strict=True)},
            "grid_size": list(image.size),
            "mix_weights": None if weights is None else np.round(weights, 4).tolist(),
            "mean_abs_change": float(moved.mean()), "max_abs_change": int(moved.max()),
            "clipped_fraction": float(((unit < 0) | (unit > 1)).mean())}


def _choose(store: FrameStore, config: ExportConfig) -> list[str]:
    if config.ids:
        return list(dict.fromkeys(config.ids))
    return store.video_ids[: config.num or DEFAULT_NUM]


def export_frames(config: ExportConfig) -> dict[str, Any]:
    """Export the chosen videos of a MOF run (see the module doc); returns the summary.

    Raises:
        KeyError: a requested id is neither a store id nor found in the shards.
        FileNotFoundError: the shards the store was initialised from are gone (pass
            ``shards``).

    Rows not initialised yet (a run still filling its store) are skipped with a note.
    """
    run, out = Path(config.run), Path(config.out)
    store = FrameStore.open(run / "mof.zarr", mode="r")  # read-only, no lock, no sweep
    attrs = store.attrs
    shards = resolve_shards(config.shards or attrs["shards"])
    wanted = _choose(store, config)
    samples = _find_samples(shards, wanted)
    missing = [v for v in wanted if v not in samples]
    if missing:
        raise KeyError(f"videos {missing[:20]} are in none of the {len(shards)} train shards")
    keys = [samples[v]["key"] for v in wanted]
    rows = store.row_of(keys)
    run_config = yaml.safe_load((run / "config.yaml").read_text()) if (
        run / "config.yaml").is_file() else {}
    model, checkpoint = None, None
    notes: list[str] = []
    if config.attention:
        model, checkpoint = _load_latest_model(run)
        if model is not None and not supports_attention(model):
            notes.append(f"attention skipped: {type(model).__name__} is not a Frozen model")
            model = None
        elif model is None:
            notes.append(f"attention skipped: {checkpoint}")
    ctx = _Context(attrs, out, config, (run_config or {}).get("model", "?"), model, checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    videos = []
    for video_id, row in tqdm(list(zip(wanted, rows.tolist(), strict=True)), unit="video",
                              desc="export frames", disable=not config.progress):
        fields = ("frames", "step") + (("mix_logits",) if store.frame_param == "mix" else ())
        state = store.read([row], fields=fields, allow_uninitialised=True)
        if state.step[0] < 0:
            notes.append(f"{video_id}: row {row} not initialised yet, skipped")
            continue
        videos.append(_export_video(video_id, row, samples[video_id], state, ctx))
    summary = {"run": str(run), "out": str(out), "store_phase": attrs.get("last_phase"),
               "U": attrs["U"], "R": attrs["R"], "H": attrs["H"], "W": attrs["W"],
               "mean": attrs["mean"], "std": attrs["std"], "shards": shards,
               "attention": {"checkpoint": checkpoint, "definition": ATTENTION_DEFINITION}
               if model is not None else None,
               "videos": videos, "notes": notes, "config": dataclasses.asdict(config)}
    atomic_write_json(out / "summary.json", summary)
    atomic_write_bytes(out / "index.html", index_html(summary).encode())
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A few lines for the terminal: what was written where."""
    lines = [(f"exported {len(summary['videos'])} videos of {summary['run']} (store phase "
             f"{summary['store_phase']}, R={summary['R']}, U={summary['U']}) to {summary['out']}")]
    for video in summary["videos"]:
        lines.append(f"  {video['video_id']}: {video['frame_steps']} frame steps, mean |MOF - "
                     f"init| {video['mean_abs_change']:.2f} (max {video['max_abs_change']}) "
                     f"grey levels -> {video['files']['grid']}")
    lines += [f"  note: {note}" for note in summary["notes"]]
    lines.append(f"  index: {Path(summary['out']) / 'index.html'}, "
                 f"{Path(summary['out']) / 'summary.json'}")
    return "\n".join(lines)

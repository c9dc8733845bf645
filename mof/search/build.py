"""``mof-cli index``: encode every video of some shards at U uniform frames into a search index.

One shard becomes one chunk (``mof.search.store``). A chunk is committed by rewriting
``index.json`` after its files are in place, so a run stopped at any point resumes with the
first shard no chunk covers, and a later run with new shards appends them. The model is copied
into the index: a run's ``checkpoints/best`` moves on as training goes on, and queries must be
encoded by the very weights that encoded the videos (extending an index with another model is
refused).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mof.search.config import IndexConfig
from mof.search.store import (
    INDEX_FORMAT_VERSION,
    MANIFEST_NAME,
    MODEL_DIR,
    SearchIndexError,
    chunk_paths,
    file_sha256,
    load_index,
    read_manifest,
)

__all__ = ["IndexSummary", "build_index"]

#: Frames of a thumbnail strip at most (evenly chosen among the U indexed ones).
THUMB_FRAMES = 8


@dataclass
class IndexSummary:
    """What one ``mof-cli index`` run did; :meth:`format` is what the command prints."""

    out: str
    model: str
    frames: int
    videos_added: int = 0
    chunks_added: int = 0
    chunks_skipped: int = 0
    videos_total: int = 0
    encode_s: float = 0.0
    wall_s: float = 0.0
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        rate = self.videos_added / self.wall_s if self.wall_s > 0 else 0.0
        head = (f"{self.out}: {self.videos_total} videos ({self.model}, U={self.frames}); added "
                f"{self.videos_added} videos in {self.chunks_added} chunks, skipped "
                f"{self.chunks_skipped} shards already indexed; {self.wall_s:.1f} s "
                f"({rate:.1f} videos/s, model {self.encode_s:.1f} s on {self.device})")
        return "\n".join([head, *self.notes])


def _atomic_json(path: Path, obj: Any) -> None:
    from pipeline.atomic import atomic_write_json

    atomic_write_json(path, obj)


def _copy_model(model_dir: Path, out: Path) -> None:
    """Copy the saved model into ``out/model`` (temporary name, then rename)."""
    tmp, final = out / f".{MODEL_DIR}.tmp", out / MODEL_DIR
    shutil.rmtree(tmp, ignore_errors=True)
    # The weights, model.json and tokenizer; not a checkpoint's optimiser and trainer state.
    shutil.copytree(model_dir, tmp, ignore=shutil.ignore_patterns("trainer_state.pt", ".*"))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def _new_manifest(config: IndexConfig, out: Path) -> dict[str, Any]:
    """Start an index: copy the model, choose U, write an ``index.json`` with no chunk."""
    from mof.evaluate.evaluate import resolve_checkpoint, run_frames

    if config.checkpoint is None:
        raise ValueError(f"--out {out} holds no index yet: --checkpoint is required")
    model_dir, run_dir = resolve_checkpoint(config.checkpoint)
    meta = json.loads((model_dir / "model.json").read_text())
    frames = config.frames or run_frames(run_dir)[0] or meta["contract"]["max_frames"]
    out.mkdir(parents=True, exist_ok=True)
    _copy_model(model_dir, out)
    manifest = {
        "format_version": INDEX_FORMAT_VERSION,
        "model": {"name": meta["spec"]["name"],
                  "sha256": file_sha256(out / MODEL_DIR / "model.safetensors"),
                  "source": str(model_dir.resolve()),
                  "run_dir": str(run_dir.resolve()) if run_dir else None},
        "frames": frames, "dim": None, "thumb_height": config.thumb_height,
        "roots": [], "chunks": [], "totals": {"videos": 0, "chunks": 0}, "ann": None,
    }
    _atomic_json(out / MANIFEST_NAME, manifest)
    return manifest


def _existing_manifest(config: IndexConfig, out: Path) -> dict[str, Any]:
    """An index to extend, checked against ``--checkpoint`` and ``--frames``."""
    from mof.evaluate.evaluate import resolve_checkpoint

    manifest = read_manifest(out)
    where = out / MANIFEST_NAME
    if config.checkpoint is not None:
        model_dir, _ = resolve_checkpoint(config.checkpoint)
        if file_sha256(model_dir / "model.safetensors") != manifest["model"]["sha256"]:
            raise SearchIndexError(
                f"{where}: built with the model of {manifest['model']['source']}; the weights "
                f"of {model_dir} differ (another model needs its own --out)")
    if config.frames is not None and config.frames != manifest["frames"]:
        raise SearchIndexError(f"{where}: built at U={manifest['frames']} frames, not "
                               f"--frames {config.frames}")
    return manifest


def _shard_root(shard: Path) -> str | None:
    """The dataset root recorded in the shard directory's ``index.json`` (absolute)."""
    from pipeline.sharding.index import read_index

    try:
        root = read_index(shard.parent)["config"]["root"]
    except (FileNotFoundError, KeyError, ValueError):
        return None
    return str(Path(root).resolve())


def _thumbnail(frames_uint8: np.ndarray, positions: list[int], height: int) -> Image.Image:
    """A strip of the indexed frames: at most ``THUMB_FRAMES`` of them, ``height`` px squares."""
    from pipeline.sampling import uniform_subset

    chosen = [positions[i] for i in uniform_subset(len(positions), min(THUMB_FRAMES,
                                                                       len(positions)))]
    tiles = [Image.fromarray(frames_uint8[p]).resize((height, height), Image.BILINEAR)
             for p in chosen]
    strip = Image.new("RGB", (height * len(tiles), height))
    for i, tile in enumerate(tiles):
        strip.paste(tile, (i * height, 0))
    return strip


def _video_row(sample: dict[str, Any], root: int | None) -> dict[str, Any]:
    meta = sample["meta"]
    return {"video_id": str(meta.get("video_id", sample["key"])), "key": sample["key"],
            "dataset": meta.get("dataset", ""), "split": meta.get("split", ""),
            "source": meta.get("source", ""), "root": root,
            "captions": list(meta.get("captions", [])), "duration_s": meta.get("duration_s")}


def _encode_chunk(model, shard: Path, manifest: dict[str, Any], out: Path, name: str,
                  config: IndexConfig, seen: dict[str, str], bar) -> tuple[int, float]:
    """Encode one shard into chunk ``name``'s files; return (videos, model seconds)."""
    from mof.evaluate.split_encoding import encode_video_batches
    from pipeline.sampling import uniform_subset
    from pipeline.sharding.samples import iter_shard

    root = _shard_root(shard)
    if root is not None and root not in manifest["roots"]:
        manifest["roots"].append(root)
    root_index = manifest["roots"].index(root) if root is not None else None
    paths = chunk_paths(out, name)
    thumbs_tmp = paths["thumbs"].with_name(name + ".tmp")
    shutil.rmtree(thumbs_tmp, ignore_errors=True)
    thumbs_tmp.mkdir(parents=True)
    embeddings, rows, stats = [], [], {}
    for emb, batch in encode_video_batches(model, iter_shard(str(shard)), manifest["frames"],
                                           config.batch_size, stats):
        embeddings.append(torch.nn.functional.normalize(emb, dim=1).cpu().numpy())
        for sample in batch:
            row = _video_row(sample, root_index)
            if row["video_id"] in seen:
                raise SearchIndexError(
                    f"{shard}: video {row['video_id']!r} is already in the index (from "
                    f"{seen[row['video_id']]}); ids must be unique within an index")
            seen[row["video_id"]] = str(shard)
            positions = uniform_subset(sample["frames"].shape[0], manifest["frames"])
            _thumbnail(sample["frames"], positions, manifest["thumb_height"]).save(
                thumbs_tmp / f"{len(rows)}.jpg", quality=85)
            rows.append(row)
        bar.update(len(batch))
    if not rows:
        raise SearchIndexError(f"{shard}: no video to index")
    paths["embeddings"].parent.mkdir(parents=True, exist_ok=True)
    with open(paths["embeddings"], "wb") as fh:
        np.save(fh, np.concatenate(embeddings).astype(np.float32))
    paths["videos"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.rmtree(paths["thumbs"], ignore_errors=True)
    thumbs_tmp.rename(paths["thumbs"])
    return len(rows), stats["encode_video_s"]


def _update_ann(out: Path, manifest: dict[str, Any], kind: str | None, changed: bool) -> str:
    """Build, rebuild or drop the approximate index; a note on what was done."""
    from mof.search.ann import ANN_FILE, build_ivf, save_ivf

    if kind is not None:
        manifest["ann"] = None if kind == "none" else {"kind": kind}
    path = out / ANN_FILE
    if manifest["ann"] is None:
        if path.exists():
            path.unlink()
            return "dropped the approximate index"
        return ""
    if not changed and path.exists():
        return ""
    start = time.perf_counter()
    index = load_index(out)
    save_ivf(build_ivf(index.embeddings), path)
    return (f"built the IVF index over {len(index.videos)} videos in "
            f"{time.perf_counter() - start:.1f} s: {path}")


def build_index(config: IndexConfig) -> IndexSummary:
    """Create, resume or extend the index ``config.out`` with the videos of ``config.shards``.

    Returns:
        What the run did.

    Raises:
        FileNotFoundError: missing shards or checkpoint.
        ValueError: another model or U than the index's, a video id already indexed, a shard
            that changed since it was indexed (all :class:`SearchIndexError`), bad settings.
    """
    from tqdm import tqdm

    from mof.evaluate.split_encoding import count_videos, eval_mode, resolve_device
    from mof.models.io import load_model
    from pipeline.sharding.samples import resolve_shards

    start = time.perf_counter()
    out = Path(config.out)
    shards = [Path(s).resolve() for s in resolve_shards(config.shards)]
    manifest = (_existing_manifest(config, out) if (out / MANIFEST_NAME).is_file()
                else _new_manifest(config, out))
    done = {c["shard"]: c for c in manifest["chunks"]}
    todo = []
    for shard in shards:
        if str(shard) not in done:
            todo.append(shard)
        elif done[str(shard)]["shard_bytes"] != shard.stat().st_size:
            raise SearchIndexError(f"{shard} changed since it was indexed as chunk "
                                   f"{done[str(shard)]['name']}; index it into a new --out")
    device = resolve_device(config.device)
    summary = IndexSummary(str(out), manifest["model"]["name"], manifest["frames"],
                           chunks_skipped=len(shards) - len(todo), device=str(device))
    if todo:
        seen = {v["video_id"]: "an earlier chunk" for v in load_index(out).videos}
        model = load_model(out / MODEL_DIR).to(device)
        total = count_videos([str(s) for s in todo])
        with eval_mode(model), torch.inference_mode(), tqdm(
                total=total, desc="index", unit="video", disable=not config.progress) as bar:
            for shard in todo:
                name = f"{len(manifest['chunks']):06d}"
                count, encode_s = _encode_chunk(model, shard, manifest, out, name, config, seen,
                                                bar)
                manifest["dim"] = int(np.load(chunk_paths(out, name)["embeddings"],
                                              mmap_mode="r").shape[1])
                manifest["chunks"].append({
                    "name": name, "shard": str(shard), "shard_bytes": shard.stat().st_size,
                    "videos": count})
                manifest["totals"] = {"videos": manifest["totals"]["videos"] + count,
                                      "chunks": len(manifest["chunks"])}
                _atomic_json(out / MANIFEST_NAME, manifest)
                summary.videos_added += count
                summary.chunks_added += 1
                summary.encode_s += encode_s
    note = _update_ann(out, manifest, config.ann, changed=bool(todo))
    _atomic_json(out / MANIFEST_NAME, manifest)
    summary.notes += [note] if note else []
    summary.videos_total = manifest["totals"]["videos"]
    summary.wall_s = time.perf_counter() - start
    return summary

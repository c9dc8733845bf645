"""``mof-cli eval``: encode a test split with U uniform frames per video, rank, write metrics.json.

Every test video contributes ``U`` frames at the segment midpoints of its ``R`` stored frames
(:func:`pipeline.sampling.uniform_subset`), prepared by :func:`mof.frames.to_model_input`;
every caption is one query. Videos and queries are encoded in batches (bf16 autocast on a
GPU), the embeddings are kept in float32 and the similarity matrix is computed in float32,
because bf16 similarities tie often enough to move R@1 (``docs/metrics.md``). Metrics come
from :mod:`mof.metrics` with our tie convention, and every peer convention is reported beside.

The "test time" of the paper is the model's share: encoding all videos and queries plus
computing the similarities and ranks. Reading and preparing frames is timed separately.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from mof.evaluate.split_encoding import (
    device_problem,
    encode_texts,
    encode_videos,
    eval_mode,
    resolve_device,
)
from mof.metrics import CONVENTIONS, count_ranks, summarize
from mof.models.contract import RetrievalModel

__all__ = [
    "EVAL_FORMAT_VERSION",
    "QUERIES_NAME",
    "EvalConfig",
    "EvalResult",
    "evaluate",
    "evaluate_model",
    "flatten_metrics",
    "format_report",
    "resolve_checkpoint",
    "run_frames",
]

EVAL_FORMAT_VERSION = 2
METRICS_NAME = "metrics.json"
#: Per-query arrays beside ``metrics.json`` (paired bootstrap intervals of ``reproduce``).
QUERIES_NAME = "queries.npz"


@dataclass
class EvalConfig:
    """Settings of ``mof-cli eval``; the resolved copy is saved inside ``metrics.json``.

    Attributes:
        shards: test shards: a shard directory, ``index.json``, pattern, file, or a list.
        checkpoint: a training run directory (its ``checkpoints/best``, else ``last``), a
            checkpoint directory or a saved model directory; ``None`` evaluates ``model``
            randomly initialised (the chance-level floor).
        model: registry name; required without ``checkpoint``, else checked against it.
        frames: U, frames per video; ``None``: the run's U from its ``config.yaml``, else the
            model contract's ``max_frames``.
        out: directory of ``metrics.json``; ``None``: the directory given as ``checkpoint``.
        batch_size: videos per encoder batch (queries go in batches four times as large).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        seed: seeds the random initialisation of a model built without checkpoint.
        convention: tie/median convention of the headline metrics (``mof.metrics``).
        progress: show progress bars.
    """

    shards: str | list[str]
    checkpoint: str | None = None
    model: str | None = None
    frames: int | None = None
    out: str | None = None
    batch_size: int = 16
    device: str = "auto"
    seed: int = 0
    convention: str = "pessimistic"
    progress: bool = True

    def __post_init__(self) -> None:
        from mof.models import list_models

        problems = []
        if not self.shards:
            problems.append("--shards is required")
        if self.checkpoint is None and self.model is None:
            problems.append("give --checkpoint, or --model for a randomly initialised model")
        if self.checkpoint is not None and not Path(self.checkpoint).exists():
            problems.append(f"--checkpoint {self.checkpoint!r} does not exist")
        if self.model is not None and self.model not in list_models():
            problems.append(f"--model {self.model!r} is not registered; one of "
                            f"{', '.join(list_models())}")
        if self.checkpoint is None and self.out is None:
            problems.append("--out is required without --checkpoint")
        if self.frames is not None and self.frames < 1:
            problems.append(f"--frames must be >= 1, got {self.frames}")
        if self.batch_size < 1:
            problems.append(f"--batch-size must be >= 1, got {self.batch_size}")
        if device_problem(self.device):
            problems.append(device_problem(self.device))
        if self.convention not in CONVENTIONS:
            problems.append(f"--convention must be one of {', '.join(CONVENTIONS)}, "
                            f"got {self.convention!r}")
        if problems:
            raise ValueError("invalid eval config:\n  " + "\n  ".join(problems))

    def resolved_device(self) -> torch.device:
        return resolve_device(self.device)


@dataclass
class EvalResult:
    """What one evaluation measured; :meth:`to_dict` is the body of ``metrics.json``.

    Attributes:
        metrics: ``{"t2v": {...}, "v2t": {...}}`` under ``convention``.
        by_convention: the same for every convention of :mod:`mof.metrics`.
        timing: seconds: ``encode_video_s``, ``encode_text_s``, ``rank_s`` (similarity and
            ranking), ``test_time_s`` (their sum), ``read_s`` (reading and preparing frames).
        counts: ``videos``, ``queries``, ``shards``.
        frames: ``used`` (U), ``stored`` (R), ``positions`` (indices into the stored frames).
        dataset: the shards' dataset name; ``split``: their split.
        loss: ``{"t2v": ...}``, the mean over queries of the text-to-video cross-entropy of the
            query's video among all test videos, with the model's own temperature (the
            training loss's text-to-video half at test scale); a lower-noise companion of R@1.
        per_query: ``video`` ``(Q,)`` the query's video index, ``t2v_ahead`` and ``t2v_tied``
            ``(Q,)`` (see :class:`mof.metrics.RankCounts`), ``t2v_loss`` ``(Q,)`` float32;
            written to ``queries.npz``, not to ``metrics.json``.
    """

    metrics: dict[str, dict]
    by_convention: dict[str, dict]
    convention: str
    timing: dict[str, float]
    counts: dict[str, int]
    frames: dict[str, Any]
    dataset: str
    split: str
    device: str
    autocast: str | None
    loss: dict[str, float] = dataclasses.field(default_factory=dict)
    per_query: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "per_query"}
        return {"format_version": EVAL_FORMAT_VERSION, **copy.deepcopy(data)}


def flatten_metrics(metrics: dict[str, dict]) -> dict[str, float]:
    """``{"t2v": {"R@1": x}}`` → ``{"t2v/R@1": x}`` (the trainer's metric keys)."""
    return {f"{d}/{k}": v for d, values in metrics.items() for k, v in values.items()}


# --- model resolution ----------------------------------------------------------------------


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path | None]:
    """Find the saved model behind ``--checkpoint``.

    Returns:
        ``(model_dir, run_dir)``; ``run_dir`` is the training run the model came from, when
        it can be told (its ``config.yaml`` exists), else ``None``.

    Raises:
        FileNotFoundError: no saved model (``model.json``) at any of the places tried.
    """
    path = Path(path)
    tried = [path, path / "checkpoints" / "best", path / "best", path / "checkpoints" / "last"]
    for candidate in tried:
        if (candidate / "model.json").is_file():
            for run in (candidate, *candidate.parents[:2]):
                if (run / "config.yaml").is_file():
                    return candidate, run
            return candidate, None
    raise FileNotFoundError(
        f"--checkpoint {path}: no saved model (model.json) in any of "
        f"{', '.join(str(t) for t in tried)}"
    )


def run_frames(run_dir: Path | None) -> tuple[int | None, bool | None]:
    """``(U, trained_with_mof)`` from a run's ``config.yaml`` (``frames: "R:U"`` or ``"U"``)."""
    if run_dir is None:
        return None, None
    spec = str((yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("frames", ""))
    parts = spec.split(":")
    if not spec or not all(p.strip().isdigit() for p in parts) or len(parts) > 2:
        return None, None
    return int(parts[-1]), len(parts) == 2


def _shard_captions(shards: list[str]) -> list[str]:
    from pipeline.sharding.samples import iter_shard

    return [c for shard in shards for s in iter_shard(shard, decode=False)
            for c in s["meta"].get("captions", [])]


def _build_model(config: EvalConfig, shards: list[str]) -> tuple[RetrievalModel, dict[str, Any]]:
    """The model to evaluate and a description of where it came from."""
    from mof.models import create_model
    from mof.models.io import load_model

    if config.checkpoint is not None:
        model_dir, run_dir = resolve_checkpoint(config.checkpoint)
        model = load_model(model_dir)
        name = model.spec.get("name")
        if config.model is not None and config.model != name:
            raise ValueError(f"--model {config.model} but {model_dir} holds a {name} model")
        frames, mof = run_frames(run_dir)
        source = {"name": name, "source": str(model_dir), "run_dir": str(run_dir or ""),
                  "run_frames": frames, "trained_with_mof": mof}
        return model, source
    torch.manual_seed(config.seed)
    if config.model.endswith("-tiny"):
        # Tiny models use a word-level vocabulary; without a training run, build it from the
        # test captions (an evaluation that leaked through it would show above chance).
        from mof.models.tokenizer import WordTokenizer

        model = create_model(config.model, tokenizer=WordTokenizer.build(_shard_captions(shards)))
    else:
        model = create_model(config.model)
    source = {"name": config.model, "source": "random-init", "run_dir": "",
              "run_frames": None, "trained_with_mof": None}
    return model, source


# --- encoding and ranking ------------------------------------------------------------------


def evaluate_model(
    model: RetrievalModel,
    shards: str | list[str],
    frames: int,
    *,
    batch_size: int = 16,
    convention: str = "pessimistic",
    progress: bool = True,
) -> EvalResult:
    """Evaluate a model in memory on test shards (the trainer calls this on its own model).

    Args:
        model: the model, on the device to run on; its mode and attention are restored after.
        shards: anything :func:`pipeline.sharding.samples.resolve_shards` accepts.
        frames: U, uniform frames per video (at most ``model.contract.max_frames``).
        batch_size: videos per batch; queries go four times as many per batch.
        convention: the headline convention (all are reported in ``by_convention``).
        progress: progress bars.

    Returns:
        :class:`EvalResult`.

    Raises:
        ValueError: ``frames`` beyond the model's limit, a duplicated video, a video without
            caption, no videos, or a NaN similarity (naming the query).
    """
    from pipeline.sampling import uniform_subset
    from pipeline.sharding.samples import resolve_shards

    if not 1 <= frames <= model.contract.max_frames:
        raise ValueError(f"--frames {frames}: the model takes 1..{model.contract.max_frames}")
    shard_list = resolve_shards(shards)
    device = next(model.parameters()).device
    with eval_mode(model), torch.inference_mode():
        video_emb, captions, stats = encode_videos(model, shard_list, frames, batch_size,
                                                   progress)
        texts = [c for caps in captions for c in caps]
        q2v = torch.tensor([v for v, caps in enumerate(captions) for _ in caps], device=device)
        text_emb, text_s = encode_texts(model, texts, 4 * batch_size, progress)
        start = time.perf_counter()
        sim = torch.cat([model.similarity(text_emb[i : i + 4096], video_emb)
                         for i in range(0, len(texts), 4096)]).float()
        counts = count_ranks(sim, q2v)
        rank_s = time.perf_counter() - start
        query_loss = torch.cat([
            F.cross_entropy(model.logits(text_emb[i : i + 4096], video_emb).float(),
                            q2v[i : i + 4096], reduction="none")
            for i in range(0, len(texts), 4096)]).cpu().numpy().astype(np.float32)
    by_convention = {name: summarize(counts, name) for name in CONVENTIONS}
    timing = {"encode_video_s": stats["encode_video_s"], "encode_text_s": text_s,
              "rank_s": rank_s, "read_s": stats["read_s"]}
    timing["test_time_s"] = timing["encode_video_s"] + text_s + rank_s
    stored = sorted(stats["stored"])
    return EvalResult(
        metrics=by_convention[convention], by_convention=by_convention, convention=convention,
        timing=timing,
        counts={"videos": len(captions), "queries": len(texts), "shards": len(shard_list)},
        frames={"used": frames, "stored": stored[0] if len(stored) == 1 else stored,
                "positions": uniform_subset(stored[0], frames) if len(stored) == 1 else None},
        dataset="+".join(sorted(stats["datasets"])), split="+".join(sorted(stats["splits"])),
        device=str(device), autocast="bfloat16" if device.type == "cuda" else None,
        loss={"t2v": float(query_loss.mean())},
        per_query={"video": q2v.cpu().numpy().astype(np.int32),
                   "t2v_ahead": counts.t2v_ahead.astype(np.int32),
                   "t2v_tied": counts.t2v_tied.astype(np.int32), "t2v_loss": query_loss},
    )


# --- the command -----------------------------------------------------------------------------


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Resolve the model, evaluate it and write ``metrics.json``.

    Returns:
        The ``metrics.json`` content (:meth:`EvalResult.to_dict` plus model, config, path).

    Raises:
        FileNotFoundError: no model behind ``--checkpoint``, or missing shards.
        ValueError: see :func:`evaluate_model`; ``--model`` differing from the checkpoint's.
    """
    from pipeline.atomic import atomic_write_bytes, atomic_write_json
    from pipeline.sharding.samples import resolve_shards

    shards = resolve_shards(config.shards)
    model, source = _build_model(config, shards)
    frames = config.frames or source["run_frames"] or model.contract.max_frames
    frames_from = ("--frames" if config.frames else "run config.yaml" if source["run_frames"]
                   else "model contract max_frames")
    model.to(config.resolved_device())
    result = evaluate_model(model, shards, frames, batch_size=config.batch_size,
                            convention=config.convention, progress=config.progress)
    result.frames["from"] = frames_from
    out = Path(config.out or config.checkpoint)
    report = result.to_dict()
    report["model"] = {**source, "spec": model.spec,
                       "contract": model.contract.to_dict()}
    report["config"] = {**dataclasses.asdict(config), "frames": frames, "out": str(out)}
    report["versions"] = {"torch": torch.__version__, "numpy": np.__version__}
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **result.per_query)
    atomic_write_bytes(out / QUERIES_NAME, buf.getvalue())
    atomic_write_json(out / METRICS_NAME, report)
    report["path"] = str(out / METRICS_NAME)
    return report


def format_report(report: dict[str, Any]) -> str:
    """The table ``mof-cli eval`` prints."""
    model, counts, timing = report["model"], report["counts"], report["timing"]
    frames = report["frames"]
    lines = [
        f"{report['dataset']} {report['split']}: {counts['videos']} videos, {counts['queries']} "
        f"queries; {model['name']} ({model['source']}); U={frames['used']} of "
        f"R={frames['stored']} frames; {report['device']}"
        + (f" ({report['autocast']} autocast)" if report["autocast"] else ""),
        f"{'':6}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'MedR':>8}{'MeanR':>9}"
        f"   ({report['convention']} ties)",
    ]
    for direction in ("t2v", "v2t"):
        m = report["metrics"][direction]
        lines.append(f"{direction:6}{m['R@1']:8.2f}{m['R@5']:8.2f}{m['R@10']:8.2f}"
                     f"{m['MedR']:8.1f}{m['MeanR']:9.2f}")
    lines.append(
        f"test time {timing['test_time_s']:.2f} s (videos {timing['encode_video_s']:.2f} s, "
        f"queries {timing['encode_text_s']:.2f} s, ranking {timing['rank_s']:.2f} s); "
        f"reading frames {timing['read_s']:.2f} s")
    lines.append(f"chance R@1: {100 / counts['videos']:.2f}; wrote {report['path']}")
    return "\n".join(lines)

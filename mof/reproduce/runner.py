"""Run the grid: data (synth → shard) once, then train → eval per cell and seed, reusing work.

Layout under ``WORK/<dataset>/``::

    data/                                   the generated synthetic dataset (synthetic only)
    pretrain-n<N>-seed<K>/                  the generated pre-training corpus (synthetic only)
    shards/pretrain-n<N>-seed<K>-r<R>-s<S>/train/   its shards (the warm start's frames)
    shards/r<R>-s<S>/{train,test}/          R stored frames of S px per video (mof-cli shard)
    <model>/<cell>/seed<k>/run/             the training run (mof-cli train's RUN_DIR)
    <model>/<cell>/seed<k>/metrics.json     evaluation of the selected checkpoint (mof-cli eval)
    <model>/<cell>/seed<k>/timing.json      wall time of every training attempt
    <model>/<cell>/seed<k>/cell.json        written last: the cell is finished

A cell with ``cell.json`` is skipped (after checking it was made with the same settings); one
with a checkpoint resumes from it; one that died before its first checkpoint starts over. A
failing cell is recorded (``error.txt``) and the others go on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from mof.reproduce.config import SYNTHETIC, Table4Config
from mof.reproduce.grid import Cell, parse_grid
from mof.reproduce.paths import (
    PRETRAIN_SEED,
    cell_dir,
    dataset_slug,
    pretrain_name,
)
from pipeline.errors import MofError

__all__ = [
    "CellMismatch",
    "CellOutcome",
    "ShardPaths",
    "describe_host",
    "prepare_data",
    "run_cell",
    "run_grid",
    "shard_paths",
    "torch_threads",
]

#: Train settings that may differ between a finished cell and a new request (they change
#: where or how fast a run computes, not what it computes).
_NOT_IDENTITY = frozenset({"out", "resume", "workers", "device", "log_every", "eval_batch_size",
                           "checkpoint_every", "train", "test"})


class CellMismatch(MofError, ValueError):
    """A cell on disk was made with other settings than the ones requested."""


@dataclass
class ShardPaths:
    """The train and test shard directories every cell reads, and the shards of the
    pre-training corpus the warm start trains on (``None``: the warm start uses ``train``)."""

    train: str
    test: str
    pretrain: str | None = None


@dataclass
class CellOutcome:
    """What happened to one cell and seed: ``trained``, ``resumed``, ``skipped`` or ``failed``."""

    frames: str
    seed: int
    status: str
    seconds: float = 0.0
    error: str = ""


def describe_host() -> dict[str, Any]:
    """The machine the grid ran on: CPU model, cores, memory, GPU, torch."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        memory_gib = round(kib / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": memory_gib, "gpu": gpu,
            "torch": torch.__version__, "python": platform.python_version()}


# --- data --------------------------------------------------------------------------------------


def _shard_root(cfg: Table4Config) -> tuple[Path, int, int]:
    """``WORK/<dataset>/shards/r<R>-s<S>``, R and S."""
    from mof.models import create_model

    size = cfg.size or create_model(cfg.model, **cfg.resolved_model_args).contract.frame_size
    frames = cfg.needed_frames
    return (Path(cfg.work) / dataset_slug(cfg.dataset) / "shards" / f"r{frames}-s{size}",
            frames, size)


def _pretrain_shards(cfg: Table4Config) -> Path | None:
    """``WORK/synthetic/shards/pretrain-n<N>-seed<K>-r<R>-s<S>/train`` (``None``: no corpus)."""
    if not cfg.resolved_pretrain_videos:
        return None
    root, _, size = _shard_root(cfg)
    name = f"{pretrain_name(cfg)}-r{cfg.warm_start_frames}-s{size}"
    return root.parent / name / "train"


def shard_paths(cfg: Table4Config) -> ShardPaths:
    """Where :func:`prepare_data` puts the shards (whether or not they exist yet)."""
    root = _shard_root(cfg)[0]
    pretrain = _pretrain_shards(cfg)
    return ShardPaths(train=str(root / "train"), test=str(root / "test"),
                      pretrain=str(pretrain) if pretrain else None)


def _write_split(cfg: Table4Config, root: str, split: str, out: Path, frames: int,
                 size: int) -> None:
    from pipeline.sharding.write import ShardConfig, write_shards

    summary = write_shards(ShardConfig(
        dataset=cfg.dataset, root=root, split=split, out=str(out), frames=frames, size=size,
        workers=2, shard_size=32), progress=cfg.progress)
    if summary.errors_total:
        print(f"{out}: {summary.errors_total} videos could not be decoded "
              f"(see {out / 'errors.jsonl'})", flush=True)


def _prepare_pretrain(cfg: Table4Config) -> None:
    """Generate and shard the pre-training corpus (resumable; nothing when there is none)."""
    out = _pretrain_shards(cfg)
    if out is None:
        return
    from pipeline.synth.dataset import SynthConfig, generate_synthetic

    root = Path(cfg.work) / SYNTHETIC / pretrain_name(cfg)
    generate_synthetic(SynthConfig(out=root, seed=PRETRAIN_SEED, train=cfg.resolved_pretrain_videos,
                                   test=0, progress=cfg.progress))
    _write_split(cfg, str(root), "train", out, cfg.warm_start_frames, _shard_root(cfg)[2])


def prepare_data(cfg: Table4Config) -> ShardPaths:
    """Generate the synthetic dataset if needed, then shard train and test (both resumable);
    the same for the pre-training corpus when the grid has one.

    Raises:
        ValueError, RuntimeError: from ``mof-cli synth`` / ``mof-cli shard`` (bad manifest,
            settings that differ from what the directories hold, failed videos).
    """
    root = cfg.root
    if cfg.dataset == SYNTHETIC and root is None:
        from pipeline.synth.dataset import SynthConfig, generate_synthetic

        root = str(Path(cfg.work) / SYNTHETIC / "data")
        generate_synthetic(SynthConfig(out=Path(root), train=cfg.synth_train,
                                       test=cfg.synth_test,
                                       test_captions=cfg.synth_test_captions,
                                       progress=cfg.progress))
    shards, frames, size = _shard_root(cfg)
    for split in ("train", "test"):
        _write_split(cfg, root, split, shards / split, frames, size)
    _prepare_pretrain(cfg)
    return shard_paths(cfg)


# --- one cell ----------------------------------------------------------------------------------


def _identity(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in _NOT_IDENTITY}


def _check_same(saved: dict[str, Any], wanted: dict[str, Any], where: Path) -> None:
    saved, wanted = _identity(saved), _identity(wanted)
    diffs = [f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} requested"
             for k in sorted(set(saved) | set(wanted))
             if _normal(saved.get(k)) != _normal(wanted.get(k))]
    if diffs:
        raise CellMismatch(f"{where} was made with other settings ({'; '.join(diffs)}); "
                           "choose another --work or delete that directory")


def _normal(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _write_json(path: Path, obj: Any) -> None:
    from pipeline.atomic import atomic_write_json

    atomic_write_json(path, obj)


def _train_seconds(attempts: list[dict[str, float]], checkpoint: Path) -> float:
    """Training wall time: finished attempts in full; an interrupted attempt up to its last
    checkpoint (the work after it was lost and redone by the next attempt)."""
    total = 0.0
    saved = checkpoint.stat().st_mtime if checkpoint.is_file() else None
    for attempt in attempts:
        if attempt.get("end") is not None:
            total += attempt["end"] - attempt["start"]
        elif saved is not None and saved > attempt["start"]:
            total += saved - attempt["start"]
    return total


def _eval_seconds_during_training(run: Path) -> float:
    """Time the trainer spent evaluating (its reports ``run/eval/step*.json``), to leave it
    out of the training time."""
    total = 0.0
    for path in sorted((run / "eval").glob("step*.json")):
        timing = json.loads(path.read_text()).get("timing", {})
        total += timing.get("test_time_s", 0.0) + timing.get("read_s", 0.0)
    return total


def resume_or_restart(config, run: Path):
    """``config`` set to resume ``run`` if a checkpoint of it exists, else ``run`` cleared.

    Returns:
        The train config to run and whether it resumes.

    Raises:
        CellMismatch: ``run`` was started with other settings.
    """
    from mof.train.checkpoint import find_checkpoint

    if not (run / "config.yaml").is_file():
        return config, False
    import yaml

    _check_same(yaml.safe_load((run / "config.yaml").read_text()), config.to_dict(), run)
    if find_checkpoint(run / "checkpoints") is None:
        shutil.rmtree(run)  # died before its first checkpoint: nothing to resume
        return config, False
    return dataclasses.replace(config, resume=str(run)), True


def _train(cfg: Table4Config, cell: Cell, seed: int, shards: ShardPaths, where: Path) -> str:
    """Train (or resume) the cell's run; returns ``trained`` or ``resumed``."""
    from mof.train import train

    run = where / "run"
    config, resumed = resume_or_restart(
        cfg.train_config(cell, seed, shards.train, shards.test, str(run)), run)
    status = "resumed" if resumed else "trained"
    timing_path = where / "timing.json"
    attempts = json.loads(timing_path.read_text()) if timing_path.is_file() else []
    attempts.append({"start": time.time(), "end": None})
    _write_json(timing_path, attempts)
    train(config, progress=False)
    attempts[-1]["end"] = time.time()
    _write_json(timing_path, attempts)
    return status


def run_cell(cfg: Table4Config, cell: Cell, seed: int, shards: ShardPaths) -> CellOutcome:
    """Train, evaluate and record one cell and seed, reusing whatever is on disk.

    Raises:
        CellMismatch: the cell on disk was made with other settings.
        Exception: whatever training or evaluation raised (the caller records it).
    """
    from mof.evaluate.evaluate import EvalConfig, evaluate

    where = cell_dir(cfg, cell, seed)
    wanted = cfg.train_config(cell, seed, shards.train, shards.test, str(where / "run"))
    done = where / "cell.json"
    if done.is_file():
        _check_same(json.loads(done.read_text())["train_config"], wanted.to_dict(), where)
        return CellOutcome(cell.frames, seed, "skipped")
    start = time.time()
    where.mkdir(parents=True, exist_ok=True)
    (where / "error.txt").unlink(missing_ok=True)
    status = _train(cfg, cell, seed, shards, where)
    checkpoint = where / "run" / "checkpoints" / cfg.select
    report = evaluate(EvalConfig(shards=shards.test, checkpoint=str(checkpoint), out=str(where),
                                 frames=cell.used, device=cfg.device, progress=False))
    attempts = json.loads((where / "timing.json").read_text())
    train_s = _train_seconds(attempts, where / "run" / "checkpoints" / "last" / "trainer_state.pt")
    eval_s = _eval_seconds_during_training(where / "run")
    _write_json(done, {
        "frames": cell.frames, "seed": seed, "select": cfg.select,
        "train_s": train_s - eval_s, "train_wall_s": train_s, "eval_during_training_s": eval_s,
        "attempts": len(attempts), "test_time_s": report["timing"]["test_time_s"],
        "metrics": report["metrics"], "host": describe_host(), "finished": time.time(),
        "train_config": wanted.to_dict(),
    })
    return CellOutcome(cell.frames, seed, status, time.time() - start)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Train with ``count`` torch threads inside the block; the process gets its own back."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_cell_safely(cfg_dict: dict[str, Any], frames: str, seed: int,
                     shards: ShardPaths, threads: int) -> CellOutcome:
    """Worker entry point: one torch thread budget per job; errors come back as values."""
    import torch

    torch.set_num_threads(threads)
    cfg = Table4Config(**cfg_dict)
    cell = parse_grid(frames)[0]
    try:
        return run_cell(cfg, cell, seed, shards)
    except Exception as exc:  # noqa: BLE001 (one failed cell must not stop the grid)
        where = cell_dir(cfg, cell, seed)
        where.mkdir(parents=True, exist_ok=True)
        (where / "error.txt").write_text(traceback.format_exc())
        return CellOutcome(frames, seed, "failed", error=f"{type(exc).__name__}: {exc}")


def _cost(cell: Cell) -> float:
    """Relative cost of a cell, to start the long ones first (measured per-phase units)."""
    return cell.used + (cell.regular + 3.5 * cell.used if cell.is_mof else 0.0)


def run_grid(cfg: Table4Config, shards: ShardPaths,
             on_done: Callable[[CellOutcome], None] | None = None) -> list[CellOutcome]:
    """Every cell and seed, ``cfg.jobs`` at a time; seed 0 of every cell first, so that an
    interrupted grid leaves a complete table of fewer seeds.

    Returns:
        One outcome per cell and seed, in completion order.
    """
    cfg_dict = {k: v for k, v in dataclasses.asdict(cfg).items()}
    tasks = [(cell.frames, seed) for seed in cfg.seed_list()
             for cell in sorted(cfg.cells, key=_cost, reverse=True)]
    outcomes: list[CellOutcome] = []
    if cfg.jobs == 1:
        with torch_threads(cfg.threads):  # the cells run in this process
            for frames, seed in tasks:
                outcomes.append(_run_cell_safely(cfg_dict, frames, seed, shards, cfg.threads))
                if on_done:
                    on_done(outcomes[-1])
        return outcomes
    with ProcessPoolExecutor(max_workers=cfg.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_run_cell_safely, cfg_dict, frames, seed, shards, cfg.threads)
                   for frames, seed in tasks]
        for future in as_completed(futures):
            outcomes.append(future.result())
            if on_done:
                on_done(outcomes[-1])
    return outcomes

"""``mof-cli shard``: decode every video of a split into WebDataset shards, resumably.

The run is a deterministic plan (records sorted by video id, video ``k`` in shard
``k // shard_size``; on ``N`` nodes, node ``r`` owns the shards whose number is ``r`` modulo
``N``). Workers write whole shards, each committed atomically, so a run killed at any moment
resumes by writing exactly the shards that are missing. ``index.json`` is written last.
``--retry-failed`` re-attempts the videos of ``errors.jsonl`` (see :mod:`pipeline.sharding.retry`).
SIGINT and SIGTERM stop the run with :class:`ShardInterrupted`, whose message says how to resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

from pipeline.atomic import TEMP_SUFFIX, atomic_write_json, temporaries
from pipeline.datasets.records import SHARD_FORMAT_VERSION
from pipeline.errors import MofError
from pipeline.interrupt import ShardInterrupted, Terminated, terminate_as_interrupt
from pipeline.sharding.index import (
    INDEX_NAME,
    RUN_CONFIG_NAME,
    SAMPLES_NAME,
    build_index,
    config_differences,
    errors_sidecar,
    merge_indexes,
    partial_index_name,
    read_errors,
    write_errors,
    write_index,
)
from pipeline.sharding.retry import reconcile_errors, retry_shards, shard_names
from pipeline.sharding.worker import (
    ShardResult,
    ShardTask,
    WorkerSettings,
    init_worker,
    make_plan,
    run_in_worker,
    write_one_shard,
)

__all__ = [
    "ShardConfig",
    "ShardConfigMismatch",
    "ShardSummary",
    "write_shards",
]


class ShardConfigMismatch(MofError, RuntimeError):
    """``--out`` already holds shards of a run with different content settings."""


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


@dataclass
class ShardConfig:
    """Settings of one ``mof-cli shard`` run.

    Attributes:
        dataset: manifest name (e.g. ``synthetic``, ``msrvtt``); also the shard name prefix.
        root: dataset root directory; video paths are relative to it.
        split: ``train``, ``val`` or ``test``.
        out: output directory for shards, ``index.json`` and ``errors.jsonl``.
        frames: R, frames stored per video (segment midpoints, see docs/decoding.md).
        size: S, frames are resized (short side) and centre-cropped to ``S x S`` pixels.
        backend: ``auto``, ``ffmpeg`` or ``dali``; ``auto`` is resolved once, up front.
        workers: decoding processes; each writes whole shards.
        shard_size: videos per shard.
        strict: report failure (non-zero exit) when any video could not be written.
        num_nodes: machines splitting the plan; default: ``$WORLD_SIZE`` or 1.
        node_rank: this machine's rank; default: ``$RANK`` or 0.
        columns: the columns of a generic ``.csv`` / ``.tsv`` file without a header row
            (``caption,path``).
        retry_failed: after finishing the run, re-attempt the videos of ``errors.jsonl``.
        videos: a folder of videos to shard without annotations
            (:mod:`pipeline.datasets.video_folder`); it is the root, ``dataset`` defaults to its
            name and ``split`` to ``test``.
    """

    dataset: str | None
    root: str | None
    split: str | None
    out: str
    frames: int = 32
    size: int = 256
    backend: str = "auto"
    workers: int = 1
    shard_size: int = 64
    strict: bool = False
    num_nodes: int | None = None
    node_rank: int | None = None
    columns: str | None = None
    retry_failed: bool = False
    videos: str | None = None

    def __post_init__(self) -> None:
        from pipeline.datasets.manifests import parse_columns
        from pipeline.datasets.parsers.generic import DEFAULT_SPLIT
        from pipeline.datasets.video_folder import folder_dataset_name
        from pipeline.decode.video import BACKENDS

        problems = []
        if self.videos is not None:
            if self.root is not None and Path(self.root).resolve() != Path(self.videos).resolve():
                problems.append("--videos DIR is the root: leave --root out")
            self.root = self.videos
            self.dataset = self.dataset or folder_dataset_name(self.videos)
            self.split = self.split or DEFAULT_SPLIT

        # torchrun sets WORLD_SIZE/RANK: each launched process is one "node" of the plan.
        if self.num_nodes is None:
            self.num_nodes = _env_int("WORLD_SIZE") or 1
        if self.node_rank is None:
            self.node_rank = _env_int("RANK") or 0
        for name in ("dataset", "split", "out"):
            if not getattr(self, name):
                problems.append(f"--{name} is required")
        if not self.root:
            problems.append("--root (or --videos) is required")
        elif not Path(self.root).is_dir():
            problems.append(f"--root {self.root!r} is not a directory")
        for name, low in (
            ("frames", 1),
            ("size", 8),
            ("workers", 1),
            ("shard_size", 1),
            ("num_nodes", 1),
        ):
            if getattr(self, name) < low:
                problems.append(
                    f"--{name.replace('_', '-')} must be >= {low}, got {getattr(self, name)}"
                )
        if self.backend not in BACKENDS:
            problems.append(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if not 0 <= self.node_rank < max(self.num_nodes, 1):
            problems.append(f"--node-rank must be in [0, {self.num_nodes}), got {self.node_rank}")
        if self.retry_failed and self.num_nodes != 1:
            problems.append("--retry-failed runs on one machine (after --merge-index)")
        try:
            parse_columns(self.columns)
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            raise ValueError("invalid shard config:\n  " + "\n  ".join(problems))


@dataclass
class ShardSummary:
    """What a run did. ``skipped`` counts videos of shards that were already complete."""

    out: str
    videos: int = 0
    written: int = 0
    skipped: int = 0
    failed: int = 0
    shards_written: int = 0
    shards_total: int = 0
    bytes: int = 0
    wall_s: float = 0.0
    errors_total: int = 0
    nothing_to_do: bool = False
    index: str | None = None
    notes: list[str] = field(default_factory=list)
    retried: int = 0
    recovered: int = 0

    def format(self) -> str:
        """A human-readable summary for the end of the command."""
        if self.nothing_to_do:
            head = f"nothing to do: all {self.shards_total} shards in {self.out} are complete"
        else:
            rate = self.written / self.wall_s if self.wall_s > 0 else 0.0
            head = (
                f"videos: {self.written} written, {self.skipped} skipped (already sharded), "
                f"{self.failed} failed | shards: {self.shards_written} written, "
                f"{self.shards_total} in plan | {self.bytes / 1e6:.1f} MB | "
                f"{self.wall_s:.1f} s ({rate:.2f} videos/s)"
            )
        lines = [head] + self.notes
        if self.retried:
            lines.append(f"retried {self.retried} failed videos: {self.recovered} now written, "
                         f"{self.retried - self.recovered} still fail")
        if self.errors_total:
            lines.append(
                f"{self.errors_total} videos could not be sharded: see {self.out}/errors.jsonl"
            )
        return "\n".join(lines)


def _resolved_config(
    config: ShardConfig, dataset: str, backend: str, plan: list[ShardTask]
) -> dict[str, Any]:
    """The config saved beside the shards: options, resolved names and the plan's identity."""
    ids = "\n".join(r.video_id for task in plan for r in task.records)
    resolved = asdict(config)
    del resolved["retry_failed"]  # an action of one invocation, not a setting of the shards
    resolved.update(
        dataset=dataset,
        dataset_option=config.dataset,
        root=str(Path(config.root).resolve()),
        out=str(Path(config.out).resolve()),
        backend=backend,
        format_version=SHARD_FORMAT_VERSION,
        num_videos=sum(len(t.records) for t in plan),
        num_shards=len(plan),
        videos_sha1=hashlib.sha1(ids.encode()).hexdigest(),
    )
    return resolved


def _prepare_out(out: Path, resolved: dict[str, Any], own: list[ShardTask], single: bool) -> None:
    """Create ``out``, sweep stale temporaries and check or save the run config.

    Raises:
        ShardConfigMismatch: ``out`` holds shards of a run with other content settings.
    """
    out.mkdir(parents=True, exist_ok=True)
    # On a shared directory other nodes may be mid-write: sweep only what this node owns.
    stale = out.glob(f"*{TEMP_SUFFIX}") if single else (
        tmp for t in own for tmp in temporaries(out / t.name))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    saved_path = out / RUN_CONFIG_NAME
    if saved_path.exists():
        diffs = config_differences(json.loads(saved_path.read_text()), resolved)
        if diffs:
            raise ShardConfigMismatch(
                f"{out} holds shards of a different run; use another --out or delete it:\n  "
                + "\n  ".join(diffs)
            )
    elif any(out.glob("*.tar")):
        raise ShardConfigMismatch(
            f"{out} holds *.tar files but no {RUN_CONFIG_NAME}; use another --out"
        )
    else:
        atomic_write_json(saved_path, resolved)


def _run_tasks(
    todo: list[ShardTask], settings: WorkerSettings, workers: int, progress: bool
) -> list[ShardResult]:
    """Write the shards of ``todo`` with ``workers`` processes under one progress bar."""
    from tqdm import tqdm

    total = sum(len(t.records) for t in todo)
    bar = tqdm(
        total=total, unit="video", desc="shard", disable=not progress or total == 0, smoothing=0.1
    )
    failed = 0

    def tick(error: bool) -> None:
        nonlocal failed
        failed += int(error)
        bar.update(1)
        if error:
            bar.set_postfix(failed=failed, refresh=False)

    results: list[ShardResult] = []
    try:
        if workers == 1 or len(todo) <= 1:
            results = [write_one_shard(task, settings, on_video=tick) for task in todo]
            return results
        # spawn, not fork: a decoder library (or DALI's CUDA context) must not be forked.
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        with ProcessPoolExecutor(
            max_workers=min(workers, len(todo)),
            mp_context=ctx,
            initializer=init_worker,
            initargs=(queue, os.getpid()),
        ) as pool:
            try:
                with _signals_deferred():
                    pending = {pool.submit(run_in_worker, task, settings) for task in todo}
                while pending:
                    done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    _drain(queue, tick)
                    results += [f.result() for f in done]
                _drain(queue, tick)
            except KeyboardInterrupt:
                # Leaving the `with` would wait for every running shard to finish: stop the
                # workers now (their *.tmp files are swept on resume); SIGKILL, so that a
                # worker still importing its modules cannot go on to read start-up data the
                # exiting parent has removed. The executor has no public way to do this.
                for process in list(pool._processes.values()):
                    process.kill()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    finally:
        bar.close()
    return results


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the pool starts its workers (at the first submits).

    Interrupted between starting a worker and sending it its start-up data, the parent would
    leave that worker to fail loudly after the run has said how to resume. A handler that only
    records the signal takes its place here (Python runs signal handlers in the main thread,
    whichever thread the signal reached, so a thread mask would not do); the signal is
    re-raised at the end of the block, when every worker can be stopped.
    """
    received: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if received:
            os.kill(os.getpid(), received[0])


def _drain(queue: Any, tick: Any) -> None:
    while True:
        try:
            tick(queue.get_nowait())
        except Empty:
            return


def _finish(
    out: Path,
    config: ShardConfig,
    resolved: dict[str, Any],
    plan: list[ShardTask],
    own: list[ShardTask],
) -> tuple[str | None, list[str]]:
    """Write ``errors.jsonl`` and ``index.json`` (or this node's partial index); join partials."""
    notes: list[str] = []
    if config.num_nodes == 1:
        names = shard_names(out, plan)  # with the shards of earlier --retry-failed runs
        reconcile_errors(out, names, plan)
        write_errors(out, names)
        write_index(out, names, resolved)
        return str(out / INDEX_NAME), notes
    node = {"rank": config.node_rank, "num_nodes": config.num_nodes}
    partial = out / partial_index_name(config.node_rank, config.num_nodes)
    atomic_write_json(partial, build_index(out, [t.name for t in own], resolved, node=node))
    if all((out / t.name).exists() for t in plan):
        merge_indexes(out)
        return str(out / INDEX_NAME), notes
    notes.append(
        f"node {config.node_rank} of {config.num_nodes} done ({partial.name}); run "
        f"`mof-cli shard --merge-index {out}` once every node has finished"
    )
    return str(partial), notes


def write_shards(config: ShardConfig, progress: bool = True) -> ShardSummary:
    """Shard one split of a dataset into ``config.out`` (resuming a previous run there).

    Args:
        config: the run's settings.
        progress: show a tqdm bar (videos/s).

    Returns:
        The run's summary. Videos that could not be read or decoded are counted in
        ``failed`` and recorded in ``errors.jsonl``; they never stop the run. With
        ``retry_failed``, ``retried`` and ``recovered`` count the videos re-attempted and
        those that now decode.

    Raises:
        pipeline.datasets.parsers.common.ManifestError: the manifest cannot be read.
        ShardConfigMismatch: ``config.out`` holds a different run's shards.
        ShardInterrupted: SIGINT or SIGTERM; the message says how to resume.
    """
    try:
        with terminate_as_interrupt():
            return _write_shards(config, progress)
    except KeyboardInterrupt as exc:
        signum = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
        raise ShardInterrupted(
            f"interrupted by {signal.Signals(signum).name}: the complete shards in {config.out} "
            "are kept; run the same command again to resume (it writes only what is missing)",
            signum,
        ) from None


def _write_shards(config: ShardConfig, progress: bool) -> ShardSummary:
    from pipeline.datasets.manifests import load_records, parse_columns, resolve_dataset
    from pipeline.decode.video import resolve_backend

    start = time.perf_counter()
    out = Path(config.out)
    backend = resolve_backend(config.backend)
    if config.videos is not None:
        from pipeline.datasets.video_folder import folder_records

        dataset, records = config.dataset, folder_records(config.videos, config.split)
    else:
        columns = parse_columns(config.columns)
        # A generic annotation file's descriptor is named after its stem: it names the shards.
        dataset = resolve_dataset(config.dataset, Path(config.root), columns).name
        records = load_records(config.dataset, Path(config.root), config.split, columns)
    plan = make_plan(records, dataset, config.split, config.shard_size)
    own = [t for t in plan if t.index % config.num_nodes == config.node_rank]
    resolved = _resolved_config(config, dataset, backend, plan)
    _prepare_out(out, resolved, own, single=config.num_nodes == 1)

    todo = [t for t in own if not (out / t.name).exists()]
    summary = ShardSummary(
        out=str(out), videos=sum(len(t.records) for t in own), shards_total=len(plan)
    )
    summary.skipped = summary.videos - sum(len(t.records) for t in todo)
    finished_index = out / (
        INDEX_NAME
        if config.num_nodes == 1
        else partial_index_name(config.node_rank, config.num_nodes)
    )
    settings = WorkerSettings(
        dataset, config.split, str(Path(config.root)), str(out), config.frames, config.size,
        backend,
    )
    if not todo and finished_index.exists():
        summary.nothing_to_do = not config.retry_failed
        if config.num_nodes == 1 and not (out / SAMPLES_NAME).exists():
            # An index that names no samples sidecar: list the samples now, reading only the
            # json members of the shards.
            summary.index, summary.notes = _finish(out, config, resolved, plan, own)
            summary.notes.append(f"listed the samples in {out / SAMPLES_NAME}")
    else:
        results = _run_tasks(todo, settings, config.workers, progress)
        summary.written = sum(r.samples for r in results)
        summary.failed = sum(r.errors for r in results)
        summary.shards_written = len(results)
        summary.bytes = sum((out / r.name).stat().st_size for r in results)
        summary.index, summary.notes = _finish(out, config, resolved, plan, own)
    if config.retry_failed:
        retry = retry_shards(out, plan, config.shard_size)
        settings = dataclasses.replace(settings, commit_empty=False)
        results = _run_tasks(retry, settings, config.workers, progress)
        committed = [r for r in results if r.committed]
        summary.retried = sum(r.videos for r in results)
        summary.recovered = sum(r.samples for r in results)
        summary.written += summary.recovered
        summary.shards_written += len(committed)
        summary.bytes += sum((out / r.name).stat().st_size for r in committed)
        summary.index, summary.notes = _finish(out, config, resolved, plan, own)
        if not retry:
            summary.notes.append(f"nothing to retry: no video failed in {out}")
    names = shard_names(out, plan) if config.num_nodes == 1 else [t.name for t in own]
    summary.errors_total = sum(len(read_errors(out / errors_sidecar(n))) for n in names)
    summary.wall_s = time.perf_counter() - start
    return summary

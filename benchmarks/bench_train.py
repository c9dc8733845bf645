"""Cost of one training phase: baselines, MOF per meta-gradient mode, and a cost-model floor.

Runs the real trainer (``mof.train.trainer.Trainer``) with ``frozen-tiny`` (64 px, batch 8, one
CPU thread) on synthetic shards: baseline-U and baseline-R, MOF R:U in (8,4) (16,4) (8,8)
(32,8) with each meta-gradient mode (``exact``; ``finite-diff`` with the central difference,
``fd-central``, and with the forward difference sharing the model-level pass, ``fd-forward``),
and MOF 8:8 and 32:8 with ``--frame-step-every k``. The
trainer's calls are wrapped with timers; nothing in it is replaced. Every configuration trains
one epoch in its own thread, and a round-robin baton lets one thread at a time run a phase, so
phase k of every configuration runs in the same minute and drifting load from other processes
falls on all alike. Times are the working thread's CPU seconds (``time.thread_time``), means
over phases 1-10 (phase 0 is warm-up; 10 phases hold whole cycles of k = 2, 5, 10).

- *phase*: from taking the baton (just before the reader's ``next()``) to the end of
  ``Trainer._phase``: data, store wait, model-level step, frame-level step, wait for the
  undo journal, store write-back; *data* is the reader's ``next()`` (``--workers 0``); the
  draw of captions, regular frames and crops runs one phase ahead on the trainer's draw
  thread, whose CPU time is reported beside the phase;
- *store I/O*: the phase's time in the store's prefetch/get/write calls and in waiting for the
  undo journal, plus the CPU time of the store's background read/write threads and of the
  journal's thread, as a share of the phase and those threads together;
- *floor* of a MOF phase: the phase's own model-level step on U frames, plus one inner
  gradient on U, one outer forward-backward on R and two ε-gradients on U (``fd-forward``:
  the model-level step, the outer pass and one ε-gradient), each timed right after every
  phase on a batch of the run with the run's current model;
- *peak*: from a separate sequential pass in a subprocess (threads would mix allocations)
  where glibc serves large blocks by ``mmap``: a phase's peak resident memory above the set-up
  trainer's.

    .venv/bin/python benchmarks/bench_train.py [--augment none] [--json out.json]  # ~8 min

``--variants`` instead measures the variants of ``docs/variants.md`` (``--frame-param mix``,
``--inner-step adamw``, ``--frame-steps 3``, the three together) beside the paper's MOF 8:4
and the baselines on 4 and 8 frames, in one rotation (phase time only, no memory pass).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from train_tables import (
    EVERY,
    FLOOR,
    MODES,
    PAIRS,
    PAPER,
    VARIANTS,
    report,
    schedule_table,
    variant_table,
)

BATCH = 8
WINDOW = range(1, 11)  # measured phases
_local = threading.local()


def make_shards(cache: Path, videos: int, stored: int) -> str:
    """Synthetic train shards of ``videos`` videos with ``stored`` frames of 64 px (cached)."""
    from pipeline.sharding.write import ShardConfig, write_shards
    from pipeline.synth.dataset import SynthConfig, generate_synthetic

    raw, out = cache / f"raw-{videos}", cache / f"train-{videos}x{stored}"
    if not (out / "index.json").is_file():
        generate_synthetic(SynthConfig(out=raw, train=videos, test=1, duration_s=3.0,
                                       captions=2, progress=False))
        write_shards(ShardConfig(dataset="synthetic", root=str(raw), split="train",
                                 out=str(out), frames=stored, size=64, backend="ffmpeg",
                                 workers=2, shard_size=BATCH * 2), progress=False)
    return str(out)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1])


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # Linux: VmHWM := current RSS
        f.write("5")


class Baton:
    """Round-robin turns: one named thread at a time runs a phase."""

    def __init__(self, names: list[str]):
        self.order, self.turn = list(names), names[0]
        self.cond = threading.Condition()

    def take(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == name)

    def _next(self, name: str) -> str | None:
        i = self.order.index(name)
        return self.order[(i + 1) % len(self.order)] if len(self.order) > 1 else None

    def give(self, name: str) -> None:
        with self.cond:
            self.turn = self._next(name)
            self.cond.notify_all()

    def leave(self, name: str) -> None:
        with self.cond:
            if self.turn == name:
                self.turn = self._next(name)
            self.order.remove(name)
            self.cond.notify_all()


class Probe:
    """Timers around one trainer's calls: per-phase CPU time and peak memory, and parts."""

    def __init__(self, name: str, baton: Baton | None = None) -> None:
        self.name, self.baton, self.phase, self.holding = name, baton, 0, False
        self.parts: list[tuple[int, str, float]] = []  # (phase, part, CPU seconds)
        self.floor: dict[str, Callable[[], object]] = {}  # passes timed after each phase
        self.floor_terms: dict[str, int] = {}  # part → count in the floor
        self.phases: list[dict[str, float]] = []
        self._start = 0.0
        self._rss = _status_kib("VmRSS")

    def add(self, part: str, seconds: float) -> None:
        self.parts.append((self.phase, part, seconds))

    def begin(self) -> None:
        if not self.holding:
            if self.baton is not None:
                self.baton.take(self.name)
            self.holding, self._start = True, time.thread_time()
            _reset_peak()

    def end(self) -> None:
        peak = (_status_kib("VmHWM") - self._rss) / 1024
        self.phases.append({"cpu": time.thread_time() - self._start, "peak_mib": peak})
        for part, fn in self.floor.items():  # the floor's passes, right after the phase
            start = time.thread_time()
            fn()
            self.add(part, time.thread_time() - start)
        self.phase, self.holding = self.phase + 1, False
        if self.baton is not None:
            self.baton.give(self.name)

    def summary(self) -> dict[str, float]:
        """Mean CPU and parts per phase over :data:`WINDOW`; the largest peak."""
        rows = [self.phases[i] for i in WINDOW]
        out = {"cpu": statistics.fmean(r["cpu"] for r in rows),
               "peak_mib": max(r["peak_mib"] for r in rows)}
        sums: dict[str, float] = defaultdict(float)
        for phase, part, seconds in self.parts:
            if phase in WINDOW:
                sums[part] += seconds / len(rows)
        if self.floor:
            sums["floor"] = sum(n * sums[part] for part, n in self.floor_terms.items())
        return {**out, **sums}


def _timed(fn: Callable, part: str, probe: Probe | None = None) -> Callable:
    """Time ``fn`` in the calling thread's CPU, booked to ``probe`` or the thread's probe."""
    def wrapper(*args, **kwargs):
        start = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            (probe or _local.probe).add(part, time.thread_time() - start)
    return wrapper


#: (module, function, part) called by the trainer through module globals.
_GLOBALS = (("mof.train.trainer", "model_level_step", "model_step"),
            ("mof.train.trainer", "frame_level_update", "frame_step"),
            ("mof.train.phases", "meta_gradient", "meta_grad"),
            ("mof.train.phases", "frame_adam_step", "frame_adam"))


def instrument(trainer, probe: Probe) -> Callable[[], None]:
    """Wrap the trainer's own calls (instance attributes) with ``probe``'s timers.

    Returns:
        A function that removes the wrappers again.
    """
    epoch, phase = trainer.stream.epoch, trainer._phase

    def timed_epoch(*args, **kwargs):
        items = epoch(*args, **kwargs)
        while True:
            probe.begin()  # the phase starts with reading its batch
            start = time.thread_time()
            item = next(items, None)
            probe.add("data", time.thread_time() - start)
            if item is None:
                return
            yield item

    def timed_phase(*args, **kwargs):
        try:
            return phase(*args, **kwargs)
        finally:
            probe.end()

    trainer.stream.epoch, trainer._phase = timed_epoch, timed_phase
    if trainer.io is not None:
        for name in ("prefetch", "get", "write"):
            setattr(trainer.io, name, _timed(getattr(trainer.io, name), "store_wait", probe))
        # record() runs on the journal's own thread: its CPU time is background time.
        trainer.journal.record = _timed(trainer.journal.record, "journal_bg", probe)
        trainer.journal.wait = _timed(trainer.journal.wait, "journal_wait", probe)
        for name in ("read", "write"):  # these run on the store's I/O threads
            setattr(trainer.store, name, _timed(getattr(trainer.store, name), "store_bg", probe))
    # The draw of the next phase runs on the trainer's draw thread, during this phase.
    submit = trainer.drawer.submit
    trainer.drawer.submit = lambda fn, *a, **kw: submit(_timed(fn, "draw_bg", probe), *a, **kw)
    wrapped = [(trainer.stream, "epoch"), (trainer, "_phase"), (trainer.io, "prefetch"),
               (trainer.io, "get"), (trainer.io, "write"), (trainer.journal, "record"),
               (trainer.journal, "wait"), (trainer.drawer, "submit"),
               (trainer.store, "read"), (trainer.store, "write")]
    # The wrappers are instance attributes shadowing the methods: deleting them unwraps.
    return lambda: [vars(obj).pop(name, None) for obj, name in wrapped if obj is not None]


def default_mode() -> str:
    """The benchmark label of the trainer's default ``--meta-grad`` / ``--fd-scheme``."""
    from mof.train.config import TrainConfig

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    return next(label for label, pair in MODES.items()
                if pair == (defaults["meta_grad"], defaults["fd_scheme"]))


@dataclasses.dataclass(frozen=True)
class Run:
    """One configuration: ``frames`` is ``U`` (baseline) or ``R:U`` (MOF); ``mode`` a
    :data:`MODES` label."""

    frames: str
    mode: str | None = None
    every: int = 1
    variant: str | None = None  # a VARIANTS label

    @property
    def name(self) -> str:
        if self.mode is None:
            return f"baseline {self.frames}"
        return (f"MOF {self.frames} {self.mode}" + (f" every {self.every}" if self.every > 1
                                                     else "")
                + (f" {self.variant}" if self.variant else ""))


def make_trainer(run: Run, shards: str, workdir: Path, augment: str | None = None):
    from mof.train.config import TrainConfig
    from mof.train.trainer import Trainer

    out = workdir / run.name.replace(" ", "_").replace(":", "x")
    cfg = TrainConfig(model="frozen-tiny", train=shards, test=None, out=str(out),
                      frames=run.frames, meta_grad=MODES[run.mode or default_mode()][0],
                      fd_scheme=MODES[run.mode or default_mode()][1],
                      frame_step_every=run.every, epochs=1, batch_size=BATCH, lr=1e-3,
                      workers=0, shuffle_buffer=0, device="cpu", log_every=10**6,
                      **({} if augment is None else {"augment": augment}),
                      **VARIANTS.get(run.variant, {}))
    trainer = Trainer(cfg, progress_bar=False)
    trainer.setup()
    return trainer


def install_global_timers() -> Callable[[], None]:
    import importlib

    saved = [(importlib.import_module(m), name, part) for m, name, part in _GLOBALS]
    saved = [(module, name, getattr(module, name), part) for module, name, part in saved]
    for module, name, fn, part in saved:
        setattr(module, name, _timed(fn, part))
    return lambda: [setattr(module, name, fn) for module, name, fn, _ in saved]


def rotate(trainers: dict[str, object]) -> dict[str, Probe]:
    """Train every trainer's epoch, one phase at a time in turn; returns their probes."""
    baton = Baton(list(trainers))
    probes = {name: Probe(name, baton) for name in trainers}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        _local.probe = probes[name]
        try:
            trainers[name].train()
        except Exception as err:  # noqa: BLE001 (raised after the other threads finish)
            errors.append(err)
        finally:
            baton.leave(name)

    for name, trainer in trainers.items():
        if trainer.cfg.mof and trainer.cfg.frame_step_every == 1:
            terms = FLOOR[name.split()[2]]
            probes[name].floor_terms = terms
            probes[name].floor = {k: fn for k, fn in floor_passes(trainer).items() if k in terms}
    unwrap = [instrument(trainer, probes[name]) for name, trainer in trainers.items()]
    threads = [threading.Thread(target=work, args=(name,), name=name) for name in trainers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for undo in unwrap:
        undo()
    if errors:
        raise errors[0]
    return probes


def floor_passes(trainer) -> dict[str, Callable[[], object]]:
    """The passes of the floor on one batch of ``trainer``'s data, as functions of its model:
    an inner gradient on U, an outer forward-backward on R, an ε-gradient on U."""
    import torch

    from mof.bilevel_passes import inner_gradient, make_loss_fn
    from mof.loss import contrastive_loss
    from mof.train.data import draw_phase

    model, cfg = trainer.model, trainer.cfg
    draw = draw_phase(next(trainer.stream.epoch(1)), model, seed=0, num_frames=cfg.num_frames,
                      regular_frames=cfg.regular_frames, augment="none", crop_scale=1.0,
                      device=trainer.device)
    loss = make_loss_fn(model, draw.text["input_ids"], draw.text["attention_mask"],
                        lambda logits: contrastive_loss(logits, model.loss_reduction))

    def params() -> dict[str, torch.Tensor]:  # the model's current weights
        return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def eps_grad() -> None:
        eps = draw.frames_uniform.detach().requires_grad_(True)
        torch.autograd.grad(loss(params(), eps), eps)

    return {"inner_U": lambda: inner_gradient(loss, params(), draw.frames_uniform,
                                              frames_grad=False),
            "outer_R": lambda: inner_gradient(loss, params(), draw.frames_regular,
                                              frames_grad=False),
            "eps_U": eps_grad}


def measure_memory(runs: list[Run], shards: str, workdir: Path, augment: str | None = None
                   ) -> dict[str, float]:
    """Peak MiB of a phase above the set-up trainer, one configuration at a time.

    The process's first runs also grow it by one-time allocations (lazy initialisation,
    kernels, imports), so one run of each kind goes first as a warm-up and is discarded.
    """
    warmup = [next(r for r in runs if r.mode == mode) for mode in (None, *MODES)
              if any(r.mode == mode for r in runs)]
    peaks = {}
    for i, run in enumerate([*warmup, *runs]):
        trainer = make_trainer(run, shards, workdir / f"memory{i}", augment)
        try:
            probe = _local.probe = Probe(run.name)
            instrument(trainer, probe)
            trainer.cfg.max_steps = 4
            trainer.train()
            peaks[run.name] = max(p["peak_mib"] for p in probe.phases[1:])
        finally:
            trainer.cleanup()
    return peaks


def peaks_in_subprocess(shards: str, runs: list[Run], augment: str | None) -> dict[str, float]:
    """:func:`measure_memory` in a fresh process where glibc serves large blocks by ``mmap``
    (so freed tensors leave the resident set). Not in this one: ``mmap`` per allocation would
    add page faults to every timed pass."""
    first = ",".join(sorted(str(p) for p in Path(shards).glob("*.tar"))[:2])
    with tempfile.TemporaryDirectory(prefix="bench-train-mem-") as tmp:
        out = Path(tmp) / "peaks.json"
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        extra = ["--augment", augment] if augment else []
        subprocess.run([sys.executable, __file__, "--memory", first, "--json", str(out), *extra,
                        *[f"{r.frames}/{r.mode or ''}" for r in runs]], env=env, check=True)
        return json.loads(out.read_text())


def _memory_main(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    runs = [Run(frames, mode or None) for frames, _, mode in (r.partition("/") for r in args.runs)]
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        args.json.write_text(json.dumps(measure_memory(runs, args.memory, Path(tmp),
                                                       args.augment)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) /
                        "mof-bench-train", help="directory of the generated shards (reused)")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--augment", choices=("none", "crop", "crop-flip"),
                        help="train-time augmentation [default: the trainer's]")
    parser.add_argument("--variants", action="store_true",
                        help="measure the variants beside MOF 8:4 (see the module doc)")
    parser.add_argument("--memory", help=argparse.SUPPRESS)  # internal: the memory pass
    parser.add_argument("runs", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:
        return _memory_main(args)
    import torch

    torch.set_num_threads(1)
    default = default_mode()
    videos = BATCH * (WINDOW.stop + 1)
    shards = make_shards(args.cache, videos, max(r for r, _ in PAIRS))
    if args.variants:
        runs = [Run("4"), Run("8"), Run("8:4", default)]
        runs += [Run("8:4", default, variant=v) for v in VARIANTS]
    else:
        runs = [Run(str(n)) for n in sorted({n for pair in PAIRS for n in pair})]
        runs += [Run(f"{r}:{u}", mode) for r, u in PAIRS for mode in MODES]
        runs += [Run(f"{r}:{u}", default, k) for r, u in PAPER for k in EVERY]
    restore = install_global_timers()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
            trainers = {run.name: make_trainer(run, shards, Path(tmp), args.augment)
                        for run in runs}
            try:
                results = {name: probe.summary() for name, probe in rotate(trainers).items()}
            finally:
                for trainer in trainers.values():
                    trainer.cleanup()
    finally:
        restore()
    if args.variants:
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"frozen-tiny, batch {BATCH}, 64 px, 1 CPU thread, torch {torch.__version__}; "
              f"mean CPU ms over phases {WINDOW.start}-{WINDOW.stop - 1}; mode: {default}\n")
        print("\n".join(variant_table(results, f"MOF 8:4 {default}")))
        return None
    every1 = [r for r in runs if r.every == 1]
    for name, peak in peaks_in_subprocess(shards, every1, args.augment).items():
        results[name]["peak_mib"] = peak
    if args.json:  # first, so that the numbers survive a failing report
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"frozen-tiny, batch {BATCH}, 64 px, 1 CPU thread, torch {torch.__version__}; mean "
          f"CPU ms over phases {WINDOW.start}-{WINDOW.stop - 1}; default mode: {default}; "
          f"augment: {args.augment or 'default'}\n")
    print("\n".join(report(results)))
    print("\nFrame step every k-th batch: MOF over a baseline on R frames:\n")
    print("\n".join(schedule_table(results, default)))


if __name__ == "__main__":
    main()

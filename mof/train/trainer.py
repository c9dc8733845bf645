"""The training recipe: ``setup / train / evaluate / save_checkpoint / cleanup``.

The trainer only sequences: data draws (:mod:`mof.train.data`), the model-level and the
frame-level step (:mod:`mof.train.phases`), store I/O (``pipeline.framestore.store``), the undo
journal, checkpoints and the run's position (:mod:`mof.train.checkpoint`), evaluation
(:mod:`mof.train.evaluation`) and logging and the summary (:mod:`mof.train.run_log`). One
*stage* is a pass over the epoch's batches: ``model`` (model-level steps, plus frame-level steps
under the ``phase`` schedule) or ``frames`` (the second pass of the ``epoch`` schedule).
"""

from __future__ import annotations

import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mof.bilevel import adamw_preconditioner
from mof.models.io import save_model
from mof.train import distributed as dist_utils
from mof.train.checkpoint import (
    Progress,
    RowJournal,
    commit_checkpoint,
    find_checkpoint,
    load_trainer_state,
    rng_state,
    save_trainer_state,
    set_rng_state,
)
from mof.train.config import TrainConfig, save_train_config
from mof.train.data import PhaseDraw, RawBatch, TrainStream, draw_and_crop, phase_seed
from mof.train.epoch_schedule import frame_lr_at, runs_frame_step
from mof.train.evaluation import evaluate_and_rank
from mof.train.model_setup import (
    build_model,
    build_optimizer,
)
from mof.train.phases import (
    FrameState,
    GlobalContrastive,
    SharedPass,
    check_fd_step,
    frame_level_update,
    model_level_step,
)
from mof.train.run_log import RunLog, format_summary, run_summary
from mof.train.store_setup import (
    check_store_resolution,
    init_store_rows,
    open_frame_store,
    scan_train_shards,
)
from pipeline.framestore.format import FrameRows
from pipeline.framestore.io import AsyncFrameIO, PendingRead
from pipeline.sharding.samples import resolve_shards

__all__ = ["Trainer"]


class Trainer:
    """Baseline or MOF training of one retrieval model (see ``docs/training.md``)."""

    def __init__(self, config: TrainConfig, progress_bar: bool = True):
        self.cfg = config
        self.out = Path(config.out)
        self.progress_bar = progress_bar
        self.progress = Progress()
        self.store = self.io = self.journal = None
        #: draws the next phase (captions, regular frames, crops) while this one computes
        self.drawer = ThreadPoolExecutor(1, thread_name_prefix="phase-draw")
        self.log: RunLog | None = None
        self.last_metrics: dict[str, float] = {}

    # -- setup ------------------------------------------------------------------------------

    def setup(self) -> None:
        """Join the process group, scan the shards, build model, optimiser, store; resume."""
        cfg = self.cfg
        self.dist = dist_utils.init_distributed(cfg.device)
        self.device, world = self.dist.device, self.dist.world_size
        if cfg.batch_size % world:
            raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by {world} ranks")
        self.amp = cfg.amp and self.device.type == "cuda"
        resumed = find_checkpoint(self.out / "checkpoints") if cfg.resume else None
        if not cfg.resume and (self.out / "config.yaml").exists():
            raise FileExistsError(f"{self.out} already holds a run: pass --resume {self.out} "
                                  "to continue it, or choose another --out")
        self.shards = resolve_shards(cfg.train.split(",") if "," in cfg.train else cfg.train)
        self.index = scan_train_shards(self.shards, self.dist, cfg.workers, self.progress_bar)
        if cfg.mof and cfg.regular_frames > self.index.stored_frames:
            raise ValueError(f"--frames {cfg.frames}: R = {cfg.regular_frames} but the shards "
                             f"store {self.index.stored_frames} frames per video")
        self.model = build_model(cfg.model, cfg.model_args, self.index.captions, cfg.seed,
                                 resumed, cfg.init_from).to(self.device)
        most = max(cfg.num_frames, cfg.regular_frames or 0)
        if most > self.model.contract.max_frames:
            raise ValueError(f"--frames {cfg.frames}: {cfg.model} takes at most "
                             f"{self.model.contract.max_frames} frames per video")
        if cfg.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.model.set_attention("fused")
        self.step_module = GlobalContrastive(self.model, self.dist.rank, world)
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_module = DistributedDataParallel(self.step_module, device_ids=ids)
        self.steps_per_epoch = min(self.index.rank_samples) // (cfg.batch_size // world)
        total = cfg.epochs * self.steps_per_epoch
        self.optimizer, self.scheduler = build_optimizer(
            self.model, lr=cfg.lr, weight_decay=cfg.weight_decay, schedule=cfg.lr_schedule,
            warmup_steps=cfg.warmup_steps,
            total_steps=min(total, cfg.max_steps) if cfg.max_steps else total)
        self.stream = TrainStream(self.shards, batch_size=cfg.batch_size // world, seed=cfg.seed,
                                  rank=self.dist.rank, world_size=world, workers=cfg.workers,
                                  shuffle=cfg.shuffle_buffer)
        if resumed is not None:
            state = load_trainer_state(resumed)
            self.progress = Progress(**state["progress"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
        if cfg.mof:
            self._setup_store()
        if self.dist.is_main:
            save_train_config(cfg, self.out / "config.yaml")
        self.log = RunLog(self.out, self.dist.is_main,
                          resume_step=self.progress.step if cfg.resume else None)
        dist_utils.barrier()

    def _setup_store(self) -> None:
        cfg, dist = self.cfg, self.dist
        self.store = open_frame_store(
            self.out / "mof.zarr", self.index, self.model.contract, num_frames=cfg.num_frames,
            regular_frames=cfg.regular_frames, shards=self.shards, dtype=cfg.store_dtype,
            dist=dist, frame_param=cfg.frame_param)
        mix = (cfg.regular_frames, cfg.mix_init_logit) if cfg.frame_param == "mix" else None
        init_store_rows(self.store, self.shards, self.model.contract, num_frames=cfg.num_frames,
                        dist=dist, workers=cfg.workers, progress=self.progress_bar, mix=mix)
        if cfg.store_dtype != "float32":
            check_store_resolution(self.store, cfg.frame_lr, cfg.store_dtype)
        self.journal = RowJournal(self.out / "journal", dist.rank)
        generation = self.progress.phase
        if dist.is_main:  # put back the rows written after the checkpoint being resumed
            for rows, arrays in self.journal.pending(generation):
                self.store.write(rows, FrameRows(**arrays))
            self.journal.drop_except(None)
            self.store.set_last_phase(generation)
        dist_utils.barrier()
        self.journal.start(generation)
        self.io = AsyncFrameIO(self.store)

    # -- training ---------------------------------------------------------------------------

    def train(self) -> dict[str, Any]:
        """Run the remaining epochs; returns the summary printed at the end."""
        cfg, p = self.cfg, self.progress
        started = time.time()
        while p.epoch < cfg.epochs and not self._out_of_steps():
            if p.stage == "model" and not self._run_stage("model"):
                break  # --max-steps reached inside the epoch
            if cfg.mof and cfg.frame_schedule == "epoch":
                if p.stage == "model":
                    p.stage, p.batch = "frames", 0
                self._run_stage("frames")
                p.frame_epochs += 1
            self._end_epoch()
        if cfg.test and p.evaluated_step != p.step:  # stopped by --max-steps
            self.log.add_row({"epoch": p.epoch + 1, "step": p.step, **self.evaluate()})
            self.save_checkpoint()
        return self._summary(time.time() - started)

    def _out_of_steps(self) -> bool:
        return self.cfg.max_steps is not None and self.progress.step >= self.cfg.max_steps

    def _end_epoch(self) -> None:
        cfg, p = self.cfg, self.progress
        row = {"epoch": p.epoch + 1, "step": p.step,
               "train_loss": p.loss_sum / max(p.loss_count, 1)}
        if p.frame_count:
            row["frame_outer_loss"] = p.frame_loss_sum / p.frame_count
        p.epoch, p.stage, p.batch = p.epoch + 1, "model", 0
        p.loss_sum = p.frame_loss_sum = 0.0
        p.loss_count = p.frame_count = 0
        self.log.scalars({f"epoch/{k}": v for k, v in row.items() if k != "step"}, p.step)
        if cfg.test and (p.epoch % cfg.eval_every == 0 or p.epoch == cfg.epochs):
            row.update(self.evaluate())
        if cfg.test is None or p.evaluated_step == p.step:
            self.log.add_row(row)  # one row per evaluation (per epoch without --test)
        self.save_checkpoint()

    def _batches(self, stage: str = "model"):
        """This stage's remaining batches, each with its store rows and its draw, both
        prepared in the background one batch ahead."""
        p = self.progress
        it = self.stream.epoch(p.epoch, skip=p.batch)
        batch = next(it, None)
        index, step, steps = p.batch, p.step, int(stage == "model")
        pending = self._prefetch(stage, batch, step)
        draw = self._draw_ahead(stage, batch, index, step) if batch is not None else None
        while dist_utils.all_reduce_min(int(batch is not None)):
            upcoming = next(it, None)
            state = self.io.get(pending) if pending is not None else None
            pending = self._prefetch(stage, upcoming, step + steps)
            following = (self._draw_ahead(stage, upcoming, index + 1, step + steps)
                         if upcoming is not None else None)
            yield batch, state, draw
            batch, draw, index, step = upcoming, following, index + 1, step + steps

    def _draw_ahead(self, stage: str, batch: RawBatch, index: int, step: int
                    ) -> Future[PhaseDraw]:
        """Start the draw of batch ``index`` of ``stage`` (model-level step ``step``): a pure
        function of the batch and ``(seed, epoch, index, rank)``, so it may run early."""
        cfg = self.cfg
        regular = stage == "frames" or runs_frame_step(cfg, step)
        return self.drawer.submit(
            draw_and_crop, batch, self.model, num_frames=cfg.num_frames,
            seed=phase_seed(cfg.seed, self.progress.epoch, index, self.dist.rank,
                            stream=int(stage == "frames")),
            regular_frames=cfg.regular_frames if regular else None, augment=cfg.augment,
            crop_scale=cfg.crop_scale, device=self.device, need_uniform=not cfg.mof,
            anchor_frames=cfg.regular_frames if regular and cfg.frame_param == "mix" else None)

    def _prefetch(self, stage: str, batch: RawBatch | None, step: int) -> PendingRead | None:
        """Start reading the store rows of a batch: all of them for a frame-level step, the
        frames alone for a phase that only trains the model on them (it writes nothing)."""
        if self.io is None or batch is None:
            return None
        frame_step = stage == "frames" or runs_frame_step(self.cfg, step)
        return self.io.prefetch(self._rows(batch), None if frame_step else ("frames",))

    def _rows(self, batch: RawBatch) -> np.ndarray:
        return self.store.row_of(batch.keys)

    def _run_stage(self, stage: str) -> bool:
        """One pass of ``stage``; ``False`` when ``--max-steps`` stopped it early."""
        cfg, p = self.cfg, self.progress
        desc = f"epoch {p.epoch + 1}/{cfg.epochs}" + (" frames" if stage == "frames" else "")
        bar = tqdm(desc=desc, unit="batch", initial=p.batch, dynamic_ncols=True,
                   total=self.steps_per_epoch,
                   disable=not (self.progress_bar and self.dist.is_main))
        tick = time.time()
        for batch, state, draw in self._batches(stage):
            if stage == "model":
                postfix = self._phase(batch, state, draw)
                p.step += 1
            else:
                postfix = self._frame_batch(batch, state, draw)
            p.batch += 1
            p.phase += 1
            now = time.time()
            postfix["videos/s"] = len(batch.keys) * self.dist.world_size / max(now - tick, 1e-9)
            tick = now
            bar.set_postfix({k: f"{v:.3g}" for k, v in postfix.items()})
            bar.update()
            if p.step % cfg.log_every == 0 and stage == "model":
                self.log.scalars({f"train/{k}": v for k, v in postfix.items()}, p.step)
            if cfg.checkpoint_every and p.phase % cfg.checkpoint_every == 0:
                self.save_checkpoint()
            if stage == "model" and self._out_of_steps():
                bar.close()
                self.save_checkpoint()
                return False
        bar.close()
        return True

    def _phase(self, batch: RawBatch, state: FrameRows | None, draw: Future[PhaseDraw]
               ) -> dict[str, float]:
        """One phase: model-level step, then (MOF, phase schedule) the frame-level step.

        Without a frame-level step ``state`` holds the frames alone and nothing is written."""
        cfg, p = self.cfg, self.progress
        frame_step = runs_frame_step(cfg, p.step)
        if frame_step:
            self._journal(batch, state)
        draw = draw.result()
        frames = (torch.from_numpy(state.frames).to(self.device) if cfg.mof
                  else draw.frames_uniform)
        keep = None
        if frame_step and cfg.meta_grad == "finite-diff" and cfg.fd_scheme == "forward":
            # The pass's own gradients serve only a single process in fp32 (SharedPass).
            keep = "grads" if self.dist.world_size == 1 and not self.amp else "params"
        self.model.train()
        loss, shared = model_level_step(
            self.step_module, self.model, self.optimizer, frames, draw.text, draw.augment,
            seed=draw.torch_seed, amp=self.amp, keep=keep)
        self.scheduler.step()
        p.loss_sum, p.loss_count = p.loss_sum + loss, p.loss_count + 1
        stats = {"loss": loss}
        if frame_step:
            stats.update(self._frame_update(batch, state, draw, lr=cfg.frame_lr, shared=shared))
        return stats

    def _frame_batch(self, batch: RawBatch, state: FrameRows, draw: Future[PhaseDraw]
                     ) -> dict[str, float]:
        """A batch of the ``frames`` stage (epoch schedule): Θ fixed, eval mode, α = 1."""
        cfg, p = self.cfg, self.progress
        self._journal(batch, state)
        self.model.eval()
        return self._frame_update(batch, state, draw.result(),
                                  lr=frame_lr_at(cfg, p.frame_epochs))

    def _check_fd_step(self, current: FrameState, draw: PhaseDraw, precond) -> float:
        """Check ``--fd-step`` against the exact meta-gradient on rank 0's first frame batch
        (warning, and choosing another step, when it falls short); every rank uses the result."""
        cfg = self.cfg
        chosen = cfg.fd_step
        if self.dist.is_main:
            self.model.set_attention("math")
            try:
                check = check_fd_step(self.model, current, draw.frames_regular, draw.text,
                                      draw.augment, alpha=cfg.alpha, fd_step=cfg.fd_step,
                                      fd_scheme=cfg.fd_scheme, seed=draw.torch_seed,
                                      regular_augmented=draw.regular_augmented,
                                      precond=precond)
                chosen = check.chosen
                if check.message:
                    warnings.warn(check.message, RuntimeWarning, stacklevel=2)
            except (RuntimeError, torch.OutOfMemoryError) as err:
                warnings.warn(f"--fd-step {cfg.fd_step:g} could not be checked against the "
                              f"exact meta-gradient ({str(err).splitlines()[0]}); pass "
                              "--no-fd-check to skip the check", RuntimeWarning, stacklevel=2)
            finally:
                self.model.set_attention("fused")
        return float(dist_utils.broadcast_object(chosen))

    def _journal(self, batch: RawBatch, state: FrameRows) -> None:
        """Start saving the pre-images of the batch's rows; it overlaps the phase's compute
        and is joined in :meth:`_frame_update` before the rows are written back."""
        self.journal.record_in_background(self.progress.phase, self._rows(batch), {
            n: getattr(state, n) for n in self.store.fields})

    def _frame_update(self, batch: RawBatch, state: FrameRows, draw: PhaseDraw, lr: float,
                      shared: SharedPass | None = None) -> dict[str, float]:
        cfg, p = self.cfg, self.progress
        dev = self.device
        fields = self.store.fields
        current = FrameState(**{n: torch.from_numpy(getattr(state, n)).to(dev) for n in fields})
        precond = None
        if cfg.inner_step == "adamw":  # read after the model-level step: its next update's P
            precond = adamw_preconditioner(self.optimizer, dict(self.model.named_parameters()))
        if cfg.meta_grad == "finite-diff" and cfg.fd_check and p.fd_step is None:
            p.fd_step = self._check_fd_step(current, draw, precond)
        if cfg.meta_grad == "exact":
            self.model.set_attention("math")  # fused kernels have no double backward
        first = None
        try:
            for _ in range(cfg.frame_steps):  # Θ fixed; each step from the frames just made
                current, stats = frame_level_update(
                    self.model, current, draw.frames_regular, draw.text, draw.augment,
                    alpha=cfg.alpha, mode=cfg.meta_grad, fd_step=p.fd_step or cfg.fd_step,
                    fd_scheme=cfg.fd_scheme, shared=shared,
                    regular_augmented=draw.regular_augmented, lr=lr,
                    betas=cfg.resolved_frame_betas, seed=draw.torch_seed, amp=self.amp,
                    grad_scale=cfg.frame_grad_scale, precond=precond,
                    anchors=draw.frames_anchor, mix_lr=cfg.mix_lr)
                first = first or stats
                if shared is not None:  # its ε-gradient was of the first step's frames
                    shared = SharedPass(shared.params, None)
        finally:
            self.model.set_attention("fused")
        self.journal.wait()  # the pre-images are durable before any row is overwritten
        self.io.write(self._rows(batch), FrameRows(
            **{n: getattr(current, n).detach().cpu().numpy() for n in fields}))
        p.frame_loss_sum, p.frame_count = p.frame_loss_sum + first["outer_loss"], p.frame_count + 1
        out = {"frame_loss": first["outer_loss"], "meta_grad": first["meta_grad_norm"]}
        if cfg.frame_steps > 1:
            out["frame_loss_last"] = stats["outer_loss"]
        return out

    # -- evaluation and checkpoints ----------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Evaluate on ``--test`` (rank 0; U uniform frames); updates the best metric."""
        cfg, p = self.cfg, self.progress
        metrics: dict[str, float] = {}
        if self.dist.is_main:
            metrics = evaluate_and_rank(self.model, cfg, p, self.out, self.progress_bar)
        p.evaluated_step = p.step
        self.last_metrics = dist_utils.broadcast_object(metrics)
        dist_utils.barrier()
        return {k: v for k, v in self.last_metrics.items() if k != "is_best"}

    def save_checkpoint(self) -> None:
        """Flush the store, write ``checkpoints/last`` (and ``best``), start a new journal."""
        p = self.progress
        if self.io is not None:
            self.io.flush()
        dist_utils.barrier()
        if self.dist.is_main:
            if self.store is not None:
                self.store.set_last_phase(p.phase)
            root = self.out / "checkpoints"
            if self.last_metrics.get("is_best") and p.evaluated_step == p.step:
                commit_checkpoint(root, "best", self._write_checkpoint)
            commit_checkpoint(root, "last", self._write_checkpoint)
        dist_utils.barrier()
        if self.journal is not None:
            self.journal.start(p.phase)
            if self.dist.is_main:
                self.journal.drop_except(p.phase)
        dist_utils.barrier()

    def _write_checkpoint(self, directory: Path) -> None:
        save_model(self.model, directory)
        save_trainer_state(directory, {"progress": asdict(self.progress),
                                       "optimizer": self.optimizer.state_dict(),
                                       "scheduler": self.scheduler.state_dict(),
                                       "rng": rng_state(), "config": self.cfg.to_dict()})

    def _summary(self, seconds: float) -> dict[str, Any]:
        summary = run_summary(self.out, self.cfg, self.progress, self.last_metrics, seconds)
        if self.dist.is_main and self.progress_bar:
            print("training finished\n" + format_summary(summary), flush=True)
        return summary

    def cleanup(self) -> None:
        """Stop the store's I/O threads, close logs, leave the process group."""
        self.drawer.shutdown(wait=True)
        if self.journal is not None:
            self.journal.close()
        if self.io is not None:
            self.io.close()
        if self.log is not None:
            self.log.close()
        dist_utils.cleanup_distributed()

"""Why MOF does (not) beat its equal-cost baseline: measurements on the finished cells.

* :func:`frame_drift`: how far the learned frames ε of a MOF run moved from their start (the
  U uniform frames), against the bound β × (Adam steps per video) of sign-like Adam steps.
* :func:`mix_drift`: for a ``mix`` run, how far the mixing weights moved from their peaked start
  (did the learned frames come to draw on other regular frames than the uniform ones?).
* :func:`meta_gradient_probe`: on the trained model and real batches, the exact meta-gradient's
  per-element size (against Adam's ε = 1e-8), and the outer objective
  f(ε) = L_c(Θ − α∇_Θ L_c(Θ; ε); V^R) after one Adam-like step of ε down and up the
  meta-gradient for several β (does the step go downhill, and by how much?); and how much the
  learned frames change the model-level gradient compared with the uniform frames; and the
  size of the inner SGD step α‖∇Θ‖ against that of an AdamW step of the model, lr·sqrt(P).
  Measured against the right yardstick: the *gap* between the inner step taken on ε and the
  same step taken on the R regular frames themselves (what MOF tries to close), the share of it
  one frame step of the run's β closes, and the alignment (cosine) of the model gradient on ε
  with the one on V^R, for the uniform start, the learned frames and after that frame step.
* :func:`training_fit`: retrieval on the run's own training videos with the uniform frames and,
  for a MOF run, with its learned frames (did the model adapt to the frames it trained on, or
  does it fit the videos less well?).
* :func:`more_frames_at_training`: baselines trained on more frames, tested on fewer, against
  the baseline trained on those fewer (does the task reward seeing more frames in training?).

``mof-cli reproduce table4 --diagnose`` writes them all to ``RESULTS/table4_diagnosis.md``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from mof.frame_mix import initial_mix_logits
from mof.reproduce.config import Table4Config
from mof.reproduce.grid import Cell, equal_cost_baseline
from mof.reproduce.paths import cell_dir

__all__ = ["collapsed_runs", "diagnose", "frame_drift", "meta_gradient_probe", "mix_drift",
           "more_frames_at_training", "training_fit"]

_BETAS = (8e-4, 1e-2, 5e-2)


def _run_config(run: Path) -> dict[str, Any]:
    return yaml.safe_load((run / "config.yaml").read_text())


def _initial_frames(run: Path, keys: set[str] | None = None):
    """``key -> (ε0 (U, 3, H, W), stored uint8 frames)`` from the run's train shards."""
    from mof.frames import to_model_input
    from mof.models.io import load_model
    from pipeline.sampling import uniform_subset
    from pipeline.sharding.reader import ShardDataset

    cfg = _run_config(run)
    contract = load_model(run / "checkpoints" / "last").contract
    used = int(str(cfg["frames"]).split(":")[-1])
    for sample in ShardDataset(cfg["train"], shuffle=0, rank=0, world_size=1):
        if keys is not None and sample["key"] not in keys:
            continue
        stored = sample["frames"]
        yield sample, to_model_input(stored, contract, uniform_subset(len(stored), used))


def frame_drift(run: Path) -> dict[str, float]:
    """How far ε moved: mean/max |ε − ε0| in normalised units and in 8-bit pixel levels."""
    from pipeline.framestore.store import FrameStore

    store = FrameStore.open(run / "mof.zarr")
    std = torch.tensor(store.attrs.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1)
    total = peak = levels = 0.0
    count, steps = 0, []
    for sample, start in _initial_frames(run):
        row = store.read(store.row_of([sample["key"]]), fields=("frames", "step"))
        delta = torch.from_numpy(row.frames[0]) - start
        total += float(delta.abs().sum())
        levels += float((delta.abs() * std * 255).sum())
        peak = max(peak, float(delta.abs().max()))
        count += delta.numel()
        steps.append(int(row.step[0]))
    beta = float(_run_config(run)["frame_lr"])
    return {"mean_abs": total / count, "max_abs": peak, "mean_levels": levels / count,
            "steps_per_video": float(np.mean(steps)), "beta": beta,
            "bound": beta * max(steps)}


def mix_drift(run: Path) -> dict[str, float] | None:
    """A ``mix`` run's mixing weights w = softmax(z) ``(N, U, R)`` against their start w0.

    Returns ``None`` for a ``pixels`` run, else: ``tv``, the mean and ``tv_max`` the largest
    total-variation distance ½‖w − w0‖₁ of a learned frame (0: the same mix, 1: all its weight
    on other regular frames); ``argmax_moved``, the share of learned frames whose heaviest regular
    frame is no longer the one they started at; ``start_weight`` and ``end_weight``, the mean
    weight of that starting frame before and after training.
    """
    from mof.train.data import anchor_positions
    from pipeline.framestore.store import FrameStore
    from pipeline.sampling import uniform_subset
    from pipeline.sharding.reader import ShardDataset

    cfg = _run_config(run)
    if cfg.get("frame_param", "pixels") != "mix":
        return None
    store = FrameStore.open(run / "mof.zarr")
    rows = np.arange(store.num_videos)
    # In slices: a read always brings the frames along (≈0.2 MB a video at 4 × 64 px).
    logits = np.concatenate([store.read(part, fields=("frames", "mix_logits")).mix_logits
                             for part in np.array_split(rows, max(1, len(rows) // 256))])
    used, regular = logits.shape[1:]
    # Every video of a shard set stores the same number of frames.
    stored = len(next(iter(ShardDataset(cfg["train"], shuffle=0, rank=0, world_size=1)))["frames"])
    start = initial_mix_logits(uniform_subset(stored, used), anchor_positions(stored, regular),
                               float(cfg["mix_init_logit"]))
    w = torch.softmax(torch.from_numpy(logits).double(), -1).numpy()
    w0 = torch.softmax(torch.from_numpy(start).double(), -1).numpy()[None]
    tv = 0.5 * np.abs(w - w0).sum(-1)
    first = np.broadcast_to(w0.argmax(-1), w.shape[:2])
    at_first = np.take_along_axis(w, first[..., None], -1)[..., 0]
    return {"tv": float(tv.mean()), "tv_max": float(tv.max()),
            "argmax_moved": float((w.argmax(-1) != first).mean()),
            "start_weight": float(w0.max()), "end_weight": float(at_first.mean())}


def _batch(run: Path, size: int, device: torch.device):
    """The first ``size`` training videos: captions, ε, ε0 and R regular frames (midpoints)."""
    from pipeline.framestore.store import FrameStore
    from pipeline.sampling import uniform_subset

    cfg = _run_config(run)
    regular = int(str(cfg["frames"]).split(":")[0])
    store = FrameStore.open(run / "mof.zarr")
    samples, starts = [], []
    for sample, start in _initial_frames(run):
        samples.append(sample)
        starts.append(start)
        if len(samples) == size:
            break
    rows = store.row_of([s["key"] for s in samples])
    learned = torch.from_numpy(store.read(rows, fields=("frames",)).frames)
    stored = len(samples[0]["frames"])
    contract_frames = np.stack([s["frames"][uniform_subset(stored, regular)] for s in samples])
    return ([s["meta"]["captions"][0] for s in samples], learned.to(device),
            torch.stack(starts).to(device), contract_frames)


def meta_gradient_probe(run: Path, batch_size: int = 16) -> dict[str, Any]:
    """The meta-gradient on the trained model and the first ``batch_size`` training videos."""
    from mof.bilevel import meta_gradient
    from mof.bilevel_passes import inner_gradient, make_loss_fn, sgd_step
    from mof.frames import to_model_input
    from mof.loss import contrastive_loss
    from mof.models.io import load_model

    cfg = _run_config(run)
    # float64: one small step changes the loss by ~1e-6, below float32's resolution at ~4
    model = load_model(run / "checkpoints" / "last").double()
    model.set_attention("math")  # double backward
    device = torch.device("cpu")
    captions, learned, start, regular_u8 = _batch(run, batch_size, device)
    learned, start = learned.double(), start.double()
    frames_r = to_model_input(regular_u8, model.contract).double()
    text = model.tokenize(captions)
    loss_fn = make_loss_fn(model, text["input_ids"], text["attention_mask"],
                           lambda logits: contrastive_loss(logits, model.loss_reduction))
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    alpha = float(cfg["inner_lr"] or cfg["lr"])

    def outer(eps: torch.Tensor) -> float:
        inner = inner_gradient(loss_fn, params, eps, frames_grad=False)
        with torch.no_grad():
            return float(loss_fn(sgd_step(params, inner.params, alpha), frames_r))

    result = meta_gradient(loss_fn, params, learned, frames_r, alpha, mode="exact")
    # What the frames' Adam sees: the meta-gradient divided by α unless the run stepped raw.
    g = result.grad / (alpha if cfg.get("frame_grad_scale", "raw") == "alpha" else 1.0)
    adam_first = g / (g.abs() + 1e-8)  # Adam's first step direction, eps included
    base = outer(learned)
    steps = {beta: (outer(learned - beta * adam_first) - base,
                    outer(learned + beta * adam_first) - base) for beta in _BETAS}
    beta_run = float(cfg["frame_lr"])
    stepped = learned - beta_run * adam_first
    grads = {name: inner_gradient(loss_fn, params, x, frames_grad=False).params
             for name, x in (("start", start), ("learned", learned), ("stepped", stepped),
                             ("regular", frames_r))}
    norms = {name: _norm(gr.values()) for name, gr in grads.items()}
    diff = _norm(grads["learned"][k] - grads["start"][k] for k in params)
    with torch.no_grad():
        loss_r = float(loss_fn(params, frames_r))
        ideal = float(loss_fn(sgd_step(params, grads["regular"], alpha), frames_r))
    # An AdamW step moves each parameter by about lr: a step of norm lr·sqrt(P).
    adamw = float(cfg["lr"]) * sum(p.numel() for p in params.values()) ** 0.5
    return {"alpha": alpha, "outer_loss": base, "rms": float(g.pow(2).mean().sqrt()),
            "inner_step_norm": alpha * norms["learned"], "adamw_step_norm": adamw,
            "max": float(g.abs().max()), "below_eps": float((g.abs() < 1e-8).float().mean()),
            "adam_step_fraction": float(adam_first.abs().mean()), "steps": steps,
            "model_grad_change": diff / max(norms["start"], 1e-30),
            # gain(x) ≈ α ∇L(x)·∇L(V^R): the norm of the model gradient on the frames, against
            # that on the uniform frames they started from, says how much of a gain is scale.
            "grad_norm_ratio": norms["learned"] / max(norms["start"], 1e-30),
            "beta": beta_run, "gain_learned": loss_r - base, "gain_regular": loss_r - ideal,
            # No gap to close when the inner step on ε already lowers the R-frame loss as much
            # as one on the R frames themselves.
            "gap_closed": (base - outer(stepped)) / (base - ideal) if base > ideal else None,
            "alignment": {name: _cosine(grads[name], grads["regular"])
                          for name in ("start", "learned", "stepped")}}


def _share(closed: float | None) -> str:
    return "no gap" if closed is None else f"{closed:.1%}"


def _norm(tensors) -> float:
    return sum(float(t.pow(2).sum()) for t in tensors) ** 0.5


def _cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    dot = sum(float((a[k] * b[k]).sum()) for k in a)
    return dot / max(_norm(a.values()) * _norm(b.values()), 1e-30)


def training_fit(run: Path, videos: int = 500) -> dict[str, Any]:
    """Text-to-video retrieval among the run's first ``videos`` training videos.

    One query per video (its first caption). The videos are encoded from their U uniform frames
    (ε0, what a test video looks like) and, for a MOF run, from their learned frames ε.

    Returns:
        ``{"videos": N, "uniform": t2v metrics, "learned": t2v metrics or None}``.
    """
    from mof.metrics import count_ranks, summarize
    from mof.models.io import load_model
    from pipeline.framestore.store import FrameStore

    model = load_model(run / "checkpoints" / "last").eval()
    store = FrameStore.open(run / "mof.zarr") if (run / "mof.zarr").is_dir() else None
    uniform, learned, captions = [], [], []
    for sample, start in _initial_frames(run):
        if len(captions) == videos:
            break
        uniform.append(start)
        captions.append(sample["meta"]["captions"][0])
        if store is not None:
            row = store.read(store.row_of([sample["key"]]), fields=("frames",))
            learned.append(torch.from_numpy(row.frames[0]).float())

    def t2v(frames: list[torch.Tensor]) -> dict[str, float]:
        video = torch.cat([model.encode_video(torch.stack(frames[i : i + 32]))
                           for i in range(0, len(frames), 32)])
        ranks = count_ranks(model.similarity(text, video).float(), torch.arange(len(frames)))
        return summarize(ranks, "pessimistic")["t2v"]

    with torch.inference_mode():
        tokens = model.tokenize(captions)
        text = model.encode_text(tokens["input_ids"], tokens["attention_mask"])
        return {"videos": len(captions), "uniform": t2v(uniform),
                "learned": t2v(learned) if learned else None}


def more_frames_at_training(cfg: Table4Config, shards: str) -> list[dict[str, Any]]:
    """Each baseline trained on R frames tested on every smaller U of the grid's baselines."""
    from mof.evaluate.evaluate import EvalConfig, evaluate

    baselines = sorted(c.used for c in cfg.cells if not c.is_mof)
    rows = []
    for trained in baselines:
        for tested in (u for u in baselines if u < trained):
            for seed in cfg.seed_list():
                where, own = cell_dir(cfg, Cell(trained), seed), cell_dir(cfg, Cell(tested), seed)
                if not ((where / "cell.json").is_file() and (own / "cell.json").is_file()):
                    continue
                out = where / f"eval_at_{tested}"
                report = evaluate(EvalConfig(shards=shards, checkpoint=str(where / "run" /
                                  "checkpoints" / cfg.select), out=str(out), frames=tested,
                                  device="cpu", progress=False))
                reference = json.loads((own / "metrics.json").read_text())
                rows.append({"trained": trained, "tested": tested, "seed": seed,
                             "r1": report["metrics"]["t2v"]["R@1"],
                             "r1_own": reference["metrics"]["t2v"]["R@1"]})
    return rows


def collapsed_runs(cfg: Table4Config) -> list[dict[str, Any]]:
    """Final training loss of every finished run against 2·ln(B), the loss of a model whose
    embeddings are all alike (the state a randomly initialised model starts in)."""
    rows = []
    chance = 2 * math.log(cfg.batch_size)
    for cell in cfg.cells:
        for seed in cfg.seed_list():
            where = cell_dir(cfg, cell, seed)
            if not (where / "cell.json").is_file():
                continue
            with open(where / "run" / "metrics.csv", newline="") as fh:
                last = list(csv.DictReader(fh))[-1]
            r1 = json.loads((where / "metrics.json").read_text())["metrics"]["t2v"]["R@1"]
            loss = float(last["train_loss"])
            rows.append({"cell": cell, "seed": seed, "loss": loss, "r1": r1,
                         "collapsed": loss > chance - 0.05})
    return rows


def _fit(metrics: dict[str, float] | None) -> str:
    if metrics is None:
        return "–"
    return f"{metrics['R@1']:.1f} / {metrics['R@10']:.1f} / {metrics['MedR']:g}"


def diagnose(cfg: Table4Config, shards_test: str) -> str:
    """Every measurement above on the finished cells of ``cfg``, as markdown."""
    title = ("## Runs that never left the collapsed start (last-epoch training loss within "
             f"0.05 of 2·ln(B) = {2 * math.log(cfg.batch_size):.3f})")
    lines = ["# Table IV diagnosis", "", title, "",
             "| cell | " + " | ".join(f"seed {s}" for s in cfg.seed_list()) + " |",
             "|---|" + "---|" * cfg.seeds]
    runs = collapsed_runs(cfg)
    for cell in cfg.cells:
        mine = {r["seed"]: r for r in runs if r["cell"] == cell}
        cells = [(f"{'**collapsed** ' if mine[s]['collapsed'] else ''}loss {mine[s]['loss']:.3f}"
                  f", R@1 {mine[s]['r1']:.2f}") if s in mine else "–" for s in cfg.seed_list()]
        lines.append(f"| {cell.label} | " + " | ".join(cells) + " |")
    lines.append("")
    header = ("| cell | seed | Adam steps/video | β | bound β·steps | mean abs Δ | max abs Δ | "
              "mean Δ (8-bit levels) |")
    lines += ["## Learned frames: distance from their start", "", header,
              "|---|---|---|---|---|---|---|---|"]
    probes = []
    for cell in (c for c in cfg.cells if c.is_mof):
        for seed in cfg.seed_list():
            run = cell_dir(cfg, cell, seed) / "run"
            if not (run.parent / "cell.json").is_file():
                continue
            d = frame_drift(run)
            lines.append(f"| {cell.label} | {seed} | {d['steps_per_video']:.1f} | {d['beta']:g} "
                         f"| {d['bound']:.3g} | {d['mean_abs']:.3g} | {d['max_abs']:.3g} | "
                         f"{d['mean_levels']:.3g} |")
            if seed == 0:
                probes.append((cell, meta_gradient_probe(run)))
    mixes = [(cell, seed, mix_drift(cell_dir(cfg, cell, seed) / "run"))
             for cell in cfg.cells if cell.is_mof for seed in cfg.seed_list()
             if (cell_dir(cfg, cell, seed) / "cell.json").is_file()]
    if any(m for _, _, m in mixes):
        lines += ["", "## Mixing weights (`mix`): distance from their peaked start", "",
                  "| cell | seed | mean / max TV distance | heaviest frame moved | weight of the "
                  "start frame, before → after |", "|---|---|---|---|---|"]
        lines += [f"| {cell.label} | {seed} | {m['tv']:.3f} / {m['tv_max']:.3f} | "
                  f"{m['argmax_moved']:.1%} | {m['start_weight']:.3f} → {m['end_weight']:.3f} |"
                  for cell, seed, m in mixes if m]
    lines += ["", "## Meta-gradient on the trained model (seed 0, first 16 training videos)", "",
              "| cell | α | inner step / AdamW step | outer loss | RMS | max | share < 1e-8 | "
              "Δf down / up, β=" + " / ".join(f"{b:g}" for b in _BETAS) +
              " | model-gradient change |", "|---|---|---|---|---|---|---|---|---|"]
    for cell, p in probes:
        moves = "; ".join(f"{down:+.2e} / {up:+.2e}" for down, up in p["steps"].values())
        ratio = p["inner_step_norm"] / p["adamw_step_norm"]
        lines.append(f"| {cell.label} | {p['alpha']:g} | {ratio:.3g} | {p['outer_loss']:.4f} "
                     f"| {p['rms']:.2e} | {p['max']:.2e} | {p['below_eps']:.1%} | {moves} | "
                     f"{p['model_grad_change']:.2%} |")
    title = ("## What one frame step buys (seed 0, first 16 training videos): the gap between "
             "the inner step on ε and on the R regular frames, and gradient alignment")
    legend = ("The inner step Θ'' = Θ − α∇_Θ L(Θ; x) lowers the loss on V^R by *gain(x)*; MOF "
              "wants gain(ε) to reach gain(V^R). *Closed*: the share of the gap gain(V^R) − "
              "gain(ε) that one Adam step of the run's β on ε closes (*no gap*: gain(ε) is "
              "already at least gain(V^R)). *Alignment*: cosine of "
              "∇_Θ L(Θ; x) with ∇_Θ L(Θ; V^R). To first order gain(x) = α ∇L(x)·∇L(V^R), "
              "so it grows with the norm of ∇L(x) as well as with the alignment; the last "
              "column is that norm on the learned frames over the norm on the uniform ones.")
    header = ("| cell | β | gain(ε) | gain(V^R) | closed by one step | alignment: uniform / "
              "learned / after the step | ‖∇L(ε)‖ / ‖∇L(uniform)‖ |")
    lines += ["", title, "", legend, "", header, "|---|---|---|---|---|---|---|"]
    for cell, p in probes:
        a = p["alignment"]
        lines.append(f"| {cell.label} | {p['beta']:g} | {p['gain_learned']:.2e} | "
                     f"{p['gain_regular']:.2e} | {_share(p['gap_closed'])} | {a['start']:.3f} / "
                     f"{a['learned']:.3f} / {a['stepped']:.3f} | {p['grad_norm_ratio']:.2f} |")
    title = ("## Training videos: the model on its learned frames and on uniform frames "
             "(t2v, first 500 training videos, first caption each)")
    header = ("| cell | seed | R@1 / R@10 / MedR, uniform frames | learned frames | "
              "equal-cost baseline, uniform frames |")
    lines += ["", title, "", header, "|---|---|---|---|---|"]
    baseline_fits: dict[Path, dict[str, float] | None] = {}  # 8 ⇒ 4 and 16 ⇒ 4 share one
    for cell in (c for c in cfg.cells if c.is_mof):
        for seed in cfg.seed_list():
            run, base = (cell_dir(cfg, c, seed) / "run" for c in (cell, equal_cost_baseline(cell)))
            if not (run.parent / "cell.json").is_file():
                continue
            fit = training_fit(run)
            if base not in baseline_fits:
                baseline_fits[base] = (training_fit(base)["uniform"]
                                       if (base.parent / "cell.json").is_file() else None)
            own = baseline_fits[base]
            lines.append(f"| {cell.label} | {seed} | {_fit(fit['uniform'])} | "
                         f"{_fit(fit['learned'])} | {_fit(own)} |")
    header = ("| trained on | tested on | seed | R@1 | R@1 of the baseline trained on the "
              "tested count |")
    lines += ["", "## Baselines trained on more frames, tested on fewer (t2v R@1)", "", header,
              "|---|---|---|---|---|"]
    for r in more_frames_at_training(cfg, shards_test):
        lines.append(f"| {r['trained']} | {r['tested']} | {r['seed']} | {r['r1']:.2f} | "
                     f"{r['r1_own']:.2f} |")
    return "\n".join(lines) + "\n"

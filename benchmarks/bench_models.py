"""Cost per video of every model family: forward, forward+backward, and the double backward.

For each family (``frozen``, ``clip4clip``, ``resnet``) and 1/4/8/16/32 frames per video, on a
batch of ``--batch`` videos with 16-token queries, measures per video:

- *fwd*: an inference forward (eval mode, fused attention, no autograd);
- *fwd+bwd*: the contrastive loss and its backward in train mode with fused attention (what a
  baseline training step computes);
- *plain*: the same in math attention (eager transformers attention, our explicit softmax), the
  path the bilevel step differentiates twice;
- *double*: the exact meta-gradient's core in math attention: ``g = grad(L, Θ,
  create_graph=True)``, then the vector-Jacobian product ``grad(<g, v>, video)`` for a random
  direction ``v`` (one double backward);

and reports the double/plain ratios of time and of peak memory.

CPU (default without CUDA): the tiny variants, one thread, times as CPU time of the process
(``time.process_time``: load from other processes inflates it far less than wall time), peak
memory as the high-water mark of the resident set above its level before the measured step
(VmHWM reset through ``/proc/self/clear_refs``; glibc is told to ``mmap`` large blocks so freed
tensors leave the resident set). GPU (CUDA present): the full-size variants (``frozen``,
``clip4clip``, ``resnet50``, ``resnet152``) under bf16 autocast, wall time after
``torch.cuda.synchronize()``, peak as ``torch.cuda.max_memory_allocated`` above the allocation
before the step. Every (model, frames) pair runs in its own process so peaks do not mix.
Times are the median of ``--repeats`` runs after one warm-up run.

    .venv/bin/python benchmarks/bench_models.py                    # tiny, CPU: about 5 minutes
    .venv/bin/python benchmarks/bench_models.py --frames 1,8 --json out.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

TINY = ("frozen-tiny", "clip4clip-tiny", "resnet-tiny")
FULL = ("frozen", "clip4clip", "resnet50", "resnet152")
MODES = ("fwd", "fwd+bwd", "plain", "double")
TEXT_LEN = 16
TINY_VOCAB = 1000


# ------------------------------------------------------------------------------ worker side
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1])


class _Meter:
    """Time and peak memory of one callable on the worker's device."""

    def __init__(self, device):
        import torch

        self.torch = torch
        self.cuda = device.type == "cuda"

    def time(self, fn: Callable[[], None], repeats: int) -> float:
        times = []
        for _ in range(repeats):
            if self.cuda:
                self.torch.cuda.synchronize()
                start = time.perf_counter()
                fn()
                self.torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            else:
                start = time.process_time()
                fn()
                times.append(time.process_time() - start)
        return statistics.median(times)

    def peak_mib(self, fn: Callable[[], None]) -> float:
        import gc

        gc.collect()
        if self.cuda:
            self.torch.cuda.synchronize()
            before = self.torch.cuda.memory_allocated()
            self.torch.cuda.reset_peak_memory_stats()
            fn()
            self.torch.cuda.synchronize()
            return (self.torch.cuda.max_memory_allocated() - before) / 2**20
        with open("/proc/self/clear_refs", "w") as f:  # Linux: VmHWM := current RSS
            f.write("5")
        before = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - before) / 1024


def _build(name: str, frames: int, device):
    import torch

    from mof.models import create_model
    from mof.models.tokenizer import WordTokenizer

    torch.manual_seed(0)
    if name.endswith("-tiny"):  # a caption vocabulary of TINY_VOCAB words
        words = " ".join(f"w{i}" for i in range(TINY_VOCAB))
        return create_model(name, tokenizer=WordTokenizer.build([words])).to(device)
    return create_model(name, max_frames=frames).to(device)


def _inputs(model, batch: int, frames: int, device):
    import torch

    gen = torch.Generator().manual_seed(1)
    size = model.contract.frame_size
    video = torch.randn(batch, frames, 3, size, size, generator=gen).to(device)
    vocab = _vocab_size(model)
    # Ordinary ids below the largest, which ends each query (CLIP reads the text there).
    ids = torch.randint(3, vocab - 1, (batch, TEXT_LEN), generator=gen)
    ids[:, 0], ids[:, -1] = 2, vocab - 1
    return video, ids.to(device), torch.ones_like(ids).to(device)


def _vocab_size(model) -> int:
    # DistilBERT's embeddings.word_embeddings or CLIP's embeddings.token_embedding.
    for name, module in model.named_modules():
        if name.endswith(("word_embeddings", "token_embedding")):
            return module.num_embeddings
    raise ValueError(f"no word embedding found in {type(model).__name__}")


def _steps(model, video, ids, mask, autocast):
    import torch

    from mof.loss import contrastive_loss

    params = [p for p in model.parameters() if p.requires_grad]

    def loss(v):
        with autocast():
            return contrastive_loss(model(v, ids, mask).float(), model.loss_reduction)

    def fwd():
        model.eval()
        model.set_attention("fused")
        with torch.no_grad(), autocast():
            model(video, ids, mask)

    def fwd_bwd(attention):
        def run():
            model.train()
            model.set_attention(attention)
            model.zero_grad(set_to_none=True)
            loss(video).backward()
            model.zero_grad(set_to_none=True)
        return run

    direction = [torch.randn_like(p) for p in params]

    def double():
        model.train()
        model.set_attention("math")
        v = video.detach().requires_grad_(True)
        grads = torch.autograd.grad(loss(v), params, create_graph=True)
        inner = sum((g.float() * d).sum() for g, d in zip(grads, direction))
        torch.autograd.grad(inner, v)

    return {"fwd": fwd, "fwd+bwd": fwd_bwd("fused"), "plain": fwd_bwd("math"), "double": double}


def run_worker(job: dict) -> dict:
    """Measure one (model, frames) configuration; returns per-video ms and MiB per mode."""
    import contextlib

    import torch

    device = torch.device(job["device"])
    if device.type == "cpu":
        torch.set_num_threads(job["threads"])

    def autocast():
        if device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    model = _build(job["model"], job["frames"], device)
    video, ids, mask = _inputs(model, job["batch"], job["frames"], device)
    meter = _Meter(device)
    result = {"model": job["model"], "frames": job["frames"], "batch": job["batch"]}
    for mode, fn in _steps(model, video, ids, mask, autocast).items():
        try:
            fn()  # warm-up: kernel selection, one-time buffers
            peak = meter.peak_mib(fn)
            seconds = meter.time(fn, job["repeats"])
        except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
            result[mode] = {"error": str(err).splitlines()[0][:120]}
            continue
        result[mode] = {"ms": 1000 * seconds / job["batch"], "mib": peak / job["batch"]}
    return result


# ------------------------------------------------------------------------------ driver side
def _run_job(job: dict) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)],
                          capture_output=True, text=True, env=env, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"model": job["model"], "frames": job["frames"], "batch": job["batch"],
                **{mode: {"error": tail[:120]} for mode in MODES}}
    return json.loads(lines[-1])


def _cell(entry: dict, key: str, fmt: str) -> str:
    return "err" if "error" in entry else format(entry[key], fmt)


def _ratio(row: dict, key: str) -> str:
    plain, double = row["plain"], row["double"]
    if "error" in plain or "error" in double or plain[key] <= 0:
        return "n/a"
    return f"{double[key] / plain[key]:.2f}"


def format_table(rows: list[dict], unit: str) -> str:
    """Markdown table: per-video times (``unit``) and peak MiB, double/plain ratios."""
    head = (f"| model | frames | fwd {unit} | fwd+bwd {unit} | plain {unit} | double {unit} "
            "| fwd MiB | fwd+bwd MiB | plain MiB | double MiB | double/plain time "
            "| double/plain memory |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        times = " | ".join(_cell(r[m], "ms", ".2f") for m in MODES)
        peaks = " | ".join(_cell(r[m], "mib", ".1f") for m in MODES)
        lines.append(f"| {r['model']} | {r['frames']} | {times} | {peaks} "
                     f"| {_ratio(r, 'ms')} | {_ratio(r, 'mib')} |")
    return "\n".join(lines)


def _machine(device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    where = torch.cuda.get_device_name(0) if device == "cuda" else f"{cpu}, {os.cpu_count()} cores"
    return f"{where}; torch {torch.__version__}; {datetime.date.today().isoformat()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="1,4,8,16,32", help="comma-separated frame counts")
    parser.add_argument("--batch", type=int, default=8, help="videos per batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement")
    parser.add_argument("--models", default=None,
                        help="comma-separated registry names (default: tiny on CPU, full on GPU)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda when available")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per worker")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return
    import torch
    from tqdm import tqdm

    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    models = args.models.split(",") if args.models else list(FULL if device == "cuda" else TINY)
    frames = [int(f) for f in args.frames.split(",")]
    jobs = [{"model": m, "frames": f, "batch": args.batch, "repeats": args.repeats,
             "device": device, "threads": args.threads} for m in models for f in frames]
    rows = [_run_job(job) for job in tqdm(jobs, desc="configurations")]
    unit = "ms" if device == "cuda" else "CPU-ms"
    print(f"\n{_machine(device)}; batch {args.batch}, {TEXT_LEN}-token queries, "
          f"{'bf16 autocast' if device == 'cuda' else f'{args.threads} thread(s), fp32'}; "
          "per video\n")
    print(format_table(rows, unit))
    for row in rows:
        for mode in MODES:
            if "error" in row[mode]:
                print(f"{row['model']} {row['frames']} frames, {mode}: {row[mode]['error']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": _machine(device), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()

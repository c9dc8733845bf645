"""Frame-store I/O against the compute of a MOF phase at full size (224 px, ViT-B/16).

``bench_train.py`` measures the store's share of a phase on ``frozen-tiny`` (64 px), where a
phase is short. The target (under 10 % of a phase) is set at full size, where a row is 12x
larger but a phase costs far more. This script measures, side by side in one process on this
machine:

- *store I/O*: reading B rows (frames and both Adam moments) of a real Zarr store of U frames
  of 224 px and writing them back, as the trainer does each phase (no overlap counted);
- *one pass*: a forward-backward of the full-size space-time ViT (Frozen's video encoder,
  random weights) on B videos of U frames, with gradients to the frames;
- the *floor* of a MOF R:U phase from it: four passes on U frames and one on R
  (model-level step, inner gradient, two ε-gradients, outer pass), without the double
  backward, so the share printed is an upper bound.

    .venv/bin/python benchmarks/bench_store_fullsize.py [--batch 2] [--frames 8:4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def time_store(batch: int, used: int, dtype: str, repeats: int) -> float:
    """Seconds to read ``batch`` rows (all fields) of a 224-px store and write them back."""
    from pipeline.framestore.format import FrameRows
    from pipeline.framestore.store import FrameStore

    with tempfile.TemporaryDirectory() as tmp:
        ids = [f"v{i:03d}" for i in range(4 * batch)]
        store = FrameStore.create(Path(tmp) / "mof.zarr", ids, num_frames=used, frame_size=224,
                                  mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                                  regular_frames=2 * used, shards=["bench"], dataset="bench",
                                  dtype=dtype)
        rng = np.random.default_rng(0)
        shape = (len(ids), used, 3, 224, 224)
        store.write(np.arange(len(ids)), FrameRows(
            frames=rng.standard_normal(shape, dtype=np.float32),
            exp_avg=np.zeros(shape, np.float32), exp_avg_sq=np.zeros(shape, np.float32),
            step=np.zeros(len(ids), np.int64)))
        times = []
        for r in range(repeats):
            rows = np.arange(batch) + (r % 4) * batch
            start = time.perf_counter()
            data = store.read(rows)
            store.write(rows, data)
            times.append(time.perf_counter() - start)
        return float(np.median(times))


def time_pass(batch: int, frames: int, repeats: int) -> float:
    """Seconds of one forward-backward of the full-size video encoder, frames needing grad."""
    from mof.models.space_time import SpaceTimeTransformer

    model = SpaceTimeTransformer(224, 16, 768, 12, 12, 4.0, max(frames, 8), "zeros")
    video = torch.randn(batch, frames, 3, 224, 224, requires_grad=True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(video).square().mean().backward()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
        video.grad = None
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2, help="videos per phase")
    parser.add_argument("--frames", default="8:4", help="R:U of the MOF phase")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    regular, used = (int(x) for x in args.frames.split(":"))
    t_u = time_pass(args.batch, used, args.repeats)
    t_r = time_pass(args.batch, regular, max(1, args.repeats - 1))
    floor = 4 * t_u + t_r
    print(f"full-size space-time ViT-B/16, 224 px, batch {args.batch}, MOF {regular}:{used}, "
          f"{torch.get_num_threads()} threads")
    print(f"one pass on U: {t_u:.2f} s; on R: {t_r:.2f} s; phase floor (4 U + 1 R, no double "
          f"backward): {floor:.2f} s\n")
    print("| store dtype | read + write of the batch's rows (s) | share of floor + I/O |")
    print("|---|---|---|")
    for dtype in ("float16", "float32"):
        io = time_store(args.batch, used, dtype, args.repeats * 3)
        print(f"| {dtype} | {io:.3f} | {100 * io / (io + floor):.2f} % |")


if __name__ == "__main__":
    main()

"""Read throughput of the shard reader (:class:`pipeline.reader.ShardDataset`), samples/s.

Writes shards in the documented sample format (``<key>.frames.npy`` uint8 ``(R, S, S, 3)`` and
``<key>.json``; see docs/shards.md) with the standard library's ``tarfile``, so the shards do
not depend on the writer under test, then times full passes of ``ShardDataset`` in one process
(no DataLoader workers: one core, nothing else in the measurement):

- ``decoded``: frames decoded to arrays, file order;
- ``shuffled``: decoded, through a shuffle buffer of 64 samples;
- ``raw``: ``decode=False`` (tar streaming and grouping only).

Two sample sizes: the demo's (R=16, S=64, 197 KB) and the paper's (R=32, S=224, 4.8 MB).
Each round runs every implementation in a fresh process (this checkout's reader, and with
``--baseline DIR`` the ``pipeline`` package found in DIR, e.g. an earlier commit's
``git archive <commit> pipeline | tar -x -C DIR``), alternating so that load from other
processes spreads over both; a process times ``--repeats`` passes per mode, modes interleaved,
after one unmeasured pass. A figure is the median over rounds of each process's median.

    python benchmarks/bench_reader.py                       # about 3 minutes on 2 cores
    python benchmarks/bench_reader.py --baseline /tmp/old   # before/after, about 6 minutes
    python benchmarks/bench_reader.py --quick
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

MODES = {"decoded": {}, "shuffled": {"shuffle": 64}, "raw": {"decode": False}}


def write_test_shards(out: Path, samples: int, frames: int, size: int, per_shard: int) -> None:
    """``samples`` random-frame samples in shards of ``per_shard``, plus their ``index.json``."""
    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for start in range(0, samples, per_shard):
        name = f"bench-train-{start // per_shard:06d}.tar"
        count = min(per_shard, samples - start)
        with tarfile.open(out / name, "w") as tar:
            for k in range(start, start + count):
                npy = io.BytesIO()
                np.save(npy, rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8))
                meta = {"video_id": f"v{k:06d}", "captions": [f"caption {k}"], "split": "train"}
                members = (("frames.npy", npy.getvalue()), ("json", json.dumps(meta).encode()))
                for ext, data in members:
                    info = tarfile.TarInfo(f"v{k:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        shards.append({"name": name, "samples": count, "bytes": (out / name).stat().st_size})
    index = {"shards": shards, "totals": {"samples": samples}}
    (out / "index.json").write_text(json.dumps(index))


def measure(shards: Path, samples: int, repeats: int) -> dict[str, float]:
    """Median seconds per full pass, by mode (run in the measuring process)."""
    from pipeline.reader import ShardDataset

    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for repeat in range(repeats + 1):
        for mode, options in MODES.items():
            start = time.perf_counter()
            count = sum(1 for _ in ShardDataset(shards, **options))
            seconds = time.perf_counter() - start
            if count != samples:
                raise RuntimeError(f"{mode}: read {count} samples of {samples}")
            if repeat:  # the first pass warms the page cache and the imports
                times[mode].append(seconds)
    return {mode: statistics.median(values) for mode, values in times.items()}


def run_process(shards: Path, samples: int, repeats: int, baseline: str | None) -> dict:
    """:func:`measure` in a fresh interpreter, on ``baseline``'s ``pipeline`` when given."""
    env = dict(os.environ)
    if baseline:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [baseline, env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, __file__, "--measure", str(shards), str(samples), str(repeats)],
        env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, repeats and rounds")
    parser.add_argument("--repeats", type=int, default=None, help="passes per mode (default 3)")
    parser.add_argument("--rounds", type=int, default=None, help="processes per implementation"
                        " (default 3)")
    parser.add_argument("--baseline", help="a directory holding another `pipeline` package")
    parser.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        shards, samples, repeats = args.measure
        print(json.dumps(measure(Path(shards), int(samples), int(repeats))))
        return
    repeats = args.repeats or (1 if args.quick else 3)
    rounds = args.rounds or (1 if args.quick else 3)
    configs = [(16, 64, 200 if args.quick else 800), (32, 224, 20 if args.quick else 80)]
    impls = {"this": None} if not args.baseline else {"baseline": args.baseline, "this": None}
    print(f"# bench_reader ({platform.processor() or platform.machine()}, numpy "
          f"{np.__version__}, {rounds} rounds x {repeats} passes per mode)")
    print("| R | S | sample MB | mode | " + " | ".join(f"{k} samples/s" for k in impls)
          + (" | this / baseline |" if args.baseline else " |"))
    print("|---|---|---|---|" + "---|" * (len(impls) + bool(args.baseline)))
    with tempfile.TemporaryDirectory() as tmp:
        for frames, size, samples in configs:
            shards = Path(tmp) / f"r{frames}s{size}"
            write_test_shards(shards, samples, frames, size, per_shard=max(samples // 8, 1))
            seconds: dict[str, list[dict]] = {k: [] for k in impls}
            for _ in range(rounds):
                for name, where in impls.items():
                    seconds[name].append(run_process(shards, samples, repeats, where))
            sample_mb = frames * size * size * 3 / 1e6
            for mode in MODES:
                rates = {k: samples / statistics.median(r[mode] for r in v)
                         for k, v in seconds.items()}
                row = f"| {frames} | {size} | {sample_mb:.2f} | {mode} | "
                row += " | ".join(f"{rate:.0f}" for rate in rates.values())
                if args.baseline:
                    row += f" | {rates['this'] / rates['baseline']:.2f}"
                print(row + " |")


if __name__ == "__main__":
    main()

"""Read throughput of the shard reader (:class:`pipeline.reader.ShardDataset`), samples/s.

Writes shards in the documented sample format (``<key>.frames.npy`` uint8 ``(R, S, S, 3)`` and
``<key>.json``; see docs/shards.md) with the standard library's ``tarfile``, so the shards do
not depend on the writer under test, then times full passes of ``ShardDataset`` in this
process (no DataLoader workers: one core, nothing else in the measurement):

- ``decoded``: frames decoded to arrays, file order;
- ``shuffled``: decoded, through a shuffle buffer of 64 samples;
- ``raw``: ``decode=False`` (tar streaming and grouping only).

Each figure is the median over ``--repeats`` passes, the modes interleaved so that load from
other processes spreads evenly. Two sample sizes: the demo's (R=16, S=64, 197 KB) and the
paper's (R=32, S=224, 4.8 MB).

    python benchmarks/bench_reader.py            # about a minute on 2 cores
    python benchmarks/bench_reader.py --quick
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.reader import ShardDataset

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


def time_pass(shards: Path, options: dict) -> tuple[float, int]:
    """Seconds for one full pass and the number of samples it yielded."""
    start = time.perf_counter()
    count = sum(1 for _ in ShardDataset(shards, **options))
    return time.perf_counter() - start, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and repeats")
    parser.add_argument("--repeats", type=int, default=None, help="passes per mode (default 5)")
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    configs = [(16, 64, 200 if args.quick else 800), (32, 224, 20 if args.quick else 80)]
    print(f"# bench_reader ({platform.processor() or platform.machine()}, "
          f"numpy {np.__version__}, {repeats} passes per mode)")
    print("| R | S | sample MB | mode | samples/s | MB/s |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for frames, size, samples in configs:
            shards = Path(tmp) / f"r{frames}s{size}"
            write_test_shards(shards, samples, frames, size, per_shard=max(samples // 8, 1))
            times: dict[str, list[float]] = {mode: [] for mode in MODES}
            for _ in range(repeats):
                for mode, options in MODES.items():
                    seconds, count = time_pass(shards, options)
                    if count != samples:
                        raise RuntimeError(f"{mode}: read {count} samples of {samples}")
                    times[mode].append(seconds)
            sample_mb = frames * size * size * 3 / 1e6
            for mode, values in times.items():
                rate = samples / statistics.median(values)
                print(f"| {frames} | {size} | {sample_mb:.2f} | {mode} | {rate:.0f} | "
                      f"{rate * sample_mb:.0f} |")


if __name__ == "__main__":
    main()

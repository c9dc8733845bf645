"""Read throughput of the shard reader (:class:`pipeline.sharding.reader.ShardDataset`), samples/s.

Writes shards in the documented sample format (``<key>.frames.npy`` uint8 ``(R, S, S, 3)`` and
``<key>.json``; see docs/shards.md) with the standard library's ``tarfile``, so the shards do
not depend on the writer under test, then times full passes of ``ShardDataset`` in one process
(no DataLoader workers: one core, nothing else in the measurement):

- ``decoded``: frames decoded to arrays, file order;
- ``shuffled``: decoded, through a shuffle buffer of 64 samples;
- ``raw``: ``decode=False`` (tar streaming and grouping only).

Two sample sizes: the demo's (R=16, S=64, 197 KB) and the paper's (R=32, S=224, 4.8 MB).
With ``--baseline DIR`` a second reader, the ``pipeline`` package found in DIR (e.g. an earlier
commit's ``git archive <commit> pipeline | tar -x -C DIR``), is loaded beside this checkout's
under another package name, and the two take turns pass by pass in the same process, so that
load from other processes falls on both alike (on a shared machine, separate processes differ
by more than the readers do). After one unmeasured pass each, a figure is the median over
``--repeats`` passes.

    python benchmarks/bench_reader.py                       # about 2 minutes on 2 cores
    python benchmarks/bench_reader.py --baseline /tmp/old   # before/after, about 4 minutes
    python benchmarks/bench_reader.py --quick
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import platform
import shutil
import statistics
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


def load_baseline(directory: str, scratch: Path) -> type:
    """``ShardDataset`` of the ``pipeline`` package in ``directory``, as package ``baseline``.

    The package is copied into ``scratch`` with its ``pipeline.`` imports renamed, so that it
    imports its own modules and not this checkout's.
    """
    target = scratch / "baseline"
    shutil.copytree(Path(directory) / "pipeline", target)
    for module in target.rglob("*.py"):
        text = module.read_text()
        module.write_text(text.replace("from pipeline.", "from baseline.")
                          .replace("import pipeline.", "import baseline."))
    sys.path.insert(0, str(scratch))
    # pipeline/sharding/reader.py, or pipeline/reader.py in a checkout without subpackages.
    nested = (target / "shards" / "reader.py").is_file()
    module = "baseline.shards.reader" if nested else "baseline.reader"
    return importlib.import_module(module).ShardDataset


def measure(readers: dict[str, type], shards: Path, samples: int, repeats: int
            ) -> dict[str, dict[str, float]]:
    """Median seconds per full pass, by reader and mode; readers and modes take turns."""
    times = {name: {mode: [] for mode in MODES} for name in readers}
    for repeat in range(repeats + 1):
        order = list(readers.items())
        for name, reader in order if repeat % 2 else order[::-1]:
            for mode, options in MODES.items():
                start = time.perf_counter()
                count = sum(1 for _ in reader(shards, **options))
                seconds = time.perf_counter() - start
                if count != samples:
                    raise RuntimeError(f"{name} {mode}: read {count} samples of {samples}")
                if repeat:  # the first pass warms the page cache
                    times[name][mode].append(seconds)
    return {name: {mode: statistics.median(v) for mode, v in by_mode.items()}
            for name, by_mode in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and repeats")
    parser.add_argument("--repeats", type=int, default=None, help="passes per mode (default 7)")
    parser.add_argument("--baseline", help="a directory holding another `pipeline` package")
    args = parser.parse_args()
    from pipeline.sharding.reader import ShardDataset

    repeats = args.repeats or (2 if args.quick else 7)
    configs = [(16, 64, 200 if args.quick else 800), (32, 224, 20 if args.quick else 80)]
    print(f"# bench_reader ({platform.processor() or platform.machine()}, numpy "
          f"{np.__version__}, median of {repeats} passes per mode)")
    with tempfile.TemporaryDirectory() as tmp:
        readers = {"this": ShardDataset}
        if args.baseline:
            readers = {"baseline": load_baseline(args.baseline, Path(tmp)), **readers}
        print("| R | S | sample MB | mode | " + " | ".join(f"{k} samples/s" for k in readers)
              + (" | this / baseline |" if args.baseline else " |"))
        print("|---|---|---|---|" + "---|" * (len(readers) + bool(args.baseline)))
        for frames, size, samples in configs:
            shards = Path(tmp) / f"r{frames}s{size}"
            write_test_shards(shards, samples, frames, size, per_shard=max(samples // 8, 1))
            seconds = measure(readers, shards, samples, repeats)
            sample_mb = frames * size * size * 3 / 1e6
            for mode in MODES:
                rates = {name: samples / seconds[name][mode] for name in readers}
                row = f"| {frames} | {size} | {sample_mb:.2f} | {mode} | "
                row += " | ".join(f"{rate:.0f}" for rate in rates.values())
                if args.baseline:
                    row += f" | {rates['this'] / rates['baseline']:.2f}"
                print(row + " |")


if __name__ == "__main__":
    main()

"""Exact against approximate (FAISS IVF-Flat) search: recall@K and latency at 1e4..1e6 videos.

The collection is random unit vectors of Frozen's embedding width (256) and the queries are
other random unit vectors: no cluster structure, the hard case for any approximate index (real
embeddings cluster; this benchmark does not measure them). Exact search is
:func:`mof.search.topk.exact_top_k` (numpy); recall@K is the fraction of the exact top K that the
IVF index returns. Latency is per single query, median over the queries, on ``--threads``
threads (numpy's BLAS follows ``OMP_NUM_THREADS``: set it to 1 as well); the IVF index has
``default_nlist(N)`` cells (about sqrt(N)) and is built as ``mof-cli index --ann ivf`` builds it.

Usage: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_search.py
[--sizes 10000,100000,1000000] [--dim 256] [--queries 200] [--k 10] [--nprobe 1,4,16,64,256]
[--threads 1] [--build-threads 1]``. Needs ``pip install 'mof[search]'`` (faiss-cpu).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from mof.search.ann import build_ivf, search_ivf
from mof.search.topk import exact_top_k


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _latencies_ms(search, queries: np.ndarray) -> tuple[float, np.ndarray]:
    """Median single-query latency (ms) and every query's result rows."""
    times, rows = [], []
    for q in queries:
        start = time.perf_counter()
        rows.append(search(q[None]))
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times), np.concatenate(rows)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def bench_size(n: int, args: argparse.Namespace, rng: np.random.Generator) -> list[str]:
    """Table lines for a collection of ``n`` vectors."""
    data, queries = _unit(rng, n, args.dim), _unit(rng, args.queries, args.dim)
    exact_ms, truth = _latencies_ms(lambda q: exact_top_k(data, q, args.k)[1], queries)
    lines = [f"| {n:,} | exact (numpy) | - | {exact_ms:.2f} | 1.000 | - |"]
    import faiss

    faiss.omp_set_num_threads(args.build_threads)
    start = time.perf_counter()
    ivf = build_ivf(data)
    build_s = time.perf_counter() - start
    faiss.omp_set_num_threads(args.threads)
    for nprobe in (p for p in args.nprobe if p <= ivf.nlist):
        ms, found = _latencies_ms(lambda q, p=nprobe: search_ivf(ivf, q, args.k, p)[1], queries)
        lines.append(f"| {n:,} | IVF-Flat, {ivf.nlist} cells | {nprobe} | {ms:.3f} | "
                     f"{_recall(found, truth):.3f} | {build_s:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nprobe", default="1,4,16,64,256")
    parser.add_argument("--threads", type=int, default=1, help="threads while searching")
    parser.add_argument("--build-threads", type=int, default=1, help="threads building IVF")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.nprobe = [int(p) for p in args.nprobe.split(",")]
    rng = np.random.default_rng(args.seed)
    print(f"random unit vectors, D={args.dim}, {args.queries} random queries, K={args.k}, "
          f"search on {args.threads} thread(s), build on {args.build_threads}, "
          f"{os.cpu_count()} CPUs")
    print(f"| videos | search | nprobe | latency ms (median) | recall@{args.k} | build s |")
    print("|---:|---|---:|---:|---:|---:|")
    for size in (int(float(s)) for s in args.sizes.split(",")):
        for line in bench_size(size, args, rng):
            print(line, flush=True)


if __name__ == "__main__":
    main()

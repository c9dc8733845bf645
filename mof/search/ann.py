"""Approximate nearest neighbours over the index's embeddings: a FAISS inverted file (IVF-Flat).

The collection is split into ``nlist`` cells by k-means; a query scans the ``nprobe`` cells whose
centroids are closest, so it reads about ``nprobe / nlist`` of the vectors (``nprobe = nlist``
is exact search). Embeddings are L2-normalised, so the inner product is the cosine similarity
the models rank with (``METRIC_INNER_PRODUCT``). An inverted file, not a graph: building it is
one k-means on a sample plus one assignment pass, minutes for a million vectors on two cores,
where an HNSW graph took 25 minutes for 100,000 on the same machine (``docs/search.md``).

FAISS is optional (``pip install 'mof[search]'``): exact search needs only numpy.
``benchmarks/bench_search.py`` measures recall against exact search and the latency of both.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ANN_FILE", "build_ivf", "default_nlist", "load_ivf", "save_ivf", "search_ivf"]

ANN_FILE = "ann/ivf.faiss"
#: Training points per cell: FAISS warns below 39; 64 keeps k-means cheap and stable.
TRAIN_PER_CELL = 64


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as err:
        raise RuntimeError("approximate search needs FAISS: pip install 'mof[search]' "
                           "(the faiss-cpu package)") from err
    return faiss


def default_nlist(n: int) -> int:
    """Cells for ``n`` vectors: about sqrt(n), at least 1 and at most n / 39."""
    return max(1, min(round(math.sqrt(n)), n // 39))


def build_ivf(embeddings: np.ndarray, nlist: int | None = None, seed: int = 0) -> Any:
    """An IVF-Flat index over ``embeddings`` float32 ``(N, D)`` (inner-product metric).

    k-means is trained on a random sample of ``TRAIN_PER_CELL * nlist`` vectors (all of them
    when fewer), then every vector is added to its cell.
    """
    faiss = _faiss()
    data = np.ascontiguousarray(embeddings, dtype=np.float32)
    nlist = nlist or default_nlist(len(data))
    quantizer = faiss.IndexFlatIP(data.shape[1])
    index = faiss.IndexIVFFlat(quantizer, data.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    sample = min(len(data), TRAIN_PER_CELL * nlist)
    rows = np.random.default_rng(seed).choice(len(data), sample, replace=False)
    index.cp.seed = seed
    index.train(data[np.sort(rows)])
    index.add(data)
    return index


def save_ivf(index: Any, path: Path) -> None:
    """Write the index to ``path`` under a temporary name, then rename it into place."""
    faiss = _faiss()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(tmp))
    tmp.replace(path)


def load_ivf(path: Path, expected_rows: int) -> Any:
    """Read an index written by :func:`save_ivf`, checking it covers ``expected_rows`` vectors.

    Raises:
        FileNotFoundError: no index at ``path``.
        ValueError: it holds another number of vectors (the search index changed since).
    """
    faiss = _faiss()
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build it with mof-cli index --ann ivf")
    index = faiss.read_index(str(path))
    if index.ntotal != expected_rows:
        raise ValueError(f"{path} covers {index.ntotal} videos, the index holds "
                         f"{expected_rows}: run mof-cli index --ann ivf again")
    return index


def search_ivf(index: Any, queries: np.ndarray, k: int,
               nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, rows)``, both ``(Q, k)``, best first; rows are -1 where fewer were found."""
    index.nprobe = min(nprobe, index.nlist)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

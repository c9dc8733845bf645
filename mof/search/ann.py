"""Approximate nearest neighbours over the index's embeddings: FAISS's HNSW graph.

Embeddings are L2-normalised, so the inner product is the cosine similarity the models rank
with; the graph uses ``METRIC_INNER_PRODUCT``. FAISS is optional (``pip install 'mof[search]'``):
exact search needs only numpy. ``benchmarks/bench_search.py`` measures recall against exact
search and the latency of both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ANN_FILE", "HNSW_M", "build_hnsw", "load_hnsw", "save_hnsw", "search_hnsw"]

ANN_FILE = "ann/hnsw.faiss"
#: Graph degree: 32 links per node, FAISS's usual choice for 100-1000-d vectors.
HNSW_M = 32
#: Candidate list size while building (FAISS's default is 40; more gives a better graph).
HNSW_EF_CONSTRUCTION = 80


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as err:
        raise RuntimeError("approximate search needs FAISS: pip install 'mof[search]' "
                           "(the faiss-cpu package)") from err
    return faiss


def build_hnsw(embeddings: np.ndarray, m: int = HNSW_M,
               ef_construction: int = HNSW_EF_CONSTRUCTION) -> Any:
    """An HNSW graph over ``embeddings`` float32 ``(N, D)`` (inner-product metric)."""
    faiss = _faiss()
    index = faiss.IndexHNSWFlat(embeddings.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    return index


def save_hnsw(index: Any, path: Path) -> None:
    """Write the graph to ``path`` under a temporary name, then rename it into place."""
    faiss = _faiss()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(tmp))
    tmp.replace(path)


def load_hnsw(path: Path, expected_rows: int) -> Any:
    """Read a graph written by :func:`save_hnsw`, checking it covers ``expected_rows`` vectors.

    Raises:
        FileNotFoundError: no graph at ``path``.
        ValueError: the graph holds another number of vectors (the index changed since).
    """
    faiss = _faiss()
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build it with mof-cli index --ann hnsw")
    index = faiss.read_index(str(path))
    if index.ntotal != expected_rows:
        raise ValueError(f"{path} covers {index.ntotal} videos, the index holds "
                         f"{expected_rows}: run mof-cli index --ann hnsw again")
    return index


def search_hnsw(index: Any, queries: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, rows)``, both ``(Q, k)``, best first; rows are -1 where fewer were found."""
    index.hnsw.efSearch = max(ef, k)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

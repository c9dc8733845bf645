"""Exact top-K by inner product over L2-normalised embeddings (numpy only)."""

from __future__ import annotations

import numpy as np

__all__ = ["exact_top_k", "rank_of"]

#: Similarity entries computed at once (256 MiB of float32): bounds memory for many queries.
_BLOCK = 1 << 26


def exact_top_k(embeddings: np.ndarray, queries: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar rows of ``embeddings`` for each query.

    Args:
        embeddings: float32 ``(N, D)``, L2-normalised.
        queries: float32 ``(Q, D)``, L2-normalised.
        k: results per query (capped at ``N``).

    Returns:
        ``(scores, rows)``, both ``(Q, min(k, N))``: cosine similarities, best first, equal
        scores in row order; which of several rows tied at the cut-off is kept is unspecified.
    """
    n = embeddings.shape[0]
    k = min(k, n)
    block = max(1, _BLOCK // max(n, 1))
    scores = np.empty((len(queries), k), np.float32)
    rows = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), block):
        sims = queries[start : start + block] @ embeddings.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < n else np.tile(
            np.arange(n), (len(sims), 1))
        part_scores = np.take_along_axis(sims, part, axis=1)
        order = np.lexsort((part, -part_scores), axis=-1)
        scores[start : start + block] = np.take_along_axis(part_scores, order, axis=1)
        rows[start : start + block] = np.take_along_axis(part, order, axis=1)
    return scores, rows


def rank_of(embeddings: np.ndarray, query: np.ndarray, row: int) -> tuple[int, int, float]:
    """Where ``row`` ranks for one query ``(D,)``.

    Returns:
        ``(rank, tied, score)``: 1 + the number of rows scoring higher, the number of other
        rows scoring exactly the same, and the row's score.
    """
    sims = embeddings @ query
    score = sims[row]
    return int((sims > score).sum()) + 1, int((sims == score).sum()) - 1, float(score)

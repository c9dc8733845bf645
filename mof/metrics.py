"""Retrieval metrics: R@1/5/10, MedR and MeanR for text-to-video and video-to-text.

Input is a similarity matrix ``sim`` ``(num_queries, num_videos)`` (higher is better) and
``query_to_video`` ``(num_queries,)``, the index of each query's video. Every caption is one
query, which covers the three protocols: many captions per video (MSVD), one paragraph per video
(DiDeMo) and one sentence per video (MSR-VTT 1k-A). Rows need not be grouped or ordered.

Ranks are 1-based. Our conventions (``"pessimistic"``, the default):

* text-to-video: the rank of a query is 1 + the number of *other* videos whose similarity is
  ``>=`` that of its video. A tie is counted against the query, so a model that returns one
  constant score ranks every query last and cannot score above zero.
* video-to-text: a video's rank is the rank of its best caption among the captions of the other
  videos, i.e. the position of the first correct caption in the ranked list of all queries;
  1 + the number of other videos' captions with similarity ``>=`` its best caption's.
* MedR is ``np.median`` of the ranks (the mean of the two middle ranks for an even count);
  MeanR is their mean; R@K is the percentage of ranks ``<= K``.

``"average"`` gives a tied query the mean of its optimistic and pessimistic rank (fractional
ranking), ``"optimistic"`` counts only strictly better items. ``"frozen"`` and ``"clip4clip"``
reproduce the two peer codebases (see ``docs/metrics.md``); they differ from ours only where
there are ties, and CLIP4Clip's video-to-text ranks caption groups rather than captions.

The matrix is read in chunks of rows, twice (the second pass needs each video's best caption),
so memory is ``O(chunk_rows * num_videos)`` plus ``O(num_videos**2)`` for CLIP4Clip's
group-maximum matrix when a video has several captions; no full argsort is ever formed. A NaN
similarity raises ``ValueError`` naming its row instead of silently dropping the query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

__all__ = [
    "CONVENTIONS",
    "Convention",
    "RankCounts",
    "compare_conventions",
    "count_ranks",
    "retrieval_metrics",
    "summarize",
]

Convention = Literal["pessimistic", "average", "optimistic", "frozen", "clip4clip"]
CONVENTIONS: tuple[str, ...] = ("pessimistic", "average", "optimistic", "frozen", "clip4clip")
RECALL_AT = (1, 5, 10)
# Rows per chunk are chosen so one chunk's comparison matrices hold about this many elements.
_CHUNK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class RankCounts:
    """The counts every convention's ranks are computed from (all int64 numpy arrays).

    Attributes:
        t2v_ahead: ``(Q,)`` other videos strictly more similar to the query than its video.
        t2v_tied: ``(Q,)`` other videos exactly as similar as its video.
        t2v_tied_before: ``(Q,)`` of those tied, the ones with a smaller column index (the order
            a stable sort leaves them in).
        v2t_ahead: ``(V,)`` other videos' captions strictly above the video's best caption.
        v2t_tied: ``(V,)`` other videos' captions tied with its best caption.
        v2t_tied_own: ``(V,)`` the video's own captions tied with its best, the best excluded.
        group_ahead: ``(V,)`` CLIP4Clip's video-to-text on caption groups: other videos whose
            best caption (for this video) is strictly above this video's best caption; ``None``
            when every video has exactly one query (the two forms coincide).
        group_tied: ``(V,)`` the same, tied.
        one_per_video: every video has exactly one query (a square protocol).
    """

    t2v_ahead: np.ndarray
    t2v_tied: np.ndarray
    t2v_tied_before: np.ndarray
    v2t_ahead: np.ndarray
    v2t_tied: np.ndarray
    v2t_tied_own: np.ndarray
    group_ahead: np.ndarray | None
    group_tied: np.ndarray | None
    one_per_video: bool


def _check_inputs(sim, query_to_video) -> tuple[torch.Tensor, torch.Tensor]:
    sim_t = torch.as_tensor(sim)
    if sim_t.dim() != 2 or 0 in sim_t.shape:
        raise ValueError(f"sim must be (num_queries, num_videos), got shape {tuple(sim_t.shape)}")
    if not sim_t.is_floating_point():
        raise ValueError(f"sim must be floating point, got {sim_t.dtype}")
    q2v = torch.as_tensor(query_to_video).to(sim_t.device)
    num_queries, num_videos = sim_t.shape
    if q2v.shape != (num_queries,) or q2v.is_floating_point():
        raise ValueError(
            f"query_to_video must be ({num_queries},) integers, got {tuple(q2v.shape)} {q2v.dtype}"
        )
    q2v = q2v.long()
    bad = torch.nonzero((q2v < 0) | (q2v >= num_videos)).flatten()
    if len(bad):
        raise ValueError(
            f"query_to_video[{bad[0].item()}] = {q2v[bad[0]].item()} is outside "
            f"[0, {num_videos})"
        )
    per_video = torch.bincount(q2v, minlength=num_videos)
    empty = torch.nonzero(per_video == 0).flatten()
    if len(empty):
        raise ValueError(
            f"{len(empty)} video(s) have no query, e.g. columns {empty[:5].tolist()}: "
            "video-to-text needs at least one caption per video"
        )
    return sim_t, q2v


def _chunks(num_rows: int, num_cols: int, chunk_size: int | None):
    rows = chunk_size or max(1, _CHUNK_ELEMENTS // num_cols)
    for start in range(0, num_rows, rows):
        yield start, min(start + rows, num_rows)


def _raise_on_nan(chunk: torch.Tensor, start: int) -> None:
    # A NaN anywhere makes the sum NaN: one cheap reduction, the exact search only on a hit.
    if not bool(torch.isnan(chunk.sum())):
        return
    nan_rows = torch.isnan(chunk).any(dim=1)
    if bool(nan_rows.any()):
        row = start + int(torch.nonzero(nan_rows)[0])
        col = int(torch.nonzero(torch.isnan(chunk[row - start]))[0])
        raise ValueError(f"similarity row {row} (query {row}) is NaN at column {col}")


def _count_t2v(
    sim: torch.Tensor, q2v: torch.Tensor, chunk_size: int | None, group_max: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """First pass: ``(3, Q)`` ahead/tied/tied-before counts and each video's best caption
    similarity ``(V,)``; fills ``group_max`` ``(V, V)`` in place when given."""
    num_queries, num_videos = sim.shape
    columns = torch.arange(num_videos, device=sim.device)
    counts = torch.zeros(3, num_queries, dtype=torch.long, device=sim.device)
    best = torch.full((num_videos,), float("-inf"), dtype=sim.dtype, device=sim.device)
    for start, stop in _chunks(num_queries, num_videos, chunk_size):
        chunk, own = sim[start:stop], q2v[start:stop]
        _raise_on_nan(chunk, start)
        gt = chunk.gather(1, own[:, None])
        counts[0, start:stop] = torch.count_nonzero(chunk > gt, dim=1)
        tied = torch.count_nonzero(chunk == gt, dim=1) - 1
        counts[1, start:stop] = tied
        rows = torch.nonzero(tied).flatten()  # the tie order matters only where ties exist
        if len(rows):
            before = (chunk[rows] == gt[rows]) & (columns[None] < own[rows, None])
            counts[2, start + rows] = torch.count_nonzero(before, dim=1)
        best.scatter_reduce_(0, own, gt.squeeze(1), reduce="amax")
        if group_max is not None:
            group_max.scatter_reduce_(0, own[:, None].expand_as(chunk), chunk, reduce="amax")
    return counts, best


def _count_v2t(
    sim: torch.Tensor, q2v: torch.Tensor, chunk_size: int | None, best: torch.Tensor
) -> torch.Tensor:
    """Second pass: ``(3, V)`` other captions ahead of / tied with each video's best caption,
    and its own captions tied with it (the best excluded)."""
    num_queries, num_videos = sim.shape
    ahead = torch.zeros(num_videos, dtype=torch.long, device=sim.device)
    tied_all, tied_own = torch.zeros_like(ahead), torch.zeros_like(ahead)
    for start, stop in _chunks(num_queries, num_videos, chunk_size):
        chunk, own = sim[start:stop], q2v[start:stop]
        # A video's own captions never exceed its best, so "ahead" needs no mask.
        ahead += torch.count_nonzero(chunk > best[None], dim=0)
        tied_all += torch.count_nonzero(chunk == best[None], dim=0)
        own_sim = chunk.gather(1, own[:, None]).squeeze(1)
        tied_own.scatter_add_(0, own, (own_sim == best[own]).long())
    return torch.stack([ahead, tied_all - tied_own, tied_own - 1])


def count_ranks(
    sim: torch.Tensor | np.ndarray,
    query_to_video: torch.Tensor | np.ndarray,
    chunk_size: int | None = None,
) -> RankCounts:
    """Count, chunk by chunk, what lies ahead of and level with each ground truth.

    Args:
        sim: ``(Q, V)`` similarities, queries × videos, on any device (numpy on CPU).
        query_to_video: ``(Q,)`` integer video index of each query.
        chunk_size: rows per chunk; ``None`` picks about 1M elements per chunk.

    Returns:
        :class:`RankCounts` on the CPU.

    Raises:
        ValueError: a NaN (naming the row), shapes that do not match, a video index out of
            range, or a video with no query.
    """
    sim, q2v = _check_inputs(sim, query_to_video)
    num_queries, num_videos = sim.shape
    one_per_video = num_queries == num_videos and bool(
        (torch.bincount(q2v, minlength=num_videos) == 1).all()
    )
    # group_max[i, j]: the best similarity of video i's captions to video j (CLIP4Clip v2t).
    group_max = None if one_per_video else torch.full(
        (num_videos, num_videos), float("-inf"), dtype=sim.dtype, device=sim.device
    )
    t2v, best = _count_t2v(sim, q2v, chunk_size, group_max)
    v2t = _count_v2t(sim, q2v, chunk_size, best)
    group_ahead = group_tied = None
    if group_max is not None:
        # Row j of CLIP4Clip's matrix is group_max[:, j]; its ground truth is group_max[j, j].
        group_ahead = torch.count_nonzero(group_max > best[None], dim=0).cpu().numpy()
        group_tied = (torch.count_nonzero(group_max == best[None], dim=0) - 1).cpu().numpy()
    t2v, v2t = t2v.cpu().numpy(), v2t.cpu().numpy()
    return RankCounts(
        t2v_ahead=t2v[0], t2v_tied=t2v[1], t2v_tied_before=t2v[2],
        v2t_ahead=v2t[0], v2t_tied=v2t[1], v2t_tied_own=v2t[2],
        group_ahead=group_ahead, group_tied=group_tied, one_per_video=one_per_video,
    )


def _weighted_median(values: np.ndarray, weights: np.ndarray, lower: bool) -> float:
    """``np.median`` (or the lower middle value, as ``torch.median``) of a weighted multiset."""
    order = np.argsort(values, kind="stable")
    values, cumulative = values[order], np.cumsum(weights[order])
    total = int(cumulative[-1])

    def element(k: int) -> float:  # the k-th (0-based) element of the expanded, sorted multiset
        return float(values[np.searchsorted(cumulative, k, side="right")])

    if lower or total % 2:
        return element((total - 1) // 2)
    return (element(total // 2 - 1) + element(total // 2)) / 2


def _summary(
    ranks: np.ndarray,
    weights: np.ndarray | None = None,
    lower_median: bool = False,
    frozen_recall: bool = False,
) -> dict[str, float]:
    """R@K, MedR, MeanR of 1-based (possibly fractional) ranks; ``weights`` repeat a rank.

    ``frozen_recall`` uses Frozen's thresholds on 0-based ranks: ``r == 0`` for R@1 and
    ``r < K`` above, so an averaged rank of 4.5 (0-based) counts for R@5 there.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    weights = np.ones_like(ranks) if weights is None else np.asarray(weights, dtype=np.float64)
    total = weights.sum()
    out: dict[str, float] = {}
    for k in RECALL_AT:
        if frozen_recall:
            hit = ranks == 1 if k == 1 else ranks - 1 < k
        else:
            hit = ranks <= k
        out[f"R@{k}"] = float(100.0 * weights[hit].sum() / total)
    out["MedR"] = _weighted_median(ranks, weights, lower_median)
    out["MeanR"] = float((ranks * weights).sum() / total)
    out["count"] = len(ranks)
    return out


def _tie_multiset(ahead: np.ndarray, tied_with_gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CLIP4Clip's ``compute_metrics``: a query level with ``e`` items contributes every tied
    position ``ahead .. ahead + e`` (1-based ranks ``ahead + 1 .. ahead + e + 1``) as its own
    entry; returned as a histogram ``(ranks, weights)`` so that no list of pairs is formed."""
    size = int((ahead + tied_with_gt).max()) + 2
    diff = np.zeros(size + 1, dtype=np.int64)
    np.add.at(diff, ahead, 1)
    np.add.at(diff, ahead + tied_with_gt + 1, -1)
    weights = np.cumsum(diff)[:size]
    ranks = np.arange(1, size + 1, dtype=np.float64)
    keep = weights > 0
    return ranks[keep], weights[keep]


def summarize(counts: RankCounts, convention: Convention = "pessimistic") -> dict[str, dict]:
    """Metrics of one convention from :func:`count_ranks`' counts.

    Returns:
        ``{"t2v": {...}, "v2t": {...}}``, each with ``R@1``, ``R@5``, ``R@10`` (percent),
        ``MedR``, ``MeanR`` (1-based ranks) and ``count`` (queries, resp. videos).
    """
    c = counts
    if convention == "pessimistic":
        return {"t2v": _summary(c.t2v_ahead + c.t2v_tied + 1),
                "v2t": _summary(c.v2t_ahead + c.v2t_tied + 1)}
    if convention == "average":
        return {"t2v": _summary(c.t2v_ahead + c.t2v_tied / 2 + 1),
                "v2t": _summary(c.v2t_ahead + c.v2t_tied / 2 + 1)}
    if convention == "optimistic":
        return {"t2v": _summary(c.t2v_ahead + 1), "v2t": _summary(c.v2t_ahead + 1)}
    if convention == "frozen":
        # t2v: the first tied position; v2t: the mean tied position among *all* captions, own
        # ones included, minimised over the video's captions (reached at its best caption).
        v2t = c.v2t_ahead + (c.v2t_tied + c.v2t_tied_own) / 2 + 1
        return {"t2v": _summary(c.t2v_ahead + 1, frozen_recall=True),
                "v2t": _summary(v2t, frozen_recall=True)}
    if convention == "clip4clip":
        if c.one_per_video:
            t2v = _summary(*_tie_multiset(c.t2v_ahead, c.t2v_tied))
            v2t = _summary(*_tie_multiset(c.v2t_ahead, c.v2t_tied))
        else:
            # Per-sentence t2v: a double argsort puts tied videos in column order; the median
            # is torch.median's lower middle value. v2t ranks caption groups by their maximum.
            t2v = _summary(c.t2v_ahead + c.t2v_tied_before + 1, lower_median=True)
            v2t = _summary(*_tie_multiset(c.group_ahead, c.group_tied))
        t2v["count"], v2t["count"] = len(c.t2v_ahead), len(c.v2t_ahead)
        return {"t2v": t2v, "v2t": v2t}
    raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


def retrieval_metrics(
    sim: torch.Tensor | np.ndarray,
    query_to_video: torch.Tensor | np.ndarray,
    convention: Convention = "pessimistic",
    chunk_size: int | None = None,
) -> dict[str, dict]:
    """Text-to-video and video-to-text metrics of a similarity matrix.

    Args:
        sim: ``(Q, V)`` similarities (queries × videos); see the module docstring.
        query_to_video: ``(Q,)`` integer video index of each query.
        convention: tie and median rules; ``"pessimistic"`` (ours) unless comparing with a peer.
        chunk_size: rows per chunk (``None``: automatic).

    Returns:
        ``{"t2v": {"R@1", "R@5", "R@10", "MedR", "MeanR", "count"}, "v2t": {...}}``.

    Raises:
        ValueError: see :func:`count_ranks`, or an unknown convention.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    return summarize(count_ranks(sim, query_to_video, chunk_size), convention)


def compare_conventions(
    sim: torch.Tensor | np.ndarray,
    query_to_video: torch.Tensor | np.ndarray,
    chunk_size: int | None = None,
) -> dict[str, dict[str, dict]]:
    """Every convention's metrics of one matrix (the counts are computed once)."""
    counts = count_ranks(sim, query_to_video, chunk_size)
    return {name: summarize(counts, name) for name in CONVENTIONS}

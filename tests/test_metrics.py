"""Retrieval metrics against brute-force references built from full sorts of every row.

The references sort each row in plain numpy/Python (the way the peers' code does) and are
independent of the counting in ``mof.metrics``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mof.metrics import CONVENTIONS, compare_conventions, count_ranks, retrieval_metrics

# --- brute-force references ---------------------------------------------------------------

def _summary(ranks, lower_median=False, frozen_recall=False) -> dict:
    ranks = np.asarray(ranks, dtype=np.float64)
    out = {}
    for k in (1, 5, 10):
        if frozen_recall:  # Frozen's cols2metrics on 0-based ranks
            hits = (ranks - 1 == 0) if k == 1 else (ranks - 1 < k)
        else:
            hits = ranks <= k
        out[f"R@{k}"] = 100.0 * hits.mean()
    out["MedR"] = float(torch.median(torch.tensor(ranks))) if lower_median else np.median(ranks)
    out["MeanR"] = ranks.mean()
    return out


def _first_relevant_rank(scores, relevant, relevant_first_on_ties: bool) -> int:
    """1-based position of the first relevant item after sorting by score (descending)."""
    tie_key = (lambda i: 0 if relevant[i] else 1) if relevant_first_on_ties else (
        lambda i: 1 if relevant[i] else 0)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], tie_key(i)))
    return next(pos for pos, i in enumerate(order) if relevant[i]) + 1


def reference_ours(sim, q2v, convention):
    q, v = sim.shape
    t2v, v2t = [], []
    for row in range(q):
        relevant = [col == q2v[row] for col in range(v)]
        opt = _first_relevant_rank(sim[row], relevant, True)
        pes = _first_relevant_rank(sim[row], relevant, False)
        t2v.append({"optimistic": opt, "pessimistic": pes, "average": (opt + pes) / 2}[convention])
    for col in range(v):
        relevant = [q2v[row] == col for row in range(q)]
        opt = _first_relevant_rank(sim[:, col], relevant, True)
        pes = _first_relevant_rank(sim[:, col], relevant, False)
        v2t.append({"optimistic": opt, "pessimistic": pes, "average": (opt + pes) / 2}[convention])
    return {"t2v": _summary(t2v), "v2t": _summary(v2t)}


def reference_frozen(sim, q2v):
    """Frozen's t2v_metrics / v2t_metrics, generalised from contiguous rows to query_to_video."""
    dists = -sim
    t2v = []
    for row in range(sim.shape[0]):
        sorted_row = np.sort(dists[row])
        t2v.append(np.where(sorted_row == dists[row, q2v[row]])[0][0] + 1)  # first tied position
    v2t = []
    for col in range(sim.shape[1]):
        sorted_col = np.sort(dists[:, col])
        caption_ranks = [np.where(sorted_col == dists[row, col])[0].mean()
                         for row in np.flatnonzero(q2v == col)]
        v2t.append(min(caption_ranks) + 1)
    return {"t2v": _summary(t2v, frozen_recall=True), "v2t": _summary(v2t, frozen_recall=True)}


def _compute_metrics(x) -> dict:
    """CLIP4Clip's compute_metrics: diagonal ground truth, every tied position an entry."""
    sx = np.sort(-x, axis=1)
    d = np.diag(-x)[:, None]
    ind = np.where(sx - d == 0)[1]
    return {"R@1": 100.0 * np.mean(ind == 0), "R@5": 100.0 * np.mean(ind < 5),
            "R@10": 100.0 * np.mean(ind < 10), "MedR": np.median(ind) + 1,
            "MeanR": np.mean(ind) + 1}


def reference_clip4clip(sim, q2v):
    q, v = sim.shape
    if q == v and sorted(q2v.tolist()) == list(range(v)):
        x = sim[:, q2v]  # column i is query i's video: the ground truth on the diagonal
        return {"t2v": _compute_metrics(x), "v2t": _compute_metrics(x.T)}
    # MSVD form: (V, max_sent, V) padded with -inf, ranks by a double argsort.
    max_sent = np.bincount(q2v, minlength=v).max()
    padded = torch.full((v, max_sent, v), float("-inf"), dtype=torch.float64)
    for video in range(v):
        rows = np.flatnonzero(q2v == video)
        padded[video, : len(rows)] = torch.from_numpy(sim[rows])
    per_sentence = padded.permute(1, 0, 2)
    ranks = torch.argsort(torch.argsort(-per_sentence, dim=2, stable=True), dim=2, stable=True)
    gt_ranks = torch.diagonal(ranks, dim1=1, dim2=2)
    valid = torch.isfinite(torch.diagonal(per_sentence, dim1=1, dim2=2))
    t2v = _summary((gt_ranks[valid] + 1).numpy(), lower_median=True)
    group_max = padded.max(dim=1).values  # [video i's captions, video j]
    return {"t2v": t2v, "v2t": _compute_metrics(group_max.T.numpy())}


def reference(sim, q2v, convention):
    if convention == "frozen":
        return reference_frozen(sim, q2v)
    if convention == "clip4clip":
        return reference_clip4clip(sim, q2v)
    return reference_ours(sim, q2v, convention)


# --- test matrices --------------------------------------------------------------------------

def _matrix(kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind in ("random", "tied", "paragraph"):  # one query per video, rows shuffled
        num_videos = {"random": 37, "tied": 23, "paragraph": 12}[kind]
        q2v = rng.permutation(num_videos)
    else:  # many captions per video (MSVD): 1..6 each, rows shuffled
        q2v = rng.permutation(np.repeat(np.arange(9), rng.integers(1, 7, size=9)))
        num_videos = 9
    signal = (q2v[:, None] == np.arange(num_videos)[None]) * 0.8
    sim = signal + rng.normal(size=(len(q2v), num_videos))
    if kind in ("tied", "many-tied"):
        sim = np.round(sim * 2) / 2  # a coarse grid: ties everywhere, also at the ground truth
    return sim, q2v


KINDS = ["random", "tied", "paragraph", "many", "many-tied"]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("convention", CONVENTIONS)
def test_matches_brute_force(kind, convention, seed):
    sim, q2v = _matrix(kind, seed)
    got = retrieval_metrics(sim, q2v, convention=convention)
    expected = reference(sim, q2v, convention)
    for direction in ("t2v", "v2t"):
        for name, value in expected[direction].items():
            assert got[direction][name] == pytest.approx(value), (direction, name)
    assert got["t2v"]["count"] == len(q2v) and got["v2t"]["count"] == sim.shape[1]


def test_tied_matrices_really_tie_at_the_ground_truth():
    # Guard for the test data above: the conventions only differ if ties reach the GT, and
    # Frozen's v2t only if a video's own captions tie with its best one.
    for kind in ("tied", "many-tied"):
        counts = count_ranks(*_matrix(kind))
        assert counts.t2v_tied.sum() > 0 and counts.v2t_tied.sum() > 0
    assert count_ranks(*_matrix("many-tied", seed=1)).v2t_tied_own.sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_chunking_equals_unchunked(kind):
    sim, q2v = _matrix(kind, seed=3)
    whole = count_ranks(sim, q2v, chunk_size=len(q2v))
    for chunk in (1, 4):
        part = count_ranks(torch.from_numpy(sim).float(), torch.from_numpy(q2v), chunk_size=chunk)
        for field in ("t2v_ahead", "t2v_tied", "t2v_tied_before", "v2t_ahead", "v2t_tied",
                      "v2t_tied_own", "group_ahead", "group_tied"):
            a, b = getattr(whole, field), getattr(part, field)
            assert (a is None and b is None) or np.array_equal(a, b), field


def test_nan_raises_naming_the_row():
    sim, q2v = _matrix("many")
    sim[7, 2] = np.nan
    with pytest.raises(ValueError, match=r"row 7 \(query 7\) is NaN at column 2"):
        retrieval_metrics(sim, q2v, chunk_size=3)


def test_bad_inputs_raise():
    sim = np.zeros((3, 3))
    with pytest.raises(ValueError, match="no query"):
        retrieval_metrics(sim, np.array([0, 0, 1]))
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(sim, np.array([0, 1, 3]))
    with pytest.raises(ValueError, match=r"\(3,\) integers"):
        retrieval_metrics(sim, np.array([0, 1]))
    with pytest.raises(ValueError, match="convention"):
        retrieval_metrics(sim, np.array([0, 1, 2]), convention="median")


def test_constant_scores_rank_last_under_ours():
    """A collapsed model cannot score: ours ranks a tie last, Frozen's t2v ranks it first."""
    sim, q2v = np.zeros((20, 20)), np.arange(20)
    metrics = compare_conventions(sim, q2v)
    assert metrics["pessimistic"]["t2v"]["R@1"] == 0 and metrics["pessimistic"]["t2v"]["MedR"] == 20
    assert metrics["frozen"]["t2v"]["R@1"] == 100
    assert metrics["clip4clip"]["t2v"]["R@1"] == pytest.approx(100 / 20)


def test_conventions_differ_only_through_ties():
    """By how much the conventions differ on the same matrix (numbers in docs/metrics.md)."""
    sim, q2v = _matrix("random", seed=5)
    metrics = compare_conventions(sim, q2v)
    for name in CONVENTIONS:  # continuous scores, one caption per video: all agree
        assert metrics[name] == metrics["pessimistic"], name

    sim, q2v = _matrix("many-tied", seed=5)
    metrics = compare_conventions(sim, q2v)
    low, mid, high = (metrics[n]["t2v"] for n in ("pessimistic", "average", "optimistic"))
    for k in ("R@1", "R@5", "R@10"):
        assert low[k] <= mid[k] <= high[k]
    assert low["MeanR"] > mid["MeanR"] > high["MeanR"]
    assert metrics["frozen"]["t2v"] == high  # Frozen's t2v is the optimistic rule
    gap = metrics["frozen"]["t2v"]["R@1"] - metrics["pessimistic"]["t2v"]["R@1"]
    assert gap > 0

    # Without ties the many-caption v2t still differs for CLIP4Clip: it ranks caption groups
    # (at most V - 1 competitors) where ours ranks captions.
    sim, q2v = _matrix("many", seed=5)
    metrics = compare_conventions(sim, q2v)
    assert metrics["frozen"]["v2t"] == metrics["pessimistic"]["v2t"]
    assert metrics["clip4clip"]["v2t"]["MeanR"] <= metrics["pessimistic"]["v2t"]["MeanR"]
    assert metrics["clip4clip"]["v2t"]["MeanR"] <= sim.shape[1]

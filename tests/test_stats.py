"""Paired intervals of ``mof.stats`` against hand computations and a brute-force bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mof.stats import paired_bootstrap, query_metric, t_interval


def test_t_interval_matches_the_textbook_formula():
    d = [1.0, 2.0, 0.5, 1.5, 3.0]
    ci = t_interval(d)
    half = 2.776 * np.std(d, ddof=1) / math.sqrt(5)  # t_{0.975, 4}
    assert (ci.mean, ci.low, ci.high, ci.n) == pytest.approx((1.6, 1.6 - half, 1.6 + half, 5))
    assert ci.excludes_zero and ci.kind == "seeds"
    assert not t_interval([1.0, -1.0, 0.5]).excludes_zero
    assert t_interval([2.0]) is None


def test_query_metrics_on_unit_weights():
    rank = np.array([1.0, 3.0, 7.0, 12.0])
    loss = np.array([0.5, 1.0, 1.5, 2.0])
    w = np.ones((1, 4))
    assert query_metric("R@1")(rank, loss, w) == pytest.approx([25.0])
    assert query_metric("R@5")(rank, loss, w) == pytest.approx([50.0])
    assert query_metric("R@10")(rank, loss, w) == pytest.approx([75.0])
    assert query_metric("MeanR")(rank, loss, w) == pytest.approx([5.75])
    assert query_metric("loss")(rank, loss, w) == pytest.approx([1.25])
    with pytest.raises(ValueError, match="MedR"):
        query_metric("MedR")


def test_paired_bootstrap_matches_a_loop_over_resampled_videos():
    rng = np.random.default_rng(3)
    videos, per = 40, 3
    video = np.repeat(np.arange(videos), per)
    # Model a finds its video more often than b, on two seeds.
    a = [(rng.integers(1, 4, video.size).astype(float), rng.random(video.size)) for _ in range(2)]
    b = [(rng.integers(1, 8, video.size).astype(float), rng.random(video.size)) for _ in range(2)]
    ci = paired_bootstrap("R@1", video, a, b, resamples=500, seed=7)
    # The same resamples drawn by hand: videos with replacement, all of their captions.
    gen = np.random.default_rng(7)
    counts = gen.multinomial(videos, np.full(videos, 1 / videos), 500)
    diffs = []
    for c in counts:
        idx = np.concatenate([np.flatnonzero(video == v).repeat(n) for v, n in enumerate(c)])
        diffs.append(np.mean([100 * ((ra[idx] <= 1).mean() - (rb[idx] <= 1).mean())
                              for (ra, _), (rb, _) in zip(a, b, strict=True)]))
    low, high = np.percentile(diffs, [2.5, 97.5])
    plain = np.mean([100 * ((ra <= 1).mean() - (rb <= 1).mean()) for (ra, _), (rb, _) in
                     zip(a, b, strict=True)])
    assert (ci.mean, ci.low, ci.high) == pytest.approx((plain, low, high))
    assert ci.excludes_zero and ci.low > 0 and ci.kind == "queries"


def test_paired_bootstrap_rejects_mismatched_runs():
    video = np.arange(5)
    run = (np.ones(5), np.ones(5))
    with pytest.raises(ValueError, match="same seeds"):
        paired_bootstrap("R@1", video, [run], [])
    with pytest.raises(ValueError, match="4 queries"):
        paired_bootstrap("R@1", video, [run], [(np.ones(4), np.ones(4))])

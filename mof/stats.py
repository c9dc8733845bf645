"""Paired comparisons of two models: intervals over training seeds and over test queries.

A MOF run and its equal-cost baseline of the same seed share the initial weights, the data
order and the draws, so their difference is measured per seed (*paired*), and the test set is
the same for both, so the difference can also be resampled query by query. Two intervals:

* :func:`t_interval` over seeds: Student's t interval of the mean per-seed difference. It
  covers training randomness (the seed-to-seed variation of the difference), the uncertainty a
  claim "MOF helps" must beat. It needs two seeds or more.
* :func:`paired_bootstrap` over test queries: the percentile interval of the difference,
  resampling test *videos* with replacement (a video's captions move together; they are not
  independent queries) and applying the same resample to both models and every seed. It covers
  the finite test set, not training randomness: with one seed it is the only interval there is,
  and it is then labelled as such.

Only numpy; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Interval",
    "paired_bootstrap",
    "query_metric",
    "t_interval",
]

# Two-sided 95 % quantiles t_{0.975, df} for df = 1 … 30; beyond, the normal 1.96 is within 2 %.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


@dataclass(frozen=True)
class Interval:
    """A mean difference and its 95 % interval.

    Attributes:
        mean: the point estimate (mean over seeds of the paired differences).
        low, high: the interval's ends.
        n: seeds (``t_interval``) or bootstrap resamples (``paired_bootstrap``).
        kind: ``seeds`` or ``queries``.
    """

    mean: float
    low: float
    high: float
    n: int
    kind: str

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def format(self, digits: int = 1) -> str:
        """``+1.2 [+0.3, +2.1]``."""
        return (f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, "
                f"{self.high:+.{digits}f}]")


def t_interval(differences: Sequence[float]) -> Interval | None:
    """95 % Student's t interval of the mean of per-seed paired differences.

    Returns:
        The interval, or ``None`` for fewer than two differences.
    """
    d = np.asarray(differences, dtype=np.float64)
    n = len(d)
    if n < 2:
        return None
    mean = float(d.mean())
    half = (_T975[n - 2] if n - 1 <= len(_T975) else 1.96) * float(d.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, "seeds")


def query_metric(name: str) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """A metric of weighted queries: ``f(rank, loss, weights) -> (resamples,)``.

    ``rank`` ``(Q,)`` 1-based text-to-video ranks, ``loss`` ``(Q,)`` per-query test loss,
    ``weights`` ``(N, Q)`` how often each query is drawn in each of ``N`` resamples.
    Names: ``R@1``, ``R@5``, ``R@10`` (percent), ``MeanR``, ``loss``.

    Raises:
        ValueError: an unknown name (the median rank has no weighted form here).
    """
    def recall(k: int):
        return lambda rank, loss, w: 100.0 * (w @ (rank <= k)) / w.sum(1)

    table = {"R@1": recall(1), "R@5": recall(5), "R@10": recall(10),
             "MeanR": lambda rank, loss, w: (w @ rank) / w.sum(1),
             "loss": lambda rank, loss, w: (w @ loss) / w.sum(1)}
    if name not in table:
        raise ValueError(f"no query-level form of {name!r}; choose from {sorted(table)}")
    return table[name]


def paired_bootstrap(
    metric: str,
    video: np.ndarray,
    a: Sequence[tuple[np.ndarray, np.ndarray]],
    b: Sequence[tuple[np.ndarray, np.ndarray]],
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """Percentile interval of mean-over-seeds ``metric(a) - metric(b)``, resampling videos.

    Args:
        metric: a :func:`query_metric` name.
        video: ``(Q,)`` the test video of each query (the same for every run compared).
        a, b: per seed, ``(rank, loss)`` of the two models, each ``(Q,)``; seed ``i`` of ``a``
            is paired with seed ``i`` of ``b``.
        resamples: bootstrap resamples.
        seed: the resampling generator's seed (the interval is reproducible).

    Returns:
        An :class:`Interval` of kind ``queries`` whose ``mean`` is the plain difference.

    Raises:
        ValueError: no seeds, or runs whose query count differs from ``video``'s.
    """
    if not a or len(a) != len(b):
        raise ValueError(f"paired_bootstrap needs the same seeds on both sides, got {len(a)} "
                         f"and {len(b)}")
    video = np.asarray(video)
    for rank, loss in (*a, *b):
        if len(rank) != len(video) or len(loss) != len(video):
            raise ValueError(f"runs with {len(rank)} queries against {len(video)} test queries")
    f = query_metric(metric)
    videos, inverse = np.unique(video, return_inverse=True)
    rng = np.random.default_rng(seed)
    # How often each video is drawn per resample; a query inherits its video's count.
    counts = rng.multinomial(len(videos), np.full(len(videos), 1 / len(videos)), resamples)
    weights = np.vstack([np.ones((1, len(video))), counts[:, inverse]]).astype(np.float64)
    diff = np.zeros(resamples + 1)
    for (rank_a, loss_a), (rank_b, loss_b) in zip(a, b, strict=True):
        diff += (f(np.asarray(rank_a, np.float64), np.asarray(loss_a, np.float64), weights)
                 - f(np.asarray(rank_b, np.float64), np.asarray(loss_b, np.float64), weights))
    diff /= len(a)
    low, high = np.percentile(diff[1:], [2.5, 97.5])
    return Interval(float(diff[0]), float(low), float(high), resamples, "queries")

"""How much of a synthetic video a few frames reveal, computed from its timeline.

These numbers say whether the dataset rewards seeing more frames: the fraction of caption events
that R frames land in, and the text-to-video R@1 of an idealised **bag-of-objects oracle** that
recognises every object drawn on its R frames perfectly but knows nothing of time (no order, no
motion): the gap between R = 1 and R = 8 is the information only more frames carry.
"""

from __future__ import annotations

import numpy as np

from pipeline.sampling import segment_midpoints
from pipeline.synth.grammar import Caption, VideoPlan
from pipeline.synth.render import sprite_state

__all__ = ["event_coverage", "oracle_recall_at_1"]


def event_coverage(plan: VideoPlan, indices: np.ndarray) -> float:
    """Fraction of the video's events with at least one of ``indices`` inside their window."""
    idx = np.asarray(indices)
    seen = [bool(np.any((idx >= ev.start) & (idx < ev.end))) for ev in plan.events]
    return float(np.mean(seen))


def _key(colour: str, shape: str, detail: str) -> tuple[str | None, str | None]:
    """An object as a caption of this detail names it (colour, shape, or both)."""
    return (None if detail == "shape" else colour, None if detail == "colour" else shape)


def _drawn(plan: VideoPlan, indices: np.ndarray, detail: str) -> set:
    keys = set()
    for t in indices:
        for sp in plan.sprites:
            state = sprite_state(sp, int(t))
            if state is not None:
                keys.add(_key(state[3], sp.shape, detail))
    return keys


def _named(plan: VideoPlan, cap: Caption) -> set:
    keys = set()
    for n in cap.events:
        ev = plan.events[n]
        keys.add(_key(ev.colour, ev.shape, cap.detail))
        if ev.new_colour:
            keys.add(_key(ev.new_colour, ev.shape, cap.detail))
    return keys


def oracle_recall_at_1(plans: list[VideoPlan], r: int, canonical_only: bool = False) -> float:
    """Text-to-video R@1 of the bag-of-objects oracle on R segment-midpoint frames.

    Each caption scores each video by the Jaccard overlap between the objects it names and the
    objects drawn on the video's R frames; ties count as a uniform random pick among them.

    Args:
        plans: the videos of one split (the gallery), each with its captions (the queries).
        r: frames per video.
        canonical_only: use only each video's first (full-detail) caption as a query.

    Returns:
        Mean over queries of P(the caption's own video ranks first).
    """
    frames = {p.video_id: segment_midpoints(p.num_frames, r) for p in plans}
    gallery = {d: [_drawn(p, frames[p.video_id], d) for p in plans]
               for d in ("full", "shape", "colour")}
    hits = []
    for own, plan in enumerate(plans):
        for cap in plan.captions[:1] if canonical_only else plan.captions:
            named = _named(plan, cap)
            score = np.array([len(named & g) / max(1, len(named | g)) for g in gallery[cap.detail]])
            top = np.flatnonzero(score == score.max())
            hits.append(1.0 / len(top) if own in top else 0.0)
    return float(np.mean(hits))

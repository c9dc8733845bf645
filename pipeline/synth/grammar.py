"""The event grammar of the synthetic dataset: objects, actions and their timeline.

A video is a short sequence of **events**. Each event names one object (a colour and a shape)
and one action, and happens in its own window of frames; windows do not overlap and come in
caption order. An object is drawn only while one of its events is running, except for an
``appear`` … ``vanish`` pair, whose object stays put from the moment it appears to the moment
it vanishes while other events happen around it. So a single frame shows at most one running
event (plus a still object), while frames spread over the video see every event.

Frame indices are 0-based and windows are half-open ``[start, end)``; sizes and positions are
in pixels of the square output frame (drawn at 64 px, scaled for other sizes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

__all__ = [
    "ACTIONS",
    "BACKGROUND",
    "DIRECTIONS",
    "PALETTE",
    "SHAPES",
    "Caption",
    "Event",
    "Sprite",
    "VideoPlan",
    "min_window",
    "plan_events",
    "with_captions",
]

# Saturated colours far apart in RGB *and* in chroma, so H.264 4:2:0 at 64 px keeps them
# distinct inside shapes of >= 10 px (measured by tests/test_synth.py on decoded pixels).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 70),
    "blue": (50, 90, 250),
    "yellow": (240, 220, 40),
    "cyan": (40, 210, 230),
    "magenta": (220, 60, 220),
    "white": (240, 240, 240),
}
# One plain background for every video: a per-video background would identify a video from
# any single frame and make retrieval trivial.
BACKGROUND: tuple[int, int, int] = (24, 24, 30)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
ACTIONS: tuple[str, ...] = ("move", "grow", "shrink", "turn", "flash", "appear", "vanish")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")

# Mixture of single-window actions, and how often a video gets an appear…vanish pair / a flash.
_SOLO_ACTIONS = ("move", "grow", "shrink", "turn")
_SOLO_WEIGHTS = np.array([0.45, 0.15, 0.15, 0.25])
_PAIR_PROB = 0.35
_FLASH_PROB = 0.4
# Geometry at 64 px (scaled by size / 64): resting size, grow/shrink range, travel distance.
_BASE_SIZE = (13.0, 18.0)
_GROW_RANGE = (10.0, 26.0)
_FLASH_SIZE = 18.0
_TRAVEL = (0.38, 0.5)  # fraction of the frame side
_CORNER = 0.12  # the still object's centre lies this fraction of the side from a corner


@dataclass(frozen=True)
class Event:
    """One captioned event.

    Attributes:
        action: one of ``ACTIONS``.
        colour: the object's colour when the event starts (a ``PALETTE`` key).
        shape: one of ``SHAPES``.
        start: first frame of the event's window (inclusive).
        end: frame after the window (exclusive).
        obj: index of the object in the video; an appear/vanish pair shares it.
        direction: for ``move``, one of ``DIRECTIONS``.
        new_colour: for ``turn``, the colour the object turns into.
    """

    action: str
    colour: str
    shape: str
    start: int
    end: int
    obj: int
    direction: str | None = None
    new_colour: str | None = None


@dataclass(frozen=True)
class Sprite:
    """How one object is drawn: visible on frames ``[first, last)``, moving and resizing
    linearly from its start state to its end state, changing colour at frame ``switch``.

    Attributes:
        shape: one of ``SHAPES``.
        colours: colour before and from frame ``switch`` on.
        first: first visible frame; last: frame after the last visible one.
        switch: frame at which ``colours[1]`` takes over (``last`` when it never does).
        xy0, xy1: centre ``(x, y)`` in pixels on the first and the last visible frame.
        size0, size1: bounding-box side in pixels on the first and the last visible frame.
    """

    shape: str
    colours: tuple[str, str]
    first: int
    last: int
    switch: int
    xy0: tuple[float, float]
    xy1: tuple[float, float]
    size0: float
    size1: float


@dataclass(frozen=True)
class Caption:
    """A caption and what it says: which events (in order), at which level of detail."""

    text: str
    template: str
    detail: str  # "full" (colour and shape), "shape" or "colour"
    events: tuple[int, ...]


@dataclass(frozen=True)
class VideoPlan:
    """Everything needed to render and caption one video; rendering is a pure function of it."""

    video_id: str
    split: str
    num_frames: int
    size: int
    events: tuple[Event, ...]
    sprites: tuple[Sprite, ...]
    captions: tuple[Caption, ...] = field(default=())


def min_window(num_frames: int) -> int:
    """Shortest window of a non-flash event: ``ceil(T / 8)`` frames.

    Any ``ceil(T/8)`` consecutive frames contain one of the 8 segment midpoints, so 8 frames
    sampled at segment midpoints land in every non-flash event.
    """
    return max(2, math.ceil(num_frames / 8))


def _event_kinds(rng: np.random.Generator, k: int) -> list[str]:
    """Actions of the k events in order: at most one appear…vanish pair, at most one flash."""
    kinds: list[str | None] = [None] * k
    if k >= 3 and rng.random() < _PAIR_PROB:
        i = int(rng.integers(0, k - 2))
        j = int(rng.integers(i + 2, k))
        kinds[i], kinds[j] = "appear", "vanish"
    free = [n for n, a in enumerate(kinds) if a is None]
    if free and rng.random() < _FLASH_PROB:
        kinds[free[int(rng.integers(len(free)))]] = "flash"
    solo = rng.choice(len(_SOLO_ACTIONS), size=k, p=_SOLO_WEIGHTS)
    return [a if a is not None else _SOLO_ACTIONS[int(s)] for a, s in zip(kinds, solo)]


def _windows(
    rng: np.random.Generator, kinds: list[str], num_frames: int, flash_frames: int
) -> list[tuple[int, int]]:
    """Consecutive non-overlapping windows, separated by short random gaps."""
    k = len(kinds)
    lengths = [flash_frames if a == "flash" else min_window(num_frames) for a in kinds]
    spare = num_frames - sum(lengths)
    # Non-flash windows take most of the spare frames; the k+1 gaps (blank stretches) a little.
    grows = [n for n, a in enumerate(kinds) if a != "flash"]
    alpha = [2.0] * len(grows) + [0.5] * (k + 1)
    extra = rng.multinomial(spare, rng.dirichlet(alpha))
    for n, e in zip(grows, extra[: len(grows)]):
        lengths[n] += int(e)
    gaps = extra[len(grows):]
    out, t = [], 0
    for n in range(k):
        t += int(gaps[n])
        out.append((t, t + lengths[n]))
        t += lengths[n]
    return out


def _objects(rng: np.random.Generator, kinds: list[str]) -> list[tuple[str, str, str | None]]:
    """(colour, shape, new colour for ``turn``) per event; every identity in a video distinct."""
    colours, combos = list(PALETTE), [(c, s) for c in PALETTE for s in SHAPES]
    while True:
        picks = rng.choice(len(combos), size=len(kinds), replace=False)
        objs, seen, ok = [], set(), True
        for kind, p in zip(kinds, picks):
            colour, shape = combos[int(p)]
            if kind == "vanish":  # the object that appeared earlier
                colour, shape = next((c, s) for (c, s, _), a in zip(objs, kinds) if a == "appear")
            new = None
            if kind == "turn":
                new = colours[int(rng.choice([i for i, c in enumerate(colours) if c != colour]))]
                ok &= (new, shape) not in seen
                seen.add((new, shape))
            if kind != "vanish":
                ok &= (colour, shape) not in seen
                seen.add((colour, shape))
            objs.append((colour, shape, new))
        if ok:
            return objs


def _place(
    rng: np.random.Generator, kind: str, direction: str | None, size: int
) -> tuple[tuple[float, float], tuple[float, float], float, float]:
    """Start/end centre and size of one object, kept wholly inside the frame."""
    scale = size / 64.0
    if kind in ("grow", "shrink"):
        s0, s1 = (_GROW_RANGE if kind == "grow" else _GROW_RANGE[::-1])
    elif kind == "flash":
        s0 = s1 = _FLASH_SIZE
    else:
        s0 = s1 = float(rng.uniform(*_BASE_SIZE))
    s0, s1 = s0 * scale, s1 * scale
    margin = max(s0, s1) / 2 + 1.0
    lo, hi = margin, size - margin
    x, y = rng.uniform(lo, hi, size=2)
    if kind == "appear":
        # The still object sits near a corner, leaving room for the events drawn meanwhile.
        band = _CORNER * size
        x, y = (lo + v if side else hi - v for v, side in zip(rng.uniform(0, band, 2),
                                                               rng.integers(0, 2, 2)))
    if kind != "move":
        return (float(x), float(y)), (float(x), float(y)), s0, s1
    d = float(rng.uniform(*_TRAVEL)) * size
    sign = -1.0 if direction in ("left", "up") else 1.0
    a = float(rng.uniform(lo + d, hi) if sign < 0 else rng.uniform(lo, hi - d))
    if direction in ("left", "right"):
        return (a, float(y)), (a + sign * d, float(y)), s0, s1
    return (float(x), a), (float(x), a + sign * d), s0, s1


def _clear_of(sprite: Sprite, other: Sprite | None) -> bool:
    """True when ``sprite`` never overlaps ``other`` (boxes checked along the path)."""
    if other is None or sprite.last <= other.first or other.last <= sprite.first:
        return True
    ox, oy = other.xy0
    for u in np.linspace(0.0, 1.0, 9):
        x = sprite.xy0[0] + u * (sprite.xy1[0] - sprite.xy0[0])
        y = sprite.xy0[1] + u * (sprite.xy1[1] - sprite.xy0[1])
        reach = (sprite.size0 + u * (sprite.size1 - sprite.size0) + other.size0) / 2 + 1.0
        if abs(x - ox) < reach and abs(y - oy) < reach:
            return False
    return True


def _sprite(
    rng: np.random.Generator, ev: Event, size: int, until: int, avoid: Sprite | None
) -> Sprite:
    """Draw ``ev``'s object; an ``appear`` sprite lasts ``until`` (its vanish moment)."""
    for _ in range(50):  # rejection sampling keeps the moving objects off the still one
        xy0, xy1, s0, s1 = _place(rng, ev.action, ev.direction, size)
        first, last = ev.start, ev.end
        if ev.action == "appear":
            first, last = (ev.start + ev.end) // 2, until
        switch = (ev.start + ev.end) // 2 if ev.action == "turn" else last
        colours = (ev.colour, ev.new_colour or ev.colour)
        sp = Sprite(ev.shape, colours, first, last, switch, xy0, xy1, s0, s1)
        if _clear_of(sp, avoid):
            return sp
    return sp


def plan_events(
    rng: np.random.Generator, *, num_frames: int, size: int, min_events: int, max_events: int,
    flash_frames: int,
) -> tuple[tuple[Event, ...], tuple[Sprite, ...]]:
    """Sample the events of one video and the sprites that show them.

    Args:
        rng: the video's random generator (consumed).
        num_frames: T, frames in the video.
        size: S, side of the square frame in pixels.
        min_events, max_events: inclusive range of the number of events.
        flash_frames: length in frames of a ``flash`` window.

    Returns:
        ``(events, sprites)``: events in temporal order; sprites in drawing order (the still
        object of an appear…vanish pair first, so running events are drawn over it).
    """
    kinds = _event_kinds(rng, int(rng.integers(min_events, max_events + 1)))
    windows = _windows(rng, kinds, num_frames, flash_frames)
    objs = _objects(rng, kinds)
    appear_obj = kinds.index("appear") if "appear" in kinds else None
    events = []
    for n, (kind, (s, e), (colour, shape, new)) in enumerate(zip(kinds, windows, objs)):
        direction = DIRECTIONS[int(rng.integers(4))] if kind == "move" else None
        obj = appear_obj if kind == "vanish" else n
        events.append(Event(kind, colour, shape, s, e, obj, direction, new))
    still = None
    if appear_obj is not None:
        vanish = events[kinds.index("vanish")]
        still = _sprite(rng, events[appear_obj], size, (vanish.start + vanish.end) // 2, None)
    sprites = [still] if still else []
    for ev in events:
        if ev.action not in ("appear", "vanish"):
            sprites.append(_sprite(rng, ev, size, ev.end, still))
    return tuple(events), tuple(sprites)


def with_captions(plan: VideoPlan, captions: tuple[Caption, ...]) -> VideoPlan:
    """``plan`` with its captions set (plans are immutable)."""
    return replace(plan, captions=captions)

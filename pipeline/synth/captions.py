"""Captions of the synthetic dataset: every caption tells the events in temporal order.

The first caption of a video is its **canonical** caption: every event, colour and shape, the
``then`` template and the first wording of each verb. It is unique across the dataset, so no two
videos share a caption set. The other captions paraphrase it: another template, other verbs,
less detail (shapes only or colours only), or one event left out.
"""

from __future__ import annotations

import numpy as np

from pipeline.synth.grammar import Caption, Event

__all__ = ["DETAILS", "TEMPLATES", "canonical_caption", "caption_video"]

TEMPLATES: tuple[str, ...] = ("then", "ordinal", "after", "followed")
DETAILS: tuple[str, ...] = ("full", "shape", "colour")
_DETAIL_P = np.array([0.6, 0.2, 0.2])
_DROP_PROB = 0.25  # chance that a paraphrase leaves one event out (videos of >= 4 events)

# (present, gerund) wordings per action; {d} is a direction wording, {c} the new colour.
# Every wording carries a word that names its action alone (see the module's tests).
_VERBS: dict[str, tuple[tuple[str, str], ...]] = {
    "move": (("moves {d}", "moving {d}"), ("slides {d}", "sliding {d}"),
             ("travels {d}", "travelling {d}")),
    "grow": (("grows", "growing"), ("gets bigger", "getting bigger"),
             ("expands", "expanding")),
    "shrink": (("shrinks", "shrinking"), ("gets smaller", "getting smaller"),
               ("contracts", "contracting")),
    "turn": (("turns {c}", "turning {c}"), ("becomes {c}", "becoming {c}"),
             ("changes to {c}", "changing to {c}")),
    "flash": (("flashes", "flashing"), ("flashes briefly", "flashing briefly"),
              ("blinks", "blinking")),
    "appear": (("appears", "appearing"), ("emerges", "emerging"),
               ("comes into view", "coming into view")),
    "vanish": (("vanishes", "vanishing"), ("disappears", "disappearing"),
               ("fades away", "fading away")),
}
_DIRECTION_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("left", "to the left"), "right": ("right", "to the right"),
    "up": ("up", "upwards"), "down": ("down", "downwards"),
}


def _noun(ev: Event, detail: str, definite: bool) -> str:
    article = "the" if definite else "a"
    if detail == "shape":
        return f"{article} {ev.shape}"
    if detail == "colour":
        return f"{article} {ev.colour} object"
    return f"{article} {ev.colour} {ev.shape}"


def _verb(ev: Event, choice: int, gerund: bool, direction_choice: int) -> str:
    wording = _VERBS[ev.action][choice][1 if gerund else 0]
    d = _DIRECTION_WORDS[ev.direction][direction_choice] if ev.direction else ""
    return wording.format(d=d, c=ev.new_colour or "")


def _join(template: str, clauses: list[str]) -> str:
    """Glue clauses in order; every template keeps the temporal order of the clauses."""
    if template == "then":
        return ", then ".join(clauses)
    if template == "after":
        return ", and after that ".join(clauses)
    if template == "followed":
        return "we see " + ", followed by ".join(clauses)
    # ordinal: first …, next …, … and finally …
    if len(clauses) == 1:
        return clauses[0]
    middle = [f"next {c}" for c in clauses[1:-1]]
    return ", ".join([f"first {clauses[0]}", *middle, f"and finally {clauses[-1]}"])


def _render(
    events: tuple[Event, ...], order: tuple[int, ...], template: str, detail: str,
    verbs: list[int], directions: list[int],
) -> str:
    mentioned: set[int] = set()
    clauses = []
    for n in order:
        ev = events[n]
        noun = _noun(ev, detail, definite=ev.obj in mentioned)
        mentioned.add(ev.obj)
        verb = _verb(ev, verbs[n], template == "followed", directions[n])
        clauses.append(f"{noun} {verb}")
    return _join(template, clauses)


def canonical_caption(events: tuple[Event, ...]) -> Caption:
    """Every event in full detail with the first wording of each verb."""
    order = tuple(range(len(events)))
    zeros = [0] * len(events)
    return Caption(_render(events, order, "then", "full", zeros, zeros), "then", "full", order)


def _paraphrase(rng: np.random.Generator, events: tuple[Event, ...]) -> Caption:
    k = len(events)
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    detail = DETAILS[int(rng.choice(len(DETAILS), p=_DETAIL_P))]
    order = tuple(range(k))
    if k >= 4 and rng.random() < _DROP_PROB:
        drop = int(rng.integers(k))
        order = tuple(n for n in order if n != drop)
    verbs = [int(v) for v in rng.integers(0, 3, size=k)]
    directions = [int(v) for v in rng.integers(0, 2, size=k)]
    return Caption(_render(events, order, template, detail, verbs, directions),
                   template, detail, order)


def caption_video(
    rng: np.random.Generator, events: tuple[Event, ...], count: int
) -> tuple[Caption, ...]:
    """``count`` distinct captions: the canonical one, then paraphrases.

    Args:
        rng: the video's random generator (consumed).
        events: the video's events in temporal order.
        count: captions per video (>= 1).

    Returns:
        The captions; each tells its events in temporal order.
    """
    caps = [canonical_caption(events)]
    texts = {caps[0].text}
    for _ in range(50 * count):  # a short video may have fewer distinct paraphrases
        if len(caps) == count:
            break
        cap = _paraphrase(rng, events)
        if cap.text not in texts:
            caps.append(cap)
            texts.add(cap.text)
    return tuple(caps)

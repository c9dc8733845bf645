"""The one base of the errors the toolkit raises on purpose.

Every error that reports bad input (a corrupt file, a directory of another run, an
inconsistent index, impossible settings) derives from :class:`MofError`, so that ``mof-cli``
turns all of them into a one-line message and an exit status in one place. Each class keeps its
historical builtin base too (``ValueError``, ``RuntimeError``), so code that catches those still
works. The model library (``mof/models``, loss, metrics, bilevel) imports torch and numpy only
and raises builtin errors; the CLI maps those few builtins alongside :class:`MofError`.

This module imports nothing, so both halves (``pipeline`` and ``mof``) can import it.
"""

from __future__ import annotations

__all__ = ["MofError"]


class MofError(Exception):
    """Bad input or a state on disk the toolkit refuses to work with; the message says why."""

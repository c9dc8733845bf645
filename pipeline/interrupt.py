"""Stopping a long run cleanly: SIGTERM handled like Ctrl-C, and the error that says so.

A batch system or ``kill`` sends SIGTERM, a terminal sends SIGINT; both should stop a run the
same way, keep what is complete and tell the user that running the command again resumes.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["ShardInterrupted", "Terminated", "terminate_as_interrupt"]


class ShardInterrupted(RuntimeError):
    """The run was stopped by SIGINT or SIGTERM; complete shards are kept.

    Attributes:
        signum: the signal that stopped it.
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where SIGINT raises KeyboardInterrupt, so both stop the run alike."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises like Ctrl-C (only the main thread can set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

"""The time, as actors give it to the sans-I/O core.

The core takes ``now_ms`` (milliseconds since the Unix epoch) as an argument and never reads a
clock. Actors ask a :class:`Clock`: :class:`WallClock` in production, and :class:`TrioClock` in
tests, which follows trio's clock so that ``autojump_clock`` runs deadlines in virtual time.
"""

from __future__ import annotations

import time
from typing import Protocol

import trio

__all__ = ["Clock", "TrioClock", "WallClock"]


class Clock(Protocol):
    def now_ms(self) -> int: ...


class WallClock:
    """The real time."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class TrioClock:
    """Epoch milliseconds that advance with trio's clock (virtual under ``autojump_clock``)."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._start_ms = start_ms
        self._base: float | None = None

    def now_ms(self) -> int:
        now = trio.current_time()
        if self._base is None:
            self._base = now
        return self._start_ms + int((now - self._base) * 1000)

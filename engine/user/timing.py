"""The user core's deadlines, backoffs and rates."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Timing"]


class Timing(NamedTuple):
    """Deadlines, backoffs and rates (milliseconds)."""

    open_deadline: int = 15_000
    close_deadline: int = 10_000
    modify_deadline: int = 10_000
    retry_base: int = 200
    retry_cap: int = 5_000
    max_close_attempts: int = 5
    max_open_attempts: int = 3
    modify_interval: int = 1_000
    """At most one modify per position per interval (trailing stops move often)."""
    guard_save_interval: int = 10_000

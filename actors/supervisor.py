"""Supervision: restart a failed actor from its last consistent state, with backoff.

Each actor runs inside :func:`supervise`, in the node's nursery. An exception from the actor is
caught here, logged with the actor's context, and the actor is built anew by its ``start``
factory, which restores it from the node's live state fold (the same code path as start-up
recovery). Restarts back off exponentially, so a crash loop cannot eat the CPU, and the failure
stays inside this one actor: its siblings keep running. Cancellation (node shutdown) is never
caught.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio

__all__ = ["Supervised", "supervise"]


class Supervised:
    """Restart bookkeeping of one supervised actor (read by metrics and tests)."""

    __slots__ = ("last_error", "name", "restarts")

    def __init__(self, name: str) -> None:
        self.name = name
        self.restarts = 0
        self.last_error: str | None = None


async def supervise(
    name: str,
    start: Callable[[], Awaitable[None]],
    record: Supervised | None = None,
    backoff: float = 0.05,
    max_backoff: float = 5.0,
    reset_after: float = 30.0,
    **context: Any,
) -> None:
    """Run ``start()`` until it returns; on an exception, log it and run it again after a pause.

    The pause doubles after each failure (from ``backoff`` up to ``max_backoff``) and returns to
    ``backoff`` once the actor has run for ``reset_after`` seconds without failing.
    """
    log = structlog.get_logger().bind(actor=name, **context)
    record = record or Supervised(name)
    delay = backoff
    while True:
        started = trio.current_time()
        try:
            await start()
            return
        except Exception as exc:  # an actor's failure stays inside its supervisor
            record.restarts += 1
            record.last_error = f"{type(exc).__name__}: {exc}"
            if trio.current_time() - started >= reset_after:
                delay = backoff
            log.error(
                "actor failed; restarting",
                error=record.last_error,
                restarts=record.restarts,
                backoff_s=delay,
                exc_info=exc,
            )
            await trio.sleep(delay)
            delay = min(max_backoff, delay * 2)

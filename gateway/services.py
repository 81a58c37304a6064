"""What several edges do the same way: take a signal in, write an audit entry.

Both wait for the journal: an answer that says "recorded" (a 201, an audit trail) is only given
once the record is committed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from engine.records import AuditEntry, AuditRecorded, SignalSaved
from protocol.signals import Signal, check_signal_time

if TYPE_CHECKING:
    from gateway.context import GatewayContext

__all__ = ["accept_signal", "audit"]


async def accept_signal(ctx: GatewayContext, signal: Signal) -> tuple[Signal, bool]:
    """Record a signal once: ``(the recorded signal, True if it is new)``.

    A repeat of the same ``(strategy_id, signal_id, version)`` returns the signal recorded the
    first time (the body of the repeat is ignored): a retried POST is harmless. Which post was
    the first is decided by ``ctx.signals`` (this node's state; in a cluster, Postgres, so a
    signal posted to two nodes at once is new on exactly one).

    Raises:
        FutureTimestamp: the signal is stamped further ahead of the clock than the signature
            window (``check_signal_time``); nothing is recorded.
        StorageError: it cannot be recorded now.
    """
    check_signal_time(signal, ctx.clock.now_ms(), ctx.settings.handshake_window_ms)
    received = SignalSaved(signal=signal, received_ms=ctx.clock.now_ms())
    saved, new = await ctx.signals.accept(received)
    return saved.signal, new


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _storable(text: str) -> str:
    """``text`` as Postgres can store it: a NUL or a lone surrogate (a request path or a name
    may carry either) becomes U+FFFD, so the audit row, and its batch, always project."""
    return _UNSTORABLE.sub("\ufffd", text)


async def audit(
    ctx: GatewayContext,
    *,
    actor_id: str | None,
    action: str,
    target_type: str,
    target_id: str,
    outcome: str,
    ip: str = "",
    user_agent: str = "",
    **detail: Any,
) -> None:
    """Append an audit entry and wait until it is committed.

    Because the journal commits in order, this also makes durable every record the request
    produced before it (an approval, the position it opened).
    """
    entry = AuditEntry(
        time_ms=ctx.clock.now_ms(),
        actor_id=actor_id,
        action=action,
        target_type=target_type,
        target_id=_storable(target_id),
        outcome=outcome,
        ip=ip,
        user_agent=_storable(user_agent[:512]),
        detail={
            k: _storable(v) if isinstance(v, str) else v
            for k, v in detail.items()
            if isinstance(v, str | int | float | bool) or v is None
        },
    )
    await ctx.record_durably(AuditRecorded(entry=entry))

"""Strategy signals in Postgres, for several nodes: recorded once, read back exactly.

Signals are global records: a strategy may post to any node, and a user's decision may be
taken on another. One node alone deduplicates a signal in its own memory; several nodes must
agree on which post was the first, so :meth:`SignalStore.insert_once` lets Postgres decide:
``INSERT ... ON CONFLICT DO NOTHING RETURNING`` on the ``signals`` primary key
``(strategy_id, signal_id, version)``. Of any number of concurrent posts of one signal,
exactly one gets its row back; the others wait for that one to commit (a unique index makes
a second inserter wait on the first's transaction) and get nothing.

The row is the one the journal's projection writes (``persistence.projections.signal_row``):
``payload`` holds the whole signal, so :meth:`SignalStore.get` returns the record exactly as
it was first received. When the journal later projects the same record, its ``ON CONFLICT DO
NOTHING`` leaves this row as it is.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg
import msgspec

from engine.records import SignalSaved
from persistence.db import Database
from persistence.projections import SIGNAL_INSERT, signal_row, to_time
from protocol.signals import Signal

__all__ = ["SignalStore"]

_INSERT_ONCE = SIGNAL_INSERT + " RETURNING 1"

_MAX_VERSION = 2**31 - 1
"""The ``version`` column is an ``integer`` (as ``protocol.signals.Signal`` bounds it)."""

_COLUMNS = "SELECT payload, received_at FROM signals"

_GET = _COLUMNS + " WHERE strategy_id = $1 AND signal_id = $2 AND version = $3"

# What the engine's state keeps (engine.state.EngineState.prune): a signal until a retention
# period after it stops mattering (its expiry, else its reception). The audience is a JSON
# array in the payload; ``?`` asks whether it holds the user.
_RECENT = (
    _COLUMNS + " WHERE coalesce(expires_at, received_at) >= $1"
    " AND ($2::text IS NULL OR payload -> 'audience' ? $2) ORDER BY received_at DESC"
)


def _ms(at: datetime) -> int:
    """Epoch milliseconds of a ``timestamptz`` written by :func:`~persistence.projections.to_time`
    (microsecond precision: rounding gives back the exact millisecond)."""
    return round(at.timestamp() * 1000)


def _saved(row: asyncpg.Record) -> SignalSaved:
    return SignalSaved(
        signal=msgspec.convert(row["payload"], Signal), received_ms=_ms(row["received_at"])
    )


class SignalStore:
    """The ``signals`` table as the record of which signals exist (cluster mode)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert_once(self, signal: Signal, received_ms: int) -> bool:
        """Record ``signal``, received at ``received_ms``; True if this call recorded it, False
        if it was recorded before (by any node). Committed when it returns.

        Raises:
            StorageError: Postgres cannot answer; whether the row was written is unknown, and
                a retry is safe (it answers False if the first attempt did write it).
        """
        saved = SignalSaved(signal=signal, received_ms=received_ms)
        row = await self.db.fetchrow(_INSERT_ONCE, *signal_row(saved))
        return row is not None

    async def get(self, key: str) -> SignalSaved | None:
        """The signal recorded as ``key`` (``strategy/signal/version``), or None.

        Raises:
            StorageError: Postgres cannot answer.
        """
        parts = key.rsplit("/", 2)
        if len(parts) != 3 or not parts[2].isdigit() or int(parts[2]) > _MAX_VERSION:
            return None  # no signal can have this key
        row = await self.db.fetchrow(_GET, parts[0], parts[1], int(parts[2]))
        return None if row is None else _saved(row)

    async def recent(
        self, now_ms: int, retention_ms: int, user_id: str | None
    ) -> list[SignalSaved]:
        """The signals that stopped mattering less than ``retention_ms`` before ``now_ms``
        (as the engine's state keeps them), newest received first; only those whose audience
        names ``user_id`` unless it is None (an admin's view).

        Raises:
            StorageError: Postgres cannot answer.
        """
        rows = await self.db.fetch(_RECENT, to_time(now_ms - retention_ms), user_id)
        return [_saved(row) for row in rows]

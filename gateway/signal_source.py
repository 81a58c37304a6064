"""Where the gateway records and finds strategy signals: this node's state, or Postgres.

A signal is a global record: any node may receive it, any node may serve a decision on it.

* :class:`LocalSignals` (one node, today's path): the engine's state is the record. A new
  signal is journaled (``SignalSaved``) and folded into ``node.state``; a repeat is found
  there.
* :class:`SharedSignals` (cluster mode): Postgres decides. ``SignalStore.insert_once`` is
  the one place where "new or repeat" is answered, so two nodes never both accept a signal;
  the node's state is a cache in front of it. Whatever this node learns from Postgres (a
  signal it recorded, or one another node recorded that a request here asked for) is folded
  into ``node.state`` too, so the user actors and the views that read the state see it.
  The record is not journaled again: the ``signals`` row is its durable copy, and a cluster
  journal belongs to a partition, which a signal does not.

The gateway context holds one (``GatewayContext.signals``); the composition picks
:class:`SharedSignals` when the node runs in a cluster (``settings.node_url``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from engine.records import SignalSaved, signal_key
from engine.state import RETENTION_MS
from protocol.errors import StorageError

if TYPE_CHECKING:
    from actors.node import Node
    from persistence.signal_store import SignalStore

__all__ = ["LocalSignals", "SharedSignals", "SignalSource"]


def _key(saved: SignalSaved) -> str:
    s = saved.signal
    return signal_key(s.strategy_id, s.signal_id, s.version)


class SignalSource(Protocol):
    """Records signals once and finds them (see the module docstring)."""

    async def accept(self, saved: SignalSaved) -> tuple[SignalSaved, bool]:
        """Record ``saved`` unless its key is recorded already: ``(the record, True if new)``.
        A repeat answers the record made the first time. Durable when it returns.

        Raises:
            StorageError: it cannot be recorded (or checked) now.
        """
        ...

    async def get(self, key: str) -> SignalSaved | None:
        """The signal recorded as ``key``, or None (unknown, or older than is kept).

        Raises:
            StorageError: the record cannot be read now.
        """
        ...

    async def recent(self, now_ms: int, user_id: str | None) -> list[SignalSaved]:
        """The signals still kept at ``now_ms``, at least those whose audience names
        ``user_id`` (every one for None), in no particular order.

        Raises:
            StorageError: the record cannot be read now.
        """
        ...


class LocalSignals:
    """One node: the engine's state is the record of signals (journaled like every record)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def accept(self, saved: SignalSaved) -> tuple[SignalSaved, bool]:
        earlier = self.node.state.signals.get(_key(saved))
        if earlier is not None:
            return earlier, False
        await self.node.record_durably(saved)
        return saved, True

    async def get(self, key: str) -> SignalSaved | None:
        return self.node.state.signals.get(key)

    async def recent(self, now_ms: int, user_id: str | None) -> list[SignalSaved]:
        return list(self.node.state.signals.values())


class SharedSignals:
    """Several nodes: Postgres (``store``) is the record; ``node.state`` caches it."""

    def __init__(self, node: Node, store: SignalStore) -> None:
        self.node = node
        self.store = store

    def _cache(self, saved: SignalSaved) -> SignalSaved:
        self.node.state.apply(saved)
        return saved

    async def accept(self, saved: SignalSaved) -> tuple[SignalSaved, bool]:
        key = _key(saved)
        # Only what Postgres holds is ever cached, so a hit is a repeat without a round trip.
        earlier = self.node.state.signals.get(key)
        if earlier is not None:
            return earlier, False
        if await self.store.insert_once(saved.signal, saved.received_ms):
            return self._cache(saved), True
        first = await self.store.get(key)
        if first is None:  # signals are never deleted: the row that refused ours is there
            raise StorageError("a recorded signal could not be read back", signal=key[:200])
        return self._cache(first), False

    async def get(self, key: str) -> SignalSaved | None:
        cached = self.node.state.signals.get(key)
        if cached is not None:
            return cached
        found = await self.store.get(key)
        return None if found is None else self._cache(found)

    async def recent(self, now_ms: int, user_id: str | None) -> list[SignalSaved]:
        # Not cached: a listing is served from Postgres, where every node's signals are.
        return await self.store.recent(now_ms, RETENTION_MS, user_id)

"""What every handler of the gateway shares: the node, the registry, the stores, the counters.

One :class:`GatewayContext` is built by the composition root (``gateway.composition``) and
attached to the app; handlers reach it with :func:`current_context`. Counters here are plain
integers bumped on the request path and read by the Prometheus collector at scrape time
(``gateway.metrics``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from quart import current_app

from gateway.auth import HashingGate, LoginLimiter, TokenIssuer
from gateway.config import Settings
from gateway.feed_first import FeedFirst
from gateway.metrics import Metrics
from gateway.placement import AllLocal, Ownership
from gateway.signal_source import LocalSignals, SignalSource
from protocol.errors import StorageError

if TYPE_CHECKING:
    from actors.clock import Clock
    from actors.node import Node
    from engine.records import Record
    from gateway.edge import EdgeGuard
    from gateway.notifier import Notifier
    from gateway.registry import Registry
    from gateway.rest.candlebook import CandleBook
    from gateway.rest.charts import ChartPool
    from persistence.cache import ReadCache
    from persistence.db import Database
    from protocol.feed import Quote

__all__ = ["Counters", "GatewayContext", "NonceStore", "current_context"]


class JournalHealth(Protocol):
    """What ``/metrics`` reads of a journal writer (the single node's or a cluster node's)."""

    @property
    def pending(self) -> int: ...
    @property
    def lag_ms(self) -> float: ...
    @property
    def records_written(self) -> int: ...
    @property
    def write_errors(self) -> int: ...
    @property
    def healthy(self) -> bool: ...


class QuoteSink(Protocol):
    """Takes a feed's quotes and their batch's ``sent_ms``; never blocks."""

    def __call__(self, quotes: Iterable[Quote], sent_ms: int | None = None) -> int: ...


class NonceStore(Protocol):
    """``protocol.nonces.AsyncNonceCache``: the runtime's MemoryNonces or RedisNonceCache."""

    async def check_and_add(
        self, key: str, now_ms: int, ttl_ms: int, *, signed_ms: int | None = None
    ) -> bool: ...


class Journal(Protocol):
    def append_nowait(self, record: Record) -> int: ...

    async def wait_committed(self, seq: int) -> None: ...


@dataclass
class Counters:
    """What the edge counts (exported by ``gateway.metrics``)."""

    handshakes: Counter[str] = field(default_factory=Counter)
    bad_frames: Counter[str] = field(default_factory=Counter)
    legacy_calls: Counter[str] = field(default_factory=Counter)
    logins: Counter[str] = field(default_factory=Counter)
    devices_connected: int = 0
    clients_connected: int = 0
    clients_dropped: int = 0
    device_frames: int = 0
    device_timeouts: int = 0
    """Device sessions closed with 4004: nothing heard within ``stale_after_s``."""
    feed_quotes: int = 0
    rest_actions: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Audited REST actions by ``(action, outcome)`` (``gateway.rest.metrics``)."""

    def handshake(self, outcome: str) -> None:
        self.handshakes[outcome] += 1

    def bad_frame(self, code: str) -> None:
        self.bad_frames[code] += 1


@dataclass
class GatewayContext:
    settings: Settings
    node: Node
    registry: Registry
    """Users, devices and their secrets."""
    nonces: NonceStore
    tokens: TokenIssuer
    clock: Clock
    journal: Journal
    db: Database | None = None
    """None in tests that need no SQL."""
    cache: ReadCache | None = None
    strategies: dict[str, list[bytes]] = field(default_factory=dict)
    """Strategy id -> secrets valid for its signal signatures (several during rotation)."""
    limiter: LoginLimiter = field(default_factory=LoginLimiter)
    hashing: HashingGate = field(default_factory=HashingGate)
    """Bounds the password checks running at once (logins)."""
    counters: Counters = field(default_factory=Counters)
    ready: bool = False
    metrics: Metrics = field(default_factory=Metrics)
    journal_writer: JournalHealth | None = None
    """The journal's writer, for its health metrics (None: an in-memory journal)."""
    notifier: Notifier | None = None
    """None in tests that deliver no notifications."""
    candles: CandleBook | None = None
    """Prices sampled for ``/market/candles`` (made with the app, ``gateway.rest.market``)."""
    edge: EdgeGuard | None = None
    """The app's per-address connection limits (set by ``gateway.app.create_app``)."""
    chart_pool: ChartPool | None = None
    """The chart renderers (made on the first chart, ``gateway.rest.charts``)."""
    local_cache: ReadCache | None = None
    """The in-process read cache when there is no Redis (made on first use)."""
    ownership: Ownership = field(default_factory=AllLocal)
    """Which node serves a user (``gateway.placement``): on one node, this one for everyone;
    in cluster mode the partition leases say, and the edge redirects the rest."""
    signal_source: SignalSource | None = None
    """Where signals are recorded and found (see :attr:`signals`); None: this node's state."""

    cluster_metrics: Callable[[], dict[str, tuple[str, str, float]]] | None = None
    """A cluster node's figures for ``/metrics``: name -> (counter or gauge, help, value)."""
    feed_first: FeedFirst = field(default_factory=FeedFirst)
    """The node's feed connections, read before other connections' bookkeeping."""
    quote_sink: QuoteSink | None = None
    """Where feeds hand their quotes: None, the node itself; in a cluster, the tick streams
    (``gateway.cluster``), so that every node judges them."""

    def offer_quotes(self, quotes: Iterable[Quote], sent_ms: int | None = None) -> int:
        """Hand a feed's quotes on (never blocks); how many were taken."""
        sink = self.quote_sink
        return (sink or self.node.offer_quotes)(quotes, sent_ms)

    @property
    def database(self) -> Database:
        """``db``, for the handlers that read SQL.

        Raises:
            StorageError: this context has no database (a test app that needs no SQL).
        """
        if self.db is None:
            raise StorageError("this node has no database")
        return self.db

    @property
    def signals(self) -> SignalSource:
        """Where signals are recorded and found: ``signal_source``, by default this node's
        state (``gateway.signal_source.LocalSignals``); in a cluster, Postgres
        (``SharedSignals``, chosen by the composition)."""
        if self.signal_source is None:
            self.signal_source = LocalSignals(self.node)
        return self.signal_source

    async def record_durably(self, record: Record) -> int:
        """Journal ``record`` (and fold it) and wait for it to be committed."""
        return await self.node.record_durably(record)


def current_context() -> GatewayContext:
    """The context of the app serving the current request."""
    ctx: GatewayContext = current_app.extensions["tripwire"]
    return ctx

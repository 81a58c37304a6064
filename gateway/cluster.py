"""One node of a cluster: the partitions it owns, the ticks it reads, where others' users live.

``docs/architecture.md`` ("Scaling past one process") is the design; this module drives it.
:class:`ClusterNode` sits between the lease manager (``persistence.leases``), the fenced
partition journal (``persistence.partition_journal``), the tick streams
(``persistence.tick_streams``, ``persistence.tick_reader``) and the node's actors
(``actors.node``). It is the gateway's :class:`~gateway.placement.Ownership` (where a user
lives) and the node's :class:`~actors.ports.CommandGate` (may this node command a device now).

**Ticks.** Every feed of this node (``/ws/feed``, the replay, an upstream URL) hands its quotes to
:meth:`ClusterNode.offer_quotes`, which only queues them for the appender: a quote is processed
once it has its stream seq, never locally first. The reader delivers every symbol's stream to the
node in seq order, and the node remembers the last seq delivered per symbol. A node's own quotes
need not wait for the read that brings them back: once the append returns their seqs, each one
that directly follows the last seq delivered for its symbol is delivered at once (the read then
skips it); one behind a quote only the stream has yet (another node's) waits for the read, so
the order per symbol is the stream's either way. A symbol only this node appends to leaves the
blocking read altogether (the reader *mutes* it, ``persistence.tick_reader``): its quotes are
delivered from the append's reply through the reader's gap check, and another node's entries
there are found by the next own append or by a poll every ``poll_muted_s`` (of the streams no
own append moved for as long). Appends, their delivery and the polls run under one lock, so a
poll never mistakes an own entry for another node's. When nothing else is in the way (no append
queued or in flight, no claim holding the quotes, no poll running), a feed's quotes are appended
and delivered in the feed's own call, the append's reply awaited blocked for at most
``sync_append_s`` (``TickAppender.append_nowait``): a quote then costs the node one round trip's
syscalls and no trip through the scheduler. Otherwise (or when the reply is late) the appending
task takes them, in order.

**Checkpoints.** Every ``checkpoint_every_s``, when the node has nothing pending (every quote
delivered so far has been judged, its fires decided, their records appended), each ready partition
records per symbol the seq delivered: the journal writes it with that partition's next batch, so a
checkpoint never runs ahead of the records it vouches for. A busy node checkpoints later, never
wrongly: a claimer then replays a little more, and replaying a quote its positions have already
seen is harmless (their state already says what it did).

**A claim** (:class:`~persistence.leases.Claimed`, committed) runs in order:

1. read the partition (its snapshot and journal tail: only now, after the claim committed) and
   open it in the journal writer after its last seq, with the previous owner's checkpoint;
2. hold the live quotes (the reader's deliveries wait) and fetch, per symbol, the quotes after the
   checkpoint up to the last one delivered (ring, stream, bars: ``StreamReader.replay``);
3. judge them against the partition's open positions, in order (``engine.gap_replay``), each
   position only from its last change on (a quote older than that was judged by the old owner);
   trailing moves found there are applied to the state before it is armed;
4. adopt the users (their actors re-arm the live book) and wait until every one is armed; hand
   the gap's fires to their users; record the checkpoint; let the held quotes go.

Commands of the adopted users then wait for each device's positions snapshot (``actors.node``,
``Node.adopt``), and pass the lease check before every send (:meth:`may_send`).

**A loss** (another node claimed the partition: a hang, a partition from Postgres) releases the
users at once; the journal has fenced their writes already.

**A handover** (balancing, or this node stopping) runs: stop firing (the positions leave the
books; the checkpoint is the seq delivered at that moment), wait for the commands in flight to
be answered (at most ``handover_ack_wait_s``), flush the partition with its checkpoint, release
the actors, release the lease naming the next owner, and redirect the devices (``moved``).
Nothing is sent twice: the next owner starts from the flushed journal, and its commands wait
for each device's snapshot.

**Postgres away for longer than a lease.** The leases lapse locally, so :meth:`may_send` refuses
and commands are held, not sent; quotes go on being judged and fires decided and journaled in
memory (the journal buffers), so nothing is forgotten, and the closes go out when the lease is
renewed (Postgres is back and nobody else claimed it) or are redone by the new owner (from its
snapshot of each device). The cluster does not trade blind through a Postgres outage: a node
that cannot renew cannot know that nobody else owns its users, and two owners would close twice.
A single node (no lease) keeps trading through it, as before.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import structlog
import trio

from actors.device import DeviceActor
from actors.directory import partition_of
from actors.messages import Fired
from actors.node import Node
from engine.gap_replay import replay_gap
from engine.instruments import Instrument
from engine.partitioning import record_user, split_state
from engine.positions import Position
from engine.records import LevelsMoved, Record
from engine.state import EngineState
from engine.triggers import Trigger
from gateway.config import Settings
from gateway.placement import Elsewhere, Local, Placement, Unowned, moved_frame
from gateway.ws_client import CLIENT_PATH
from persistence.db import Database
from persistence.leases import (
    Claimed,
    HandoverWanted,
    LeaseManager,
    Lost,
    read_node_url,
)
from persistence.partition_journal import PartitionJournalWriter
from persistence.partition_store import compact_partition, load_partition, write_partition_snapshot
from persistence.redis_link import RedisLink
from persistence.tick_bars import TickBarStore
from persistence.tick_reader import OwnAppends, StreamReader
from persistence.tick_streams import AppendInFlight, Stamped, TickAppender
from protocol.closecodes import CloseCode
from protocol.common import Alert, AlertLevel
from protocol.errors import Fenced, StorageError
from protocol.feed import Quote

__all__ = [
    "ClusterConfig",
    "ClusterNode",
    "ClusterStats",
    "DeliveryOrder",
    "FenceRelay",
    "MovedSender",
    "RecordRouter",
    "open_cluster",
]

if TYPE_CHECKING:
    from gateway.context import GatewayContext

_log = structlog.get_logger(component="cluster")


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    node_id: str
    url: str
    partitions: int = 64
    checkpoint_every_s: float = 1.0  # the journal writes them every 2 s at most anyway
    snapshot_every_s: float = 60.0
    handover_ack_wait_s: float = 5.0
    arm_wait_s: float = 10.0
    retry_after_ms: int = 250
    """What a ``moved`` frame for a partition nobody owns yet tells the client to wait."""
    sync_append_s: float = 0.001
    """How long a feed's call waits blocked for its append's reply before the appending task
    takes it over (0: always the task). It stalls the event loop that long at worst; a round
    trip to a local Redis took 70-110 us on the quiet 2-core VM, ~280 us under load."""
    poll_muted_s: float = 0.1
    """How often the streams this node feeds alone are read for another node's entries, those
    of them no own append moved for as long: such an entry waits there at most twice this
    (see ``persistence.tick_reader``)."""


@dataclass(slots=True)
class ClusterStats:
    """Counters for ``/metrics`` (the lease manager's and the streams' own are read there too)."""

    claims_ready: int = 0
    releases: int = 0
    handovers_done: int = 0
    gap_quotes: int = 0
    gap_fires: int = 0
    fenced_partitions: int = 0
    quotes_appended: int = 0
    quotes_delivered_own: int = 0
    """Own quotes delivered when their append returned, before the read brought them back."""
    appends_in_call: int = 0
    """Appends stamped and delivered in the feed's own call."""
    appends_finished_later: int = 0
    """Appends begun in the feed's call and finished by the appending task (a late reply)."""
    last_claim_s: float = 0.0
    by_reason: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class DeliveryOrder:
    """Which quotes of a batch go to the node: each seq once, in seq order per symbol.

    The reader's batches arrive in per-symbol seq order with gaps filled; this node's own
    appends come back from the appender (see the module docstring, "Ticks").
    """

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        """symbol -> the last stream seq handed to the node."""

    def fresh(self, batch: Iterable[Stamped], *, own: bool) -> list[Quote]:
        """The real quotes of ``batch`` not delivered yet, recorded as delivered. Bar quotes
        fill a claim's gap only; the live book sees real quotes. ``own``: this node's appends,
        taken only where they directly follow the last seq delivered for their symbol."""
        last_of = self.last
        fresh: list[Quote] = []
        for stamped in batch:
            if stamped.synthetic:
                continue
            last = last_of.get(stamped.symbol)
            if last is not None and stamped.seq <= last:
                continue  # delivered already: an own quote, before the read brought it back
            if own and (last is None or stamped.seq != last + 1):
                continue  # behind a quote only the stream has yet: the read delivers both
            last_of[stamped.symbol] = stamped.seq
            fresh.append(stamped.quote)
        return fresh


class RecordRouter:
    """The partition journal's ``partition_of``: a record's user's partition, None for a
    global record (``engine.partitioning``). Bound to the node once it exists (the journal is
    built first)."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self._node: Node | None = None

    def bind(self, node: Node) -> None:
        self._node = node

    def __call__(self, record: Record) -> int | None:
        node = self._node
        assert node is not None, "the record router is not bound to its node"
        positions = node.state.positions

        def position_user(pid: str) -> str | None:
            p = positions.get(pid)
            return None if p is None else p.user_id

        user = record_user(record, position_user, node.directory.device_owner)
        return None if user is None else partition_of(user, self.partitions)


class FenceRelay:
    """The partition journal's ``on_fenced``, built before the cluster node that acts on it
    (the journal comes first): a fence found before :meth:`bind` is kept and handed over."""

    def __init__(self) -> None:
        self._handler: Callable[[int], None] | None = None
        self._early: list[int] = []

    def __call__(self, partition: int) -> None:
        if self._handler is None:
            self._early.append(partition)
        else:
            self._handler(partition)

    def bind(self, handler: Callable[[int], None]) -> None:
        self._handler = handler
        early, self._early = self._early, []
        for partition in early:
            handler(partition)


class MovedSender(Protocol):
    """Tells a released device where its user went: sends ``moved`` and closes."""

    async def __call__(self, actor: DeviceActor, placement: Elsewhere | Unowned) -> None: ...


async def send_moved(
    ctx: GatewayContext, actor: DeviceActor, placement: Elsewhere | Unowned
) -> None:
    """The gateway's :class:`MovedSender`: the ``moved`` frame on the device's live session
    (bounded: a stalled socket does not hold the release), then the close with its code."""
    session = actor.session
    if session is not None:
        with trio.move_on_after(1):
            try:
                await session.link.send(moved_frame(placement, "/ws/device"))
            except Exception as exc:  # the connection is gone already: nothing to tell
                _log.debug("moved frame not sent", device_id=actor.device_id, error=str(exc))
    ctx.counters.handshake("moved_on_release")
    await actor.end_session(CloseCode.MOVED, "moved")


@asynccontextmanager
async def open_cluster(
    settings: Settings,
    db: Database,
    redis: RedisLink,
    node: Node,
    journal: PartitionJournalWriter[Record],
    on_alert: Callable[[Alert], None],
) -> AsyncIterator[ClusterNode]:
    """This node's cluster parts from ``settings`` (the reader's and the appender's connections
    close on exit)."""
    assert settings.node_url is not None
    node_id = settings.node_id or settings.node_url.split("://", 1)[-1]
    lease_s = settings.lease_s
    leases = LeaseManager(
        db,
        node_id,
        settings.node_url,
        partitions=settings.partitions,
        lease_s=lease_s,
        renew_every_s=lease_s / 5,
        margin_s=lease_s / 5,
        move_every_s=min(0.5, lease_s / 4),
        expect_nodes=settings.expect_nodes,
    )
    bars = TickBarStore(db)
    appender = TickAppender(
        redis, keep_ms=int(settings.stream_keep_s * 1000), bars=bars, on_alert=on_alert
    )
    reader = await StreamReader.open(redis, bars=bars, on_alert=on_alert)
    try:
        yield ClusterNode(
            ClusterConfig(
                node_id=node_id,
                url=settings.node_url,
                partitions=settings.partitions,
                snapshot_every_s=settings.snapshot_interval_s,
                sync_append_s=settings.stream_append_wait_ms / 1000,
            ),
            db=db,
            node=node,
            journal=journal,
            leases=leases,
            appender=appender,
            reader=reader,
            bars=bars,
            instruments=node.instruments,
        )
    finally:
        with trio.CancelScope(shield=True):
            await reader.aclose()
            await appender.aclose()


class ClusterNode:
    """See the module docstring."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        db: Database,
        node: Node,
        journal: PartitionJournalWriter[Record],
        leases: LeaseManager,
        appender: TickAppender,
        reader: StreamReader,
        bars: TickBarStore,
        instruments: Mapping[str, Instrument],
    ) -> None:
        self.config = config
        self.db = db
        self.node = node
        self.journal = journal
        self.leases = leases
        self.appender = appender
        self.reader = reader
        self.bars = bars
        self.instruments = dict(instruments)
        self.stats = ClusterStats()
        self._order = DeliveryOrder()
        self.delivered = self._order.last
        """symbol -> the last stream seq handed to the node."""
        self.ready: set[int] = set()
        """Partitions adopted and armed: their users are served here."""
        self._claiming: set[int] = set()
        self._to_append: list[Quote] = []
        self._append_wanted = trio.Event()
        self._ticks = trio.Semaphore(1)
        """Held by an append with its delivery, and by a poll of the muted streams (not a
        Lock: an append begun in a feed's call may be finished by the appending task)."""
        self._handed: AppendInFlight | list[Stamped] | None = None
        """An append begun in a feed's call for the appending task to finish (it holds
        ``_ticks`` meanwhile): in flight, or stamped but waiting for the reader."""
        self._appending = False
        """The appending task holds quotes taken from ``_to_append``."""
        self._held: list[list[Stamped]] | None = None
        """Deliveries held while a claim replays its gap (None: deliver at once)."""
        self._resume = trio.Event()
        self._release_devices: dict[str, str | None] = {}
        self._moved_sender: MovedSender | None = None
        self._fenced_send, self._fenced = trio.open_memory_channel[int](math.inf)
        self._draining = False
        self._snapshot_seqs: dict[int, int] = {}
        """partition -> the seq of the last snapshot this node wrote of it."""

    # -- ports ------------------------------------------------------------------------------

    def partition(self, user_id: str) -> int:
        return partition_of(user_id, self.config.partitions)

    def locate(self, user_id: str) -> Placement:
        """Where ``user_id`` is served (the gateway's Ownership port)."""
        p = self.partition(user_id)
        if p in self.ready and self.leases.holds(p):
            return Local()
        # As of the leases' last balancing round (twice a second).
        there = self.leases.placements.get(p)
        if there is not None and there.owner not in (None, self.config.node_id) and there.url:
            return Elsewhere(url=there.url, partition=p, epoch=there.epoch)
        return Unowned(partition=p, retry_after_ms=self.config.retry_after_ms)

    def serves(self, user_id: str) -> bool:
        """Whether this node serves ``user_id`` now (its partition is ready and held)."""
        return isinstance(self.locate(user_id), Local)

    def may_send(self, user_id: str) -> bool:
        """The node's CommandGate: the user's partition is held and its deadline not passed."""
        p = self.partition(user_id)
        return p in self.ready and self.leases.holds(p)

    def offer_quotes(self, quotes: Iterable[Quote], sent_ms: int | None = None) -> int:
        """A feed's quotes: queued for the streams (never processed before they have a seq)."""
        waiting = self._to_append or self._appending or self._handed is not None
        if waiting or self._held is not None:
            return self._queue(quotes)  # behind what waits already, in order
        batch = list(quotes)
        wait_s = self.config.sync_append_s
        if not batch or wait_s <= 0:
            return self._queue(batch)
        try:
            self._ticks.acquire_nowait()
        except trio.WouldBlock:  # a poll of the muted streams
            return self._queue(batch)
        done = self.appender.append_nowait(batch, wait_s)
        if done is None:
            self._ticks.release()
            return self._queue(batch)
        self.stats.quotes_appended += len(batch)
        if isinstance(done, AppendInFlight):
            self.stats.appends_finished_later += 1
            return self._finish_later(done, len(batch))
        own = self.reader.appended_nowait(done, self.delivered)
        if own is None:
            return self._finish_later(done, len(batch))
        self._ticks.release()
        self.stats.appends_in_call += 1
        self._offer_own(own)
        if self.appender.backlog:  # Redis refused them: the task sweeps
            self._append_wanted.set()
        return len(batch)

    def _queue(self, quotes: Iterable[Quote]) -> int:
        before = len(self._to_append)
        self._to_append.extend(quotes)
        added = len(self._to_append) - before
        if added:
            self._append_wanted.set()
        return added

    def _finish_later(self, job: AppendInFlight | list[Stamped], count: int) -> int:
        """The appending task finishes ``job`` (``_ticks`` stays taken for it)."""
        self._handed = job
        self._append_wanted.set()
        return count

    def _offer_own(self, own: OwnAppends) -> None:
        if self._held is not None:
            # A claim holds deliveries: the read brings the rest later, muted symbols'
            # quotes have no read to come from (the hold unmutes them, at the next read).
            if own.delivered:
                self._held.append(own.delivered)
            return
        early = self._deliver(own.delivered) if own.delivered else 0
        self.stats.quotes_delivered_own += early + self._deliver(own.left, own=True)

    def metrics(self) -> dict[str, tuple[str, str, float]]:
        """This node's cluster figures for ``/metrics`` (read at scrape time)."""
        leases, journal, appender, reader = self.leases, self.journal, self.appender, self.reader
        streams = reader.stats()
        return {
            "tripwire_partitions_owned": (
                "gauge",
                "Partitions this node serves (claimed, recovered and armed)",
                len(self.ready),
            ),
            "tripwire_partition_claims": ("counter", "Partition claims committed", leases.claims),
            "tripwire_partition_losses": (
                "counter",
                "Partitions lost to another node's claim (a hang, a network partition)",
                leases.losses,
            ),
            "tripwire_partition_handovers": (
                "counter",
                "Partitions handed over in order (balancing, shutdown)",
                self.stats.handovers_done,
            ),
            "tripwire_lease_renew_failures": (
                "counter",
                "Lease renewals that failed or timed out",
                leases.renew_failures,
            ),
            "tripwire_journal_fenced_batches": (
                "counter",
                "Partition journal writes refused by their fence (another node owns it)",
                journal.fenced_batches,
            ),
            "tripwire_stream_quotes_appended": (
                "counter",
                "Quotes this node's feeds stamped onto the tick streams",
                appender.appended_total,
            ),
            "tripwire_stream_quotes_delivered_own": (
                "counter",
                "Own quotes delivered when their append returned, before the stream read",
                self.stats.quotes_delivered_own,
            ),
            "tripwire_stream_swept_quotes": (
                "counter",
                "Quotes held while Redis was down, stamped when it came back",
                appender.swept_total,
            ),
            "tripwire_stream_dropped_quotes": (
                "counter",
                "Quotes dropped from a full backlog during a Redis outage (alerted)",
                appender.dropped_total,
            ),
            "tripwire_stream_backlog": (
                "gauge",
                "Quotes waiting for Redis",
                appender.backlog,
            ),
            "tripwire_stream_lag_seconds": (
                "gauge",
                "Age of the newest stream entry this node has read",
                streams.lag_ms / 1000,
            ),
            "tripwire_stream_appends_in_call": (
                "counter",
                "Appends stamped and delivered in the feed's own call (no task switch)",
                self.stats.appends_in_call,
            ),
            "tripwire_stream_appends_finished_later": (
                "counter",
                "Appends begun in the feed's call whose reply came late (the task took it)",
                self.stats.appends_finished_later,
            ),
            "tripwire_stream_symbols_muted": (
                "gauge",
                "Symbols only this node appends to, delivered from the append, out of the read",
                streams.muted,
            ),
            "tripwire_stream_unmutes": (
                "counter",
                "Muted symbols another node's entries brought back to the read",
                streams.unmutes,
            ),
            "tripwire_stream_gaps": (
                "counter",
                "Gaps in a symbol's seqs detected by the reader (filled by replay)",
                streams.gaps_detected,
            ),
            "tripwire_claim_gap_quotes": (
                "counter",
                "Quotes replayed into claimed partitions (their gap since the checkpoint)",
                self.stats.gap_quotes,
            ),
            "tripwire_claim_gap_fires": (
                "counter",
                "Levels the replay of a claim's gap fired",
                self.stats.gap_fires,
            ),
        }

    def on_fenced(self, partition: int) -> None:
        """The journal found ``partition`` fenced (another node claimed it): its users go, as
        for a lost lease (the lease manager may not have noticed yet)."""
        self.ready.discard(partition)
        self._fenced_send.send_nowait(partition)

    def speaks_for_market(self) -> bool:
        """Every node judges every quote; the one serving partition 0 raises the market's
        alerts (a price jump, a silent feed), so an operator gets each once."""
        return 0 in self.ready

    def bind_moved(self, sender: MovedSender) -> None:
        """How a released device is told where to go (the gateway's sessions)."""
        self._moved_sender = sender

    # -- running ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join, read the streams, claim and serve partitions until cancelled; then hand every
        partition over in order (shielded, bounded)."""
        for symbol in self.instruments:
            self.reader.watch(symbol)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.leases.run)
                nursery.start_soon(self._append_forever)
                nursery.start_soon(self.appender.run)
                nursery.start_soon(self.bars.run)
                nursery.start_soon(self._read_forever)
                nursery.start_soon(self._poll_muted_forever)
                nursery.start_soon(self._checkpoints_forever)
                nursery.start_soon(self._snapshots_forever)
                nursery.start_soon(self._events_forever)
                nursery.start_soon(self._fences_forever)
                nursery.start_soon(self._leases_watched)
                task_status.started()
        finally:
            _log.info("cluster node stopped", node_id=self.config.node_id)

    async def hand_over_all(self) -> None:
        """A planned stop: claim nothing more, and hand every ready partition over, one at a
        time (the others claim them as they are released)."""
        self.leases.drain()
        self._draining = True
        for p in sorted(self.ready):
            await self._hand_over(p, None, reason="shutdown")

    # -- ticks ------------------------------------------------------------------------------

    async def _append_forever(self) -> None:
        while True:
            await self._append_wanted.wait()
            self._append_wanted = trio.Event()
            handed, self._handed = self._handed, None
            if handed is not None:  # begun in a feed's call: _ticks is held for it
                try:
                    stamped = (
                        await self.appender.finish(handed)
                        if isinstance(handed, AppendInFlight)
                        else handed
                    )
                    own = await self.reader.appended(stamped, self.delivered)
                finally:
                    self._ticks.release()
                self._offer_own(own)
            batch, self._to_append = self._to_append, []
            if not batch and not self.appender.backlog:
                continue
            self._appending = True
            try:
                await self._ticks.acquire()
                try:
                    stamped = await self.appender.append(batch)
                    own = await self.reader.appended(stamped, self.delivered)
                finally:
                    self._ticks.release()
            finally:
                self._appending = False
            self.stats.quotes_appended += len(batch)
            self._offer_own(own)

    async def _poll_muted_forever(self) -> None:
        """Find another node's entries on the streams this node feeds alone."""
        while True:
            await self.reader.until_muted()  # nothing muted: no wake-ups
            await trio.sleep(self.config.poll_muted_s)
            if not self.reader.muted:
                continue
            async with self._ticks:
                found = await self.reader.poll(
                    self.appender.conn, self.delivered, quiet_s=self.config.poll_muted_s
                )
            if not found:
                continue
            if self._held is not None:
                self._held.append(found)
            else:
                self._deliver(found)

    async def _read_forever(self) -> None:
        async for batch in self.reader.batches():
            if self._held is not None:
                self._held.append(batch)
                continue
            self._deliver(batch)

    def _deliver(self, batch: list[Stamped], *, own: bool = False) -> int:
        """Offer what ``batch`` has not delivered yet, in one call (it keeps their order)."""
        fresh = self._order.fresh(batch, own=own)
        if fresh:
            self.node.offer_quotes(fresh)
        return len(fresh)

    @contextlib.asynccontextmanager
    async def _holding_quotes(self) -> AsyncIterator[None]:
        """Hold the reader's deliveries (a claim replays its gap meanwhile), then deliver
        them in order. Muted symbols go back to the read meanwhile: a claim's replay counts on
        the read having brought every entry up to what was delivered."""
        self._held = []
        self.reader.muting_allowed = False
        self.reader.unmute_all()
        try:
            yield
        finally:
            self.reader.muting_allowed = True
            held, self._held = self._held, None
            for batch in held:
                self._deliver(batch)

    # -- partitions -------------------------------------------------------------------------

    async def _events_forever(self) -> None:
        events = self.leases.events
        async for first in events:
            # Claims that arrive together (a failover: a dead node's whole share) are
            # recovered together: loaded concurrently, armed under one hold of the quotes.
            batch = [first]
            while True:
                try:
                    batch.append(events.receive_nowait())
                except trio.WouldBlock:
                    break
            claims: list[Claimed] = []
            for event in batch:
                if isinstance(event, Claimed):
                    claims.append(event)
                    continue
                if claims:
                    await self._claim_all(claims)
                    claims = []
                match event:
                    case Lost(partition=p, reason=reason):
                        await self._release(p, reason=f"lost: {reason}", next_url=None)
                    case HandoverWanted(partition=p, next_owner=next_owner):
                        await self._hand_over(p, next_owner, reason="balance")
            if claims:
                await self._claim_all(claims)

    async def _fences_forever(self) -> None:
        async for p in self._fenced:
            if p in self.journal.open_partitions() or self._users_of(p):
                self.stats.fenced_partitions += 1
                await self._release(p, reason="fenced", next_url=None)

    def _users_of(self, p: int) -> set[str]:
        users = {u for u in self.node.users if self.partition(u) == p}
        users |= {
            pos.user_id
            for pos in self.node.state.positions.values()
            if self.partition(pos.user_id) == p
        }
        return users

    async def _claim_all(self, claims: list[Claimed]) -> None:
        """Recover claimed partitions (see the module docstring, "A claim"), several at once."""
        if self._draining:  # claimed just before the drain began: given straight back
            for event in claims:
                with contextlib.suppress(StorageError):
                    await self.leases.release(event.partition, None)
            return
        started = time.monotonic()
        loaded: dict[int, tuple[Claimed, EngineState]] = {}

        async def load(event: Claimed) -> None:
            p = event.partition
            try:
                state, last_seq = await load_partition(self.db, p)
                self.journal.open_partition(p, event.epoch, last_seq, event.checkpoint)
            except StorageError as exc:  # Fenced included: given up, another node claims it
                _log.error("claim failed; the partition is given up", partition=p, error=str(exc))
                with contextlib.suppress(StorageError):
                    await self.leases.release(p, None)
                return
            loaded[p] = (event, state)

        self._claiming.update(e.partition for e in claims)
        try:
            async with trio.open_nursery() as nursery:
                for event in claims:
                    nursery.start_soon(load, event)
            async with self._holding_quotes():
                fires: dict[str, list[Trigger]] = defaultdict(list)
                moves: list[LevelsMoved] = []
                users: set[str] = set()
                positions = 0
                for event, state in loaded.values():
                    gap_fires, gap_moves = await self._replay_gap(state, event.checkpoint)
                    for user_id, triggers in gap_fires.items():
                        fires[user_id] += triggers
                    moves += gap_moves
                for _event, state in loaded.values():
                    adopted = await self.node.adopt(state)
                    users |= adopted.user_ids
                    positions += adopted.positions
                with trio.move_on_after(self.config.arm_wait_s):
                    for user_id in users:
                        actor = self.node.users.get(user_id)
                        if actor is not None:
                            await actor.wait_ready()
                if moves:
                    self.node.record(moves)
                for user_id, triggers in fires.items():
                    self.node.user(user_id).deliver(Fired(triggers, 0, time.perf_counter()))
                for p in loaded:
                    for symbol, seq in self.delivered.items():
                        self.journal.set_checkpoint(p, symbol, seq)
                self.ready.update(loaded)
        finally:
            self._claiming.difference_update(e.partition for e in claims)
        self.stats.claims_ready += len(loaded)
        self.stats.last_claim_s = time.monotonic() - started
        _log.info(
            "partitions ready",
            partitions=sorted(loaded),
            previous_owners=sorted({e.previous_owner or "" for e, _ in loaded.values()}),
            users=len(users),
            positions=positions,
            gap_fires=sum(len(t) for t in fires.values()),
            seconds=round(self.stats.last_claim_s, 3),
            owned=sorted(self.ready),
        )

    async def _replay_gap(
        self, state: EngineState, checkpoint: Mapping[str, int]
    ) -> tuple[dict[str, list[Trigger]], list[LevelsMoved]]:
        """The gap's fires by user, and the trailing moves to apply (see the module doc)."""
        fires: dict[str, list[Trigger]] = defaultdict(list)
        moves: list[LevelsMoved] = []
        by_symbol: dict[str, list[Position]] = defaultdict(list)
        for position in state.positions.values():
            by_symbol[position.symbol].append(position)
        for symbol, positions in by_symbol.items():
            instrument = self.instruments.get(symbol)
            after = checkpoint.get(symbol)
            upto = self.delivered.get(symbol)
            if instrument is None or after is None or upto is None or upto <= after:
                continue
            replayed = await self.reader.replay(symbol, after, upto)
            quotes = [(s.quote, s.stream_id[0]) for s in replayed.quotes]
            self.stats.gap_quotes += len(quotes)
            outcome = replay_gap(
                instrument,
                positions,
                quotes,
                quote_limits=self.node.config.quote_limits,
            )
            for fire in outcome.fired:
                fires[fire.user_id].append(fire.trigger)
            self.stats.gap_fires += len(outcome.fired)
            for pid, (_user, move) in outcome.moved.items():
                position = state.positions[pid]
                time_ms = self.node.clock.now_ms()
                state.positions[pid] = position.with_changes(time_ms, sl=move.sl)
                moves.append(
                    LevelsMoved(position_id=pid, sl=move.sl, tp=position.tp, time_ms=time_ms)
                )
        return fires, moves

    async def _release(self, p: int, *, reason: str, next_url: str | None) -> None:
        self.ready.discard(p)
        users = self._users_of(p)
        await self.node.release(
            users,
            reason=reason,
            on_device_released=functools.partial(self._moved, p, next_url),
        )
        self._move_clients(p, users, next_url)
        with contextlib.suppress(StorageError):
            await self.journal.close_partition(p)
        self._snapshot_seqs.pop(p, None)
        self.stats.releases += 1
        self.stats.by_reason[reason.split(":", maxsplit=1)[0]] += 1
        _log.info("partition released", partition=p, reason=reason, owned=sorted(self.ready))

    async def _hand_over(self, p: int, next_owner: str | None, *, reason: str) -> None:
        """The ordered handover (module docstring)."""
        if p not in self.ready:
            return
        users = self._users_of(p)
        # 1. stop firing: the positions leave the books; the checkpoint is what was delivered.
        self.ready.discard(p)
        for actor in self.node.symbols.values():
            actor.release(
                users,
                {
                    pos.id
                    for pos in self.node.state.positions.values()
                    if pos.user_id in users and pos.symbol == actor.symbol
                },
            )
        stop_at = dict(self.delivered)
        # 2. wait for the commands in flight, bounded.
        with trio.move_on_after(self.config.handover_ack_wait_s):
            # Polled: a handover is rare, bounded, and acks arrive on many devices at once.
            while any(c.user_id in users for c in self.node.state.commands.values()):  # noqa: ASYNC110
                await trio.sleep(0.02)
        # 3. flush, with the checkpoint.
        for symbol, seq in stop_at.items():
            self.journal.set_checkpoint(p, symbol, seq)
        next_url = None if next_owner is None else await self._url_of(next_owner)
        try:
            await self.journal.flush_partition(p)
        except Fenced:
            await self._release(p, reason="fenced during handover", next_url=None)
            return
        # 4. the actors go, the lease goes (named for the next owner); 5. devices redirected.
        await self.node.release(
            users, reason=reason, on_device_released=functools.partial(self._moved, p, next_url)
        )
        self._move_clients(p, users, next_url)
        await self.journal.close_partition(p)
        self._snapshot_seqs.pop(p, None)
        await self.leases.release(p, next_owner)
        self.stats.handovers_done += 1
        _log.info(
            "partition handed over",
            partition=p,
            next_owner=next_owner,
            reason=reason,
            owned=sorted(self.ready),
        )

    async def _url_of(self, node_id: str) -> str | None:
        with contextlib.suppress(StorageError):
            return await read_node_url(self.db, node_id)
        return None

    def _move_clients(self, p: int, users: set[str], url: str | None) -> None:
        """The users' client streams (dashboards) follow them: a ``moved`` frame and 4301, as
        a client connecting now would get; left open they would stay silent."""
        frame = moved_frame(self._placement_after(p, url), CLIENT_PATH)
        for user_id in users:
            self.node.hub.move_user(user_id, frame)

    def _placement_after(self, p: int, url: str | None) -> Elsewhere | Unowned:
        """Where partition ``p``'s users are served once this node let it go."""
        if url is None:
            return Unowned(partition=p, retry_after_ms=self.config.retry_after_ms)
        return Elsewhere(url=url, partition=p, epoch=(self.leases.epoch(p) or 0) + 1)

    async def _moved(self, p: int, url: str | None, actor: DeviceActor) -> None:
        sender = self._moved_sender
        if sender is not None:
            await sender(actor, self._placement_after(p, url))
        else:
            await actor.end_session(CloseCode.MOVED, "the user moved to another node")

    # -- background -------------------------------------------------------------------------

    async def _leases_watched(self) -> None:
        """Closes held for want of a lease are never silent: a CRITICAL alert when the leases
        of ready partitions lapse (renewals failing: Postgres unreachable for longer than a
        lease), an INFO one when they are held again; and the held commands go out then."""
        lapsed_since: float | None = None
        while True:
            await trio.sleep(0.25)
            lapsed = [p for p in self.ready if not self.leases.holds(p)]
            now_ms = self.node.clock.now_ms()
            if lapsed and lapsed_since is None:
                lapsed_since = time.monotonic()
                self.node.raise_alerts(
                    [
                        Alert(
                            kind="leases_lapsed",
                            level=AlertLevel.CRITICAL,
                            message=f"{len(lapsed)} partitions' leases could not be renewed"
                            " (Postgres unreachable?): their closes are held, not sent, until"
                            " a renewal succeeds or another node claims them",
                            time_ms=now_ms,
                            value=float(len(lapsed)),
                        )
                    ]
                )
            elif not lapsed and lapsed_since is not None:
                held_s = time.monotonic() - lapsed_since
                lapsed_since = None
                self.node.retry_held()
                self.node.raise_alerts(
                    [
                        Alert(
                            kind="leases_renewed",
                            level=AlertLevel.INFO,
                            message=f"leases renewed after {held_s:.1f} s; held closes are sent",
                            time_ms=now_ms,
                            value=held_s,
                        )
                    ]
                )

    async def _checkpoints_forever(self) -> None:
        while True:
            await trio.sleep(self.config.checkpoint_every_s)
            if self.node.pending() or self._held is not None:
                continue
            open_now = self.journal.open_partitions()
            for p in self.ready & open_now:
                for symbol, seq in self.delivered.items():
                    self.journal.set_checkpoint(p, symbol, seq)

    async def _snapshots_forever(self) -> None:
        while True:
            await trio.sleep(self.config.snapshot_every_s)
            await self.snapshot_partitions()

    async def snapshot_partitions(self) -> int:
        """Snapshot every ready partition that changed, from the live state (fenced), then
        compact its journal up to its previous snapshot (as a single node does: the newest
        snapshot always has the journal since the one before behind it); how many were
        written."""
        pieces = split_state(self.node.state, self.partition)
        seqs = {p: self.journal.last_seq(p) for p in self.ready & self.journal.open_partitions()}
        written = 0
        for p, seq in seqs.items():
            epoch = self.leases.epoch(p)
            previous = self._snapshot_seqs.get(p, 0)
            if epoch is None or seq <= previous:
                continue
            piece = pieces.get(p) or EngineState()
            piece.seq = seq
            try:
                await self.journal.flush_partition(p)
                await write_partition_snapshot(self.db, p, epoch, seq, piece.encode_snapshot())
                if previous:
                    await compact_partition(self.db, p, epoch, previous)
            except (Fenced, StorageError) as exc:
                _log.warning("partition snapshot failed", partition=p, error=str(exc))
                continue
            self._snapshot_seqs[p] = seq
            written += 1
        return written

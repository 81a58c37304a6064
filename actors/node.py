"""A node: the actors of one engine process, their directory, and what they share.

The :class:`Node` spawns actors on demand (a symbol actor per instrument, a user actor and a
device actor when first needed), each under :func:`~actors.supervisor.supervise` in the node's
nursery, so one failing actor is restarted alone. It also holds what actors share inside the
process: the price board, the client hub, the journal sink and the live fold of every record
(:class:`~engine.state.EngineState`), from which a restarted actor is rebuilt.

Start-up and crash recovery are one path: the node is built from an ``EngineState`` (empty, or
loaded from snapshot + journal), every open position is re-armed by its user actor, and every
command that was in flight is marked for reconciliation (its device must reconnect and send its
positions snapshot before anything else is decided).

In cluster mode a running node also takes users over and gives them away, a partition at a time
(:meth:`Node.adopt`, :meth:`Node.release`): adopting is that same recovery path for the
partition's users alone, releasing stops their actors and forgets them everywhere. Every command
it sends passes the node's :class:`~actors.ports.CommandGate` (the lease check). A single node
adopts and releases nothing, and its gate allows every send.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any, Protocol

import structlog
import trio

from actors import tracing
from actors.clock import Clock, WallClock
from actors.config import NodeConfig
from actors.device import DeviceActor
from actors.directory import Directory, StaticDirectory
from actors.hub import ClientHub
from actors.messages import LinkLost
from actors.ports import AllowAll, CommandGate, Probes
from actors.prices import PriceBoard
from actors.supervisor import Supervised, supervise
from actors.symbol import SymbolActor
from actors.tradelog import TradeLog
from actors.user import UserActor
from actors.views import AdoptedUsers, ReleasedUsers
from engine.device import Classifier
from engine.instruments import DEFAULT_INSTRUMENTS, Instrument
from engine.notices import Notice
from engine.quotes import REJECT_REASONS
from engine.records import AlertRaised, Record
from engine.state import EngineState, UserState
from engine.user import DeviceInfo
from protocol.client import DeviceView
from protocol.closecodes import CloseCode
from protocol.common import Alert
from protocol.errors import UnknownPrincipal, UsageError
from protocol.feed import Quote

__all__ = ["JournalSink", "MemoryJournal", "Node", "NodeConfig", "PriceBoard"]


class JournalSink(Protocol):
    """Where records go: ``persistence.JournalWriter``; :class:`MemoryJournal` in tests."""

    def append_nowait(self, record: Record) -> int: ...

    async def wait_committed(self, seq: int) -> None: ...


class MemoryJournal:
    """Keeps records in a list; every record is "durable" at once (tests, benchmarks)."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def append_nowait(self, record: Record) -> int:
        self.records.append(record)
        return len(self.records)

    async def wait_committed(self, seq: int) -> None:
        await trio.lowlevel.checkpoint()


class Node:
    def __init__(
        self,
        *,
        journal: JournalSink | None = None,
        directory: Directory | None = None,
        clock: Clock | None = None,
        instruments: Mapping[str, Instrument] | None = None,
        state: EngineState | None = None,
        config: NodeConfig | None = None,
        classify: Classifier | None = None,
        gate: CommandGate | None = None,
    ) -> None:
        self.journal: JournalSink = journal or MemoryJournal()
        self.directory: Directory = directory or StaticDirectory()
        self.clock: Clock = clock or WallClock()
        self.instruments: dict[str, Instrument] = dict(instruments or DEFAULT_INSTRUMENTS)
        self.state = state or EngineState()
        self.config = config or NodeConfig()
        if classify is None:
            from protocol.results import classify as broker_classify  # the production table

            classify = broker_classify
        self.classify: Classifier = classify
        self.speaks_for_market: Callable[[], bool] = lambda: True
        """Whether this node raises the market's alerts (a cluster names one node)."""
        self.gate: CommandGate = gate or AllowAll()
        """Asked before every command a device actor hands to its link (cluster mode: the
        lease check; by default every send is allowed)."""
        self.prices = PriceBoard()
        self.hub = ClientHub(self)
        self.probes = Probes()
        """Latency hooks for the metrics and the harnesses (none set by default)."""
        self.notify: Callable[[str, list[Notice]], None] | None = None
        """Takes a user's fills and closes to notify (``gateway.notifier``); must never block
        (it is called from the user actor, on the tick path). None: nobody is notified."""
        self.accepting = True
        self.symbols: dict[str, SymbolActor] = {}
        self.users: dict[str, UserActor] = {}
        self.devices: dict[str, DeviceActor] = {}
        self.supervised: dict[str, Supervised] = {}
        self.alerts_raised = 0
        self.command_outcomes: Counter[str] = Counter()
        """Device commands by how they ended: the ack's category, or ``lost`` (counted by the
        device actors, read at scrape time)."""
        self.device_counts: Counter[str] = Counter()
        """``commands_held_no_lease`` (sends the gate refused) and ``ack_hash_mismatches``
        (acks refused as another command's answer), counted by the device actors."""
        self.feed_lag_ms = 0
        """How long the last quote batch stamped with ``sent_ms`` waited between its publisher
        and the node."""
        self.log = structlog.get_logger().bind(node=True)
        self.tradelog = TradeLog()
        """Trading events, logged by its own task off the hot path (``actors.tradelog``)."""
        self._nursery: trio.Nursery | None = None
        self._on_alerts: list[Callable[[list[Alert]], None]] = []
        self._running = trio.Event()
        self._start_views: dict[str, UserState] | None = None
        self._adopt_views: dict[str, UserState] = {}
        """Adopted users' parts of the state, until their actors have restored from them."""
        self._tasks: dict[str, tuple[trio.CancelScope, trio.Event]] = {}
        """Each supervised actor's cancel scope, and the event set once its task has ended."""
        self._released: set[str] = set()
        """Users given away (until adopted again): no actor of theirs may start here."""

    # -- running -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every actor until cancelled. Recovered state is re-armed and reconciled first."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for instrument in self.instruments.values():
                self._spawn_symbol(instrument)
            # Index the recovered state by user once: every actor starting at once would
            # otherwise scan all of it, which is quadratic in a 100,000-position recovery.
            self._start_views = self.state.by_user()
            self._mark_in_flight_for_reconciliation()
            for user_id in self._start_views:
                self.user(user_id)
            nursery.start_soon(self.hub.push_prices)
            nursery.start_soon(self.tradelog.run)
            self._running.set()
            task_status.started(self)
            await trio.sleep_forever()

    def _mark_in_flight_for_reconciliation(self) -> None:
        """After a (re)start no device is connected: every command in flight has lost its link."""
        lost: dict[tuple[str, str], list[str]] = defaultdict(list)
        for cid, c in self.state.commands.items():
            lost[(c.user_id, c.device_id)].append(cid)
        for (user_id, device_id), ids in lost.items():
            self.user(user_id).deliver(LinkLost(device_id, ids))

    def pending(self) -> int:
        """Messages waiting in every mailbox of the node, and fires a symbol actor has yet to
        hand out (a storm in flight: shutdown drains it too)."""
        return (
            sum(len(u.mailbox) for u in self.users.values())
            + sum(len(d.mailbox) for d in self.devices.values())
            + sum(len(s.inbox) + s.unhanded for s in self.symbols.values())
        )

    async def shutdown(self) -> None:
        """Stop intake, let the mailboxes drain (bounded in time), then stop the actors.

        The caller takes the final snapshot afterwards (``persistence``): the state fold is
        complete once the actors have stopped.
        """
        self.accepting = False
        with trio.move_on_after(self.config.drain_timeout_s):
            # Polling is fine here: shutdown only, bounded, over many mailboxes at once.
            while self.pending():  # noqa: ASYNC110
                await trio.sleep(0.01)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # -- actors ------------------------------------------------------------------------------

    def _start(self, name: str, run: Callable[[], Any], **context: Any) -> None:
        assert self._nursery is not None, "the node is not running"
        record = self.supervised.setdefault(name, Supervised(name))
        scope, done = trio.CancelScope(), trio.Event()
        self._tasks[name] = (scope, done)
        self._nursery.start_soon(
            self._run_scoped,
            name,
            scope,
            done,
            functools.partial(supervise, name, run, record, **context),
        )

    async def _run_scoped(
        self, name: str, scope: trio.CancelScope, done: trio.Event, run: Callable[[], Any]
    ) -> None:
        """Run a supervised actor in its own cancel scope (:meth:`_stop` ends it alone)."""
        try:
            with scope:
                await run()
        except Exception as exc:
            # The supervisor keeps an actor's failures in; one raised beside the Cancelled of
            # its stop (a group of both) passes it. The actor is going anyway: not the node.
            if not scope.cancel_called:
                raise
            self.log.error("actor failed while stopping", actor=name, exc_info=exc)
        finally:
            done.set()
            if self._tasks.get(name) == (scope, done):
                del self._tasks[name]

    def _spawn_symbol(self, instrument: Instrument) -> SymbolActor:
        actor = SymbolActor(self, instrument)
        self.symbols[instrument.symbol] = actor
        self._start(f"symbol:{instrument.symbol}", actor.run, symbol=instrument.symbol)
        return actor

    def symbol(self, symbol: str) -> SymbolActor | None:
        return self.symbols.get(symbol)

    def user(self, user_id: str) -> UserActor:
        """The user's actor, started on first use."""
        actor = self.users.get(user_id)
        if actor is None:
            if user_id in self._released:
                raise UsageError("this user was given away to another node", user_id=user_id)
            actor = UserActor(self, user_id)
            self.users[user_id] = actor
            self._start(f"user:{user_id}", actor.run, user_id=user_id)
        return actor

    def device(self, device_id: str) -> DeviceActor:
        """The device's actor, started on first use.

        Raises:
            UnknownPrincipal: the directory knows no owner for this device.
        """
        actor = self.devices.get(device_id)
        if actor is None:
            owner = self.directory.device_owner(device_id)
            if owner is None:
                raise UnknownPrincipal("unknown device", device_id=device_id)
            if owner in self._released:
                raise UsageError(
                    "this device's user was given away to another node", device_id=device_id
                )
            actor = DeviceActor(self, device_id, owner)
            self.devices[device_id] = actor
            self._start(f"device:{device_id}", actor.run, device_id=device_id, user_id=owner)
        return actor

    def restore_view(self, user_id: str) -> tuple[UserState, bool]:
        """A user actor's part of the state, and whether this is the node's start.

        At the start it comes from the start-up index, and the symbol actors have armed the
        user's positions from the fold already. A later (re)start scans the fold, and the user
        actor re-arms: a trigger may have fired just before the crash it recovers from.
        """
        if self._start_views is not None:
            view = self._start_views.pop(user_id, None)
            if not self._start_views:
                self._start_views = None
            if view is not None:
                return view, True
        adopted = self._adopt_views.pop(user_id, None)
        if adopted is not None:  # a later start, indexed by adopt(): the actor re-arms
            return adopted, False
        return self.state.user_view(user_id), False

    def device_infos(self, user_id: str) -> list[DeviceInfo]:
        return [d.info for d in self.devices.values() if d.user_id == user_id]

    def device_views(self, user_id: str) -> list[DeviceView]:
        return [d.view() for d in self.devices.values() if d.user_id == user_id]

    # -- partitions (cluster mode) ---------------------------------------------------------

    async def adopt(self, state: EngineState) -> AdoptedUsers:
        """Take over the users of ``state``: a claimed partition's recovered state (snapshot
        plus journal tail; its positions, commands, approvals, guards and signals).

        The node must be running (quotes may flow meanwhile). The state is merged into
        :attr:`state`, and each user's actor starts from its part as a restarted actor does:
        it re-arms its positions in the symbol books (a level the last quote already crossed
        fires at once). Every command in flight has lost its link, as at the node's start: its
        position goes UNKNOWN until its device's positions snapshot settles it. A device actor
        of these users is always new here (one found running is restarted), and a new device
        actor sends nothing before the snapshot of a session opened after this call (the
        snapshot shows whether the old owner's last command ran). Async: an actor of these
        users found running (a user adopted twice without a release) is stopped first and
        restarted from the merged state.

        Raises:
            UsageError: the node is not running.
        """
        if self._nursery is None or not self._running.is_set():
            raise UsageError("adopt needs a running node")
        views = state.by_user()
        users = set(views)
        # Devices go too: a device actor's core must be new (no snapshot yet) after the adopt.
        await self._stop_actors(users)
        self._released.difference_update(users)
        self.state.merge(state)
        self._adopt_views.update(views)
        for user_id in views:
            self.user(user_id)
        lost: dict[tuple[str, str], list[str]] = defaultdict(list)
        for cid, c in state.commands.items():
            lost[(c.user_id, c.device_id)].append(cid)
        for (user_id, device_id), ids in lost.items():
            self.user(user_id).deliver(LinkLost(device_id, ids))
        if users:
            self.log.info("users adopted", users=len(users), positions=len(state.positions))
        return AdoptedUsers(
            user_ids=frozenset(users),
            positions=len(state.positions),
            in_flight=len(state.commands),
        )

    async def release(
        self,
        user_ids: Collection[str],
        *,
        reason: str,
        on_device_released: Callable[[DeviceActor], Awaitable[None]] | None = None,
    ) -> ReleasedUsers:
        """Give users away: from the return on, nothing of theirs runs or fires here.

        In order: their records leave :attr:`state` (one pass over it; signals, which are
        global, stay); their positions leave every symbol actor's book, with their fires not
        yet handed out and their queued arms (O(their positions) in each book, no scan of it);
        their user and device actors are cancelled, all at once (nothing of theirs is sent
        from then on); each of their device actors is handed to ``on_device_released(actor)``
        (the gateway sends ``moved`` on the connection and closes it) or, without it, its
        session is closed here with ``SERVICE_RESTART``; the actors' tasks are awaited.
        The caller has made their partition durable first (the journal flushed, the lease
        released): nothing of theirs is journaled here from then on. Until they are adopted
        again, asking for an actor of theirs raises :class:`~protocol.errors.UsageError`.
        """
        users = set(user_ids)
        self._released.update(users)
        dropped = self.state.drop_users(users)
        by_symbol: dict[str, set[str]] = defaultdict(set)
        for p in dropped.positions.values():
            by_symbol[p.symbol].add(p.id)
        for user_id in users:  # what the actors hold and the fold may not yet (never, today)
            actor = self.users.get(user_id)
            if actor is not None:
                for p in actor.core.positions.values():
                    by_symbol[p.symbol].add(p.id)
        disarmed = 0
        for symbol_actor in self.symbols.values():
            disarmed += symbol_actor.release(users, by_symbol.get(symbol_actor.symbol, ()))
        device_ids = await self._stop_actors(users, on_device_released)
        for user_id in users:
            self._adopt_views.pop(user_id, None)
        (self.log.info if users else self.log.debug)(
            "users released",
            reason=reason,
            users=len(users),
            positions=disarmed,
            devices=len(device_ids),
        )
        return ReleasedUsers(
            user_ids=frozenset(users), device_ids=device_ids, positions_disarmed=disarmed
        )

    async def _stop_actors(
        self,
        users: Collection[str],
        on_device_released: Callable[[DeviceActor], Awaitable[None]] | None = None,
    ) -> tuple[str, ...]:
        """Stop the user and device actors of ``users``; returns the devices' ids.

        Every task is cancelled at once, before any wait (neither kind can then start the
        other, nor send anything); each live session is then handed to ``on_device_released``
        or closed here (``SERVICE_RESTART``: the EA reconnects, and is routed); the tasks are
        awaited, and the actors leave the node's tables.
        """
        devices = [a for a in self.devices.values() if a.user_id in users]
        names = [f"device:{a.device_id}" for a in devices]
        names += [f"user:{u}" for u in users if u in self.users]
        for actor in devices:
            del self.devices[actor.device_id]
        for user_id in users:
            self.users.pop(user_id, None)
        stopping = [task for name in names if (task := self._tasks.get(name)) is not None]
        for scope, _ in stopping:
            scope.cancel()
        for actor in devices:
            if on_device_released is not None:
                await on_device_released(actor)
            else:
                await actor.end_session(CloseCode.SERVICE_RESTART, "the user moved to another node")
        for _, done in stopping:
            await done.wait()
        for name in names:
            self.supervised.pop(name, None)
        return tuple(a.device_id for a in devices)

    def retry_held(self) -> None:
        """Send the commands the gate held, where it allows now (call it after a lease
        renewal; without it they go at their device's next tick)."""
        for actor in self.devices.values():
            actor.retry_held()

    # -- quotes ------------------------------------------------------------------------------

    def offer_quotes(self, quotes: Iterable[Quote], sent_ms: int | None = None) -> int:
        """Route quotes to their symbol actors; returns how many had one (never blocks).

        The quotes are stamped with their arrival, and a symbol actor judges staleness by it,
        not by when its queue reaches them. Arrival is now, or ``sent_ms`` when the publisher
        stamped its batch earlier than that: time spent in the node's own socket buffers is
        the node's lag, not the quote's age (under load a WebSocket frame can wait there for
        seconds, and rejecting its quotes as stale would miss the breaches they carry). Both
        stamps then come from the publisher's clock, so clock skew does not count either.
        Trusting ``sent_ms`` trusts the publisher no more than ``time_ms`` already does (it is
        authenticated, and could restamp either): staleness guards against an honest feed
        that fell behind, and a quote that was old when it was sent is still refused. Nor
        does a wrong ``sent_ms`` open a door: one ahead of the node's clock is not taken, and
        one far behind its quotes (``0``) gets them refused as from the future, as a quote
        stamped ahead of the node's clock is (``engine.quotes``, ``max_ahead_ms``).
        """
        if not self.accepting:
            return 0
        routed = 0
        symbols = self.symbols
        arrived_ms = self.clock.now_ms()
        if sent_ms is not None:
            self.feed_lag_ms = max(0, arrived_ms - sent_ms)
            arrived_ms = min(arrived_ms, sent_ms)
        trace = tracing.TRACE
        for quote in quotes:
            actor = symbols.get(quote.symbol)
            if actor is not None:
                if trace is not None:
                    trace.quote_offered(quote)
                actor.offer(quote, arrived_ms)
                routed += 1
        return routed

    # -- records and alerts ------------------------------------------------------------------

    def record(self, records: Iterable[Record]) -> int:
        """Journal records (write-behind) and fold them into the live state; last seq."""
        seq = 0
        append, apply, note = self.journal.append_nowait, self.state.apply, self.tradelog.note
        for record in records:
            seq = append(record)
            apply(record)
            note(record)
        return seq

    async def record_durably(self, record: Record) -> int:
        """Journal a record and wait until it (and everything before it) is committed.

        Raises:
            StorageError: the journal cannot make it durable now.
        """
        seq = self.record([record])
        await self.journal.wait_committed(seq)
        return seq

    def on_alerts(self, listener: Callable[[list[Alert]], None]) -> None:
        """Call ``listener`` with every batch of alerts (metrics, the alerts endpoint)."""
        self._on_alerts.append(listener)

    def publish_alerts(self, alerts: list[Alert]) -> None:
        """Fan alerts out to clients and listeners (their records are already journaled)."""
        self.alerts_raised += len(alerts)
        self.hub.publish_alerts(alerts)
        for alert in alerts:
            self.tradelog.note(alert)
        for listener in self._on_alerts:
            listener(alerts)

    def raise_alerts(self, alerts: list[Alert]) -> None:
        """Journal and publish alerts that no core has journaled (market alerts)."""
        self.record(AlertRaised(alert=a) for a in alerts)
        self.publish_alerts(alerts)

    def raise_market_alerts(self, alerts: list[Alert]) -> None:
        """A symbol's alerts (a price jump, a silent feed): raised by one node of a cluster
        only (every node judges every quote), the one :attr:`speaks_for_market` names."""
        if self.speaks_for_market():
            self.raise_alerts(alerts)

    # -- introspection -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters and depths for metrics (read at scrape time, never on the tick path)."""
        return {
            "quotes": sum(s.quotes for s in self.symbols.values()),
            "quotes_rejected": sum(s.rejected for s in self.symbols.values()),
            "quotes_rejected_by_reason": {
                reason: sum(s.rejections.get(reason, 0) for s in self.symbols.values())
                for reason in REJECT_REASONS
            },
            "quotes_coalesced": sum(s.inbox.coalesced for s in self.symbols.values()),
            "fires": sum(s.fired for s in self.symbols.values()),
            "armed": sum(s.armed for s in self.symbols.values()),
            "users": len(self.users),
            "devices_connected": sum(d.core.connected for d in self.devices.values()),
            "clients": self.hub.clients,
            "clients_dropped": self.hub.dropped,
            "alerts": self.alerts_raised,
            "command_outcomes": dict(self.command_outcomes),
            "commands_held_no_lease": self.device_counts["commands_held_no_lease"],
            "ack_hash_mismatches": self.device_counts["ack_hash_mismatches"],
            "restarts": {k: v.restarts for k, v in self.supervised.items() if v.restarts},
            "mailbox_depth": {
                "symbol": max((len(s.inbox) for s in self.symbols.values()), default=0),
                "user": max((len(u.mailbox) for u in self.users.values()), default=0),
                "device": max((len(d.mailbox) for d in self.devices.values()), default=0),
            },
        }

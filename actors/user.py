"""The user actor: drives one user's :class:`~engine.user.UserCore`.

Its mailbox (``spill`` policy: a fired trigger is never dropped) takes a
:data:`~actors.messages.UserMessage`: triggers from symbol actors, command outcomes and
terminal reports from device actors, and requests from the edge (settings, decisions, closes,
modifies, adoptions, a client stream's snapshot), each answered through its typed reply. The
edge reads the actor only through its views (:meth:`UserActor.live_positions`,
:meth:`UserActor.ledger`...), never its core. It sleeps until the next message or until the
core's next due time (retries, modifies, expiry).

Effects are carried out in a fixed order, and that order is the durability rule
(docs/architecture.md, "Durability"):

1. closes, modifies and retries go to the device outbox FIRST (their ids make a resend after a
   crash harmless), then their records go to the write-behind journal;
2. an open goes out only once its records are durable (a crash in between must not leave an
   open on the terminal that the engine has no record of);
3. arm/disarm requests go to symbol actors, changed positions and alerts to client streams,
   fills and closes to the notifier's queue (delivered by its own tasks, never here).

The account (balance, equity, the guard's level) changes only with a device's account report
or a request (settings, a decision...): the actor sends its view to client streams after
those, never after a fired trigger, so the tick path builds no account view.
"""

from __future__ import annotations

import math
from typing import TypeVar, assert_never

import structlog
import trio

from actors import gc_policy, tracing
from actors.mailbox import Mailbox
from actors.messages import (
    AccountReport,
    AdoptPosition,
    ApplySettings,
    ClientSnapshot,
    ClosePosition,
    DecideSignal,
    DeviceChanged,
    Failure,
    Fired,
    LinkLost,
    ModifyPosition,
    Moved,
    Reply,
    Settled,
    TerminalDeals,
    TerminalEvent,
    TerminalSnapshot,
    UserMessage,
    UserRequest,
)
from actors.ports import UserNode
from actors.views import DrawdownStatus, LedgerStatus
from engine.device import Result
from engine.effects import Disarm, Effects
from engine.instruments import Instrument
from engine.positions import Position
from engine.records import Approval, Record
from engine.user import UserCore
from engine.views import account_view
from protocol.client import Snapshot
from protocol.device import Command, OpenCommand
from protocol.errors import TripwireError

__all__ = ["UserActor"]

T = TypeVar("T")


class UserActor:
    def __init__(self, node: UserNode, user_id: str) -> None:
        self.node = node
        self.user_id = user_id
        self.mailbox: Mailbox[UserMessage | Failure] = Mailbox(
            f"user:{user_id}", node.config.user_mailbox
        )
        self._probes = node.probes
        self.core = self._new_core()
        self.log = structlog.get_logger().bind(user_id=user_id)
        self._nursery: trio.Nursery | None = None
        self._ready = trio.Event()
        self._timer: trio.CancelScope | None = None
        """While the actor's task waits for its mailbox (the fast path is open): the scope
        whose deadline is the core's next due time."""

    def _new_core(self) -> UserCore:
        node = self.node
        return UserCore(
            self.user_id,
            node.directory.user_settings(self.user_id),
            node.instruments,
            node.config.timing,
        )

    # -- inputs ------------------------------------------------------------------------------

    def deliver(self, message: UserMessage, inline: bool = True) -> None:
        """Put a message in the mailbox (never blocks, never drops).

        The idle fast path, as in the symbol actor: a fired trigger or a command's result
        reaching an actor whose task is waiting on an empty mailbox is handled at once in the
        caller's task (trio runs every task on one thread, and the core is synchronous, so
        nothing interleaves). A quote that crosses a band of levels fires positions of hundreds
        of users at once; without this each of them cost a task hop before its close command
        reached the outbox, and the last user of a burst waited for all the others' hops
        (bench.engine's tick-to-outbox). The acks of that burst come back the same way: each
        result a hop before its position was closed (bench.e2e's engine CPU per close).
        A failure is handed to the actor's task, which raises it for the supervisor.
        ``inline=False`` always queues (a stopping symbol actor handing over its backlog).
        """
        timer = self._timer
        kind = type(message)
        if (
            inline
            and (kind is Fired or kind is Settled)
            and timer is not None
            and not len(self.mailbox)
        ):
            self._timer = None  # a nested delivery during this one queues as usual
            core = self.core
            due = core.next_due_ms()
            try:
                self._handle(message, self.node.clock.now_ms())
            except Exception as exc:
                self.mailbox.put_nowait(Failure(exc))
                return
            new_due = core.next_due_ms()
            if new_due != due:
                # Move the waiting task's timer where it sleeps: waking it with a message
                # just to re-read its timer cost a task switch per user of every burst.
                timer.deadline = self._deadline(new_due)
            self._timer = timer
            return
        self.mailbox.put_nowait(message)

    # -- views (read-only, for the edge) -----------------------------------------------------

    def live_positions(self) -> tuple[Position, ...]:
        """The user's positions that are not final yet (pending, open, closing, unknown...)."""
        return tuple(self.core.positions.values())

    def recently_closed(self, position_id: str) -> Position | None:
        """``position_id`` if it became final lately (it may not be in Postgres yet)."""
        return self.core.recent_closed.get(position_id)

    def instrument(self, symbol: str) -> Instrument | None:
        """The instrument the user trades ``symbol`` as: the node's, or one the user's device
        taught the core (broker specs); None if neither knows it."""
        return self.core.instruments.get(symbol)

    def ledger(self) -> LedgerStatus:
        core = self.core
        return LedgerStatus(
            core.balance, math.fsum(core.unreported.values()), tuple(core.recent_closed.values())
        )

    def drawdown(self) -> DrawdownStatus:
        core = self.core
        guard = core.guard
        return DrawdownStatus(
            guard.level,
            guard.drawdown,
            guard.peak,
            guard.opens_blocked,
            guard.limits,
            core.equity,
            core.balance,
        )

    # -- the actor ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Restore from the node's state fold, then serve the mailbox until cancelled."""
        self.core = core = self._new_core()
        view, node_start = self.node.restore_view(self.user_id)
        with gc_policy.bulk_build():
            # At the node's start the symbol actors arm the whole fold at once: no arms here.
            effects = core.restore(
                view.positions, view.commands, view.approvals, view.guard, arm=not node_start
            )
        for info in self.node.device_infos(self.user_id):
            effects.extend(core.on_device(info, self.node.clock.now_ms()))
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._carry_out(effects, None)
            self._ready.set()
            await self._serve()

    async def wait_ready(self) -> None:
        """Return once the actor has restored its state and re-armed its positions (their arms
        are queued in the symbol actors ahead of any later quote)."""
        await self._ready.wait()

    def _deadline(self, due_ms: int | None) -> float:
        """The trio deadline of the core's next due time (``due_ms``, node clock)."""
        if due_ms is None:
            return math.inf
        return trio.current_time() + max(0.0, (due_ms - self.node.clock.now_ms()) / 1000)

    async def _serve(self) -> None:
        clock = self.node.clock
        while True:
            batch: list[UserMessage | Failure] = []
            try:
                with trio.CancelScope(deadline=self._deadline(self.core.next_due_ms())) as timer:
                    self._timer = timer
                    batch = await self.mailbox.get_batch()
            finally:
                self._timer = None
            # Woken with a batch, then cancelled before running (released to another node).
            await trio.lowlevel.checkpoint_if_cancelled()
            now = clock.now_ms()
            for message in batch:
                self._handle(message, now)
            due = self.core.next_due_ms()
            if due is not None and due <= now:
                self._carry_out(self.core.tick(now), None)

    def _handle(self, message: UserMessage | Failure, now: int) -> None:
        core = self.core
        # Fired first, by its exact type: a class pattern costs ~50 ns more per message
        # (timeit, CPython 3.11), and every fired user of a storm takes this branch.
        if type(message) is Fired:
            effects = core.on_triggers(message.triggers, now)
            trace = tracing.TRACE
            if trace is not None and message.trace is not None:
                for _device_id, command in effects.commands:
                    trace.decided(command.command_id, message.trace)
            self._carry_out(effects, message.quote_seq)
            probe = self._probes.fire_latency
            if probe is not None and effects.commands:
                probe(message.started, len(effects.commands))
            return
        match message:
            case Settled(result=r):
                # engine.device.Result's category is a str; the classifiers return only the
                # values of protocol.results.ResultCategory, which are engine.user's Category.
                outcome = core.on_result(r.command_id, r.category, r.ack, now)
                self._carry_out(outcome, None)
            case Moved(moves=moves):
                self._carry_out(core.on_level_moves(moves, now), None)
            case LinkLost(command_ids=command_ids):
                self._carry_out(core.on_link_lost(command_ids, now), None)
            case TerminalSnapshot(device_id=device_id, positions=positions):
                self._carry_out(core.on_snapshot(device_id, positions, now), None)
            case TerminalEvent(device_id=device_id, event=event):
                self._carry_out(core.on_event(device_id, event, now), None)
            case TerminalDeals(device_id=device_id, deals=deals):
                self._carry_out(core.on_deals(device_id, deals, now), None)
            case AccountReport(state=s):
                self._carry_out(core.on_account(s.balance, s.equity, s.currency, now), None)
                self._account_changed()
            case DeviceChanged(info=info):
                self._carry_out(core.on_device(info, now), None)
            case (
                ApplySettings()
                | DecideSignal()
                | ClosePosition()
                | ModifyPosition()
                | AdoptPosition()
                | ClientSnapshot()
            ):
                # Its own clock reading: a request is judged at the moment it runs, not at
                # the start of the batch it came in.
                self._request(message, self.node.clock.now_ms())
                self._account_changed()
            case Failure(error=error):
                raise error
            case _:
                assert_never(message)

    # -- requests ----------------------------------------------------------------------------

    def _request(self, request: UserRequest, now: int) -> None:
        """Run a request and answer it. A refusal (a :class:`TripwireError`) goes back to the
        caller; anything else is a bug: the caller is failed too, then the actor crashes (and
        its supervisor restarts it)."""
        try:
            match request:
                case ApplySettings(settings=settings, reply=reply):
                    self.core.apply_settings(settings)
                    self._answer(reply, None, None)
                case DecideSignal(reply=reply):
                    approval, effects = self._decide(request, now)
                    self._answer(reply, approval, effects)
                case ClosePosition(position_id=position_id, reply=reply):
                    effects = self.core.close_position(position_id, "manual", now)
                    closing = self.core.positions.get(position_id)
                    self._answer(reply, closing.command_id if closing else None, effects)
                case ModifyPosition(position_id=position_id, changes=changes, reply=reply):
                    live = self.core.positions.get(position_id)
                    quote = None if live is None else self.node.prices.get(live.symbol)
                    bid, ask = (None, None) if quote is None else (quote[0], quote[1])
                    effects = self.core.modify_position(position_id, changes, bid, ask, now)
                    self._answer(reply, self.core.positions.get(position_id), effects)
                case AdoptPosition(position_id=position_id, reply=reply):
                    adopted, effects = self.core.adopt(position_id, now)
                    self._answer(reply, adopted, effects)
                case ClientSnapshot(reply=reply):
                    self._answer(reply, self._client_snapshot(), None)
                case _:
                    assert_never(request)
        except TripwireError as refusal:
            request.reply.fail(refusal)
        except Exception as bug:
            request.reply.fail(bug)
            raise

    def _answer(self, reply: Reply[T], value: T, effects: Effects | None) -> None:
        if effects is not None:
            self._carry_out(effects, None)
        reply.set(value)

    def _decide(self, request: DecideSignal, now: int) -> tuple[Approval, Effects]:
        """Judge a decision at this moment's price and time (the core refuses an expired
        signal, whatever the decision)."""
        core, signal = self.core, request.signal
        quote = self.node.prices.get(signal.symbol)
        return core.decide(
            approval_id=request.approval_id,
            signal=signal,
            decision=request.decision,
            bid=quote[0] if quote else None,
            ask=quote[1] if quote else None,
            now_ms=now,
            ip=request.ip,
            user_agent=request.user_agent,
            volume=request.volume,
        )

    def _client_snapshot(self) -> Snapshot:
        core = self.core
        return self.node.hub.snapshot(
            self.user_id,
            core.positions.values(),
            core.recent_closed.values(),
            account_view(core),
        )

    def _account_changed(self) -> None:
        """Tell the user's client streams the account as it is now (the hub sends it only if
        it differs from what they were last sent)."""
        hub = self.node.hub
        if hub.watches(self.user_id):
            hub.account_changed(self.user_id, account_view(self.core))

    # -- effects -----------------------------------------------------------------------------

    def _carry_out(self, effects: Effects, quote_seq: int | None) -> None:
        node = self.node
        opens = []
        if effects.commands:
            # Grouped by device: a burst of closes is one hand-over (and one wake-up of the
            # device's writer) per device instead of one per command; order is kept per device.
            by_device: dict[str, list[Command]] = {}
            for device_id, command in effects.commands:
                if type(command) is OpenCommand:
                    opens.append((device_id, command))
                else:
                    by_device.setdefault(device_id, []).append(command)
            for device_id, commands in by_device.items():
                node.device(device_id).submit_many_nowait(commands)
        if quote_seq is not None and effects.commands:
            commands_out = self._probes.commands_out
            if commands_out is not None:
                commands_out(quote_seq, len(effects.commands))
        if opens:
            # The records go with an awaited append: the open leaves once they are durable.
            *early, last = effects.records
            node.record(early)
            assert self._nursery is not None
            self._nursery.start_soon(self._open_when_durable, last, opens)
        else:
            node.record(effects.records)
        for op in effects.arms:
            symbol = op.symbol if isinstance(op, Disarm) else op.position.symbol
            actor = node.symbol(symbol)
            if actor is not None:
                actor.control(op)
        if effects.changed:
            node.hub.positions_changed(self.user_id, effects.changed)
        if effects.alerts:
            node.publish_alerts(effects.alerts)
        if effects.notices and node.notify is not None:
            node.notify(self.user_id, effects.notices)  # a bounded queue: never blocks

    async def _open_when_durable(
        self, last_record: Record, opens: list[tuple[str, OpenCommand]]
    ) -> None:
        try:
            await self.node.record_durably(last_record)
        except TripwireError as exc:
            # Not durable: never open. The open is settled as refused (the position -> REJECTED).
            self.log.error("open held back: journal unavailable", error=str(exc))
            for _, command in opens:
                text = "not opened: the journal is unavailable"
                self.deliver(Settled(Result.refused(command.command_id, text)))
            return
        for device_id, command in opens:
            self.node.device(device_id).submit_nowait(command)

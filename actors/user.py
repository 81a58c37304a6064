"""The user actor: drives one user's :class:`~engine.user.UserCore`.

Its mailbox (``spill`` policy: a fired trigger is never dropped) receives triggers from symbol
actors, command outcomes and terminal reports from device actors, and calls from the gateway.
It sleeps until the next message or until the core's next due time (retries, modifies, expiry).

Effects are carried out in a fixed order, and that order is the durability rule
(docs/architecture.md, "Durability"):

1. closes, modifies and retries go to the device outbox FIRST (their ids make a resend after a
   crash harmless), then their records go to the write-behind journal;
2. an open goes out only once its records are durable (a crash in between must not leave an
   open on the terminal that the engine has no record of);
3. arm/disarm requests go to symbol actors, changed positions and alerts to client streams,
   fills and closes to the notifier's queue (delivered by its own tasks, never here).

The account (balance, equity, the guard's level) changes only with a device's account report
or a call (settings, a restore): the actor sends its view to client streams after those, never
after a fired trigger, so the tick path builds no account view.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple

import structlog
import trio

from actors import gc_policy, tracing
from actors.mailbox import Mailbox
from actors.messages import (
    AccountReport,
    Call,
    DeviceChanged,
    Fired,
    LinkLost,
    Moved,
    Reply,
    Settled,
    TerminalDeals,
    TerminalEvent,
    TerminalSnapshot,
)
from engine.device import Result
from engine.effects import Disarm, Effects
from engine.user import UserCore
from engine.views import account_view
from protocol.device import OpenCommand
from protocol.errors import TripwireError

if TYPE_CHECKING:
    from actors.node import Node

__all__ = ["UserActor"]


class _Failure(NamedTuple):
    """A failure of the fast path, raised in the actor's own task."""

    error: Exception


class UserActor:
    def __init__(self, node: Node, user_id: str) -> None:
        self.node = node
        self.user_id = user_id
        self.mailbox: Mailbox[Any] = Mailbox(f"user:{user_id}", node.config.user_mailbox)
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

    def deliver(self, message: Any, inline: bool = True) -> None:
        """Put a message in the mailbox (never blocks, never drops).

        The idle fast path, as in the symbol actor: a fired trigger reaching an actor whose task
        is waiting on an empty mailbox is handled at once in the caller's task (trio runs every
        task on one thread, and the core is synchronous, so nothing interleaves). A quote that
        crosses a band of levels fires positions of hundreds of users at once; without this
        each of them cost a task hop before its close command reached the outbox, and the last
        user of a burst waited for all the others' hops (bench.engine's tick-to-outbox).
        A failure is handed to the actor's task, which raises it for the supervisor.
        ``inline=False`` always queues (a stopping symbol actor handing over its backlog).
        """
        timer = self._timer
        if inline and type(message) is Fired and timer is not None and not len(self.mailbox):
            self._timer = None  # a nested delivery during this one queues as usual
            core = self.core
            due = core.next_due_ms()
            try:
                self._handle(message, self.node.clock.now_ms())
            except Exception as exc:
                self.mailbox.put_nowait(_Failure(exc))
                return
            new_due = core.next_due_ms()
            if new_due != due:
                # Move the waiting task's timer where it sleeps: waking it with a message
                # just to re-read its timer cost a task switch per user of every burst.
                timer.deadline = self._deadline(new_due)
            self._timer = timer
            return
        self.mailbox.put_nowait(message)

    async def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(core, *args) -> (value, effects)`` inside the actor and return ``value``.

        Raises whatever :class:`TripwireError` the core raised (a refusal, a conflict...).
        """
        reply = Reply()
        self.mailbox.put_nowait(Call(fn, args, reply))
        return await reply.wait()

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

    def _deadline(self, due_ms: int | None) -> float:
        """The trio deadline of the core's next due time (``due_ms``, node clock)."""
        if due_ms is None:
            return math.inf
        return trio.current_time() + max(0.0, (due_ms - self.node.clock.now_ms()) / 1000)

    async def _serve(self) -> None:
        clock = self.node.clock
        while True:
            batch: list[Any] = []
            try:
                with trio.CancelScope(deadline=self._deadline(self.core.next_due_ms())) as timer:
                    self._timer = timer
                    batch = await self.mailbox.get_batch()
            finally:
                self._timer = None
            now = clock.now_ms()
            for message in batch:
                self._handle(message, now)
            due = self.core.next_due_ms()
            if due is not None and due <= now:
                self._carry_out(self.core.tick(now), None)

    def _handle(self, message: Any, now: int) -> None:
        core = self.core
        kind = type(message)
        if kind is Fired:
            effects = core.on_triggers(message.triggers, now)
            trace = tracing.TRACE
            if trace is not None and message.trace is not None:
                for _device_id, command in effects.commands:
                    trace.decided(command.command_id, message.trace)
            self._carry_out(effects, message.quote_seq)
            probe = self.node.fire_probe
            if probe is not None and effects.commands:
                probe(message.started, len(effects.commands))
        elif kind is Settled:
            r = message.result
            self._carry_out(core.on_result(r.command_id, r.category, r.ack, now), None)
        elif kind is Moved:
            self._carry_out(core.on_level_moves(message.moves, now), None)
        elif kind is LinkLost:
            self._carry_out(core.on_link_lost(message.command_ids, now), None)
        elif kind is TerminalSnapshot:
            self._carry_out(core.on_snapshot(message.device_id, message.positions, now), None)
        elif kind is TerminalEvent:
            self._carry_out(core.on_event(message.device_id, message.event, now), None)
        elif kind is TerminalDeals:
            self._carry_out(core.on_deals(message.device_id, message.deals, now), None)
        elif kind is AccountReport:
            s = message.state
            self._carry_out(core.on_account(s.balance, s.equity, s.currency, now), None)
            self._account_changed()
        elif kind is DeviceChanged:
            self._carry_out(core.on_device(message.info, now), None)
        elif kind is Call:
            self._call(message)
            self._account_changed()
        elif kind is _Failure:
            raise message.error
        else:  # pragma: no cover - a programming error, surfaced by the supervisor
            raise TypeError(f"user actor got {kind.__name__}")

    def _call(self, call: Call) -> None:
        try:
            value, effects = call.fn(self.core, *call.args)
        except TripwireError as refusal:
            call.reply.fail(refusal)
            return
        except Exception as bug:
            call.reply.fail(bug)
            raise
        if effects is not None:
            self._carry_out(effects, None)
        call.reply.set(value)

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
            by_device: dict[str, list[Any]] = {}
            for device_id, command in effects.commands:
                if type(command) is OpenCommand:
                    opens.append((device_id, command))
                else:
                    by_device.setdefault(device_id, []).append(command)
            for device_id, commands in by_device.items():
                node.device(device_id).submit_many_nowait(commands)
        if quote_seq is not None and node.tracer is not None and effects.commands:
            node.tracer(quote_seq, len(effects.commands))
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

    async def _open_when_durable(self, last_record: Any, opens: list[tuple[str, Any]]) -> None:
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

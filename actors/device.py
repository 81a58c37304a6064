"""The device actor: one per device, around its :class:`~engine.device.DeviceCore`.

A device talks to the node through a *link* (a WebSocket in the gateway, memory channels for the
built-in paper device) that knows how to encode, sign and send a server message. One live session
per device: a second connection replaces the first, whose unanswered commands are lost (their
positions go UNKNOWN until the new session's positions snapshot settles them).

Commands from user actors enter with :meth:`DeviceActor.submit_nowait`, synchronously: the
command is in this device's outbox when the call returns (the tick path's last step). Frames
from the device enter with :meth:`DeviceActor.inbound`: handled at once in the connection's
reader when the actor's task is idle, in the actor's task otherwise.
The outbox never drops: past its limit the device is marked unhealthy and an alert is raised.

Every command handed to the link is first allowed by the node's
:class:`~actors.ports.CommandGate` (a cluster node's lease check; the single node's allows all):
asked when the core would send (a submission, the flush after a snapshot, a tick once the gate
has opened again) and again by the writer before it writes commands that waited in the
session's outbox. A refused command is queued again in the core, never lost.
"""

from __future__ import annotations

import secrets
import zlib
from collections.abc import Sequence
from typing import Protocol, assert_never, cast, final

import structlog
import trio

from actors import tracing
from actors.mailbox import Mailbox
from actors.messages import (
    AccountReport,
    DeviceChanged,
    Failure,
    LinkLost,
    Settled,
    TerminalDeals,
    TerminalEvent,
    TerminalSnapshot,
)
from actors.ports import DeviceNode
from engine.device import DeviceCore, DeviceOutput
from engine.user import DeviceInfo
from protocol.client import DeviceView
from protocol.closecodes import CloseCode, close_code_for, close_reason
from protocol.device import (
    AccountState,
    Ack,
    Command,
    DealsReport,
    DeviceMessage,
    Heartbeat,
    Hello,
    HelloBody,
    Ping,
    PositionEvent,
    PositionsSnapshot,
    ServerMessage,
    Welcome,
)
from protocol.errors import PeerError
from protocol.redaction import device_error

__all__ = ["DeviceActor", "DeviceLink", "Session"]

_COMMANDS = Command.__args__
_OUTBOX, _SENT = tracing.HOPS.index("outbox"), tracing.HOPS.index("sent")


@final
class _Flush:
    """In an outbox: the link holds bytes a direct send left behind; the writer flushes them."""

    __slots__ = ()


_FLUSH = _Flush()


def _session_id() -> str:
    """Random and unique: the optional frame cipher mixes it into its key (docs/protocol.md)."""
    return "s-" + secrets.token_hex(12)


class DeviceLink(Protocol):
    """The transport of one device session."""

    async def send(self, message: ServerMessage) -> None:
        """Encode (and sign commands) and send; raise if the connection is gone."""

    async def close(self, code: int, reason: str) -> None: ...


class Session:
    """One connection of a device: its link and its own outbox."""

    def __init__(self, session_id: str, link: DeviceLink) -> None:
        self.session_id = session_id
        self.link = link
        self.outbox: Mailbox[ServerMessage | _Flush] = Mailbox(f"outbox:{session_id}", 1 << 30)
        self.closed = trio.Event()
        self.cancel = trio.CancelScope()


class DeviceActor:
    def __init__(self, node: DeviceNode, device_id: str, user_id: str) -> None:
        self.node = node
        self.device_id = device_id
        self.user_id = user_id
        # (the session it came on, a decoded frame or None: that session ended)
        self.mailbox: Mailbox[tuple[Session, DeviceMessage | None] | Failure] = Mailbox(
            f"device:{device_id}", node.config.device_mailbox
        )
        self.core = self._new_core()
        self.session: Session | None = None
        self.log = structlog.get_logger().bind(device_id=device_id, user_id=user_id)
        self._nursery: trio.Nursery | None = None
        self._started = trio.Event()
        self._gate = node.gate
        self._counted = (0, 0)
        """The core's (held, hash mismatches) already added to the node's counters."""

    def _new_core(self) -> DeviceCore:
        node = self.node
        return DeviceCore(
            self.device_id,
            self.user_id,
            node.instruments,
            node.classify,
            node.directory.device_overrides(self.device_id),
            stale_after_ms=node.config.device_stale_ms,
            outbox_limit=node.config.outbox_limit,
        )

    @property
    def info(self) -> DeviceInfo:
        core = self.core
        return DeviceInfo(
            self.device_id, dict(core.instruments), core.connected, core.stale, core.tradable
        )

    # -- views (read-only, for the edge) -----------------------------------------------------

    def view(self) -> DeviceView:
        """The device's status as clients see it."""
        core = self.core
        hello = core.hello
        return DeviceView(
            device_id=self.device_id,
            connected=core.connected,
            stale=core.stale,
            last_seen_ms=core.last_seen_ms,
            healthy=core.healthy,
            account_login=hello.account_login if hello else "",
            broker=hello.broker if hello else "",
        )

    @property
    def outstanding_commands(self) -> int:
        """Commands sent (or queued) to the device and not answered yet."""
        return len(self.core.outstanding())

    # -- commands (from user actors) ---------------------------------------------------------

    def submit_nowait(self, command: Command) -> None:
        """Hand a command to this device: in the outbox on return, or queued if it is away."""
        allowed = self._gate.may_send(self.user_id)
        self._apply(self.core.submit(command, self.node.clock.now_ms(), allowed))

    def submit_many_nowait(self, commands: list[Command]) -> None:
        """:meth:`submit_nowait` for several commands, in order (one wake-up of the writer)."""
        allowed = self._gate.may_send(self.user_id)
        self._apply(self.core.submit_many(commands, self.node.clock.now_ms(), allowed))

    # -- sessions (from the gateway or the paper device) -------------------------------------

    async def open_session(self, body: HelloBody, link: DeviceLink) -> Session:
        """Start a session for a verified hello; replaces any live one. Sends the welcome."""
        while self._nursery is None:
            await self._started.wait()
        now = self.node.clock.now_ms()
        session = Session(_session_id(), link)
        old = self.session
        self.session = session
        out = self.core.connect(session.session_id, body, now)
        config = self.node.config
        session.outbox.put_nowait(
            Welcome(
                session_id=session.session_id,
                v=1,
                server_time_ms=now,
                heartbeat_s=config.heartbeat_s,
                stale_after_s=config.device_stale_ms // 1000,
                encryption=body.encryption,
            )
        )
        self._apply(out)
        if old is not None:
            await self._end(old, CloseCode.REPLACED, "replaced by a new connection")
        assert self._nursery is not None
        self._nursery.start_soon(self._write, session)
        self.log.info(
            "device session opened",
            session_id=session.session_id,
            replaced=old.session_id if old else None,
        )
        return session

    def inbound(self, session: Session, message: DeviceMessage) -> None:
        """A decoded frame from the device (never blocks).

        The idle fast path, as in the user and symbol actors: when the actor's task waits on
        an empty mailbox, the frame is handled at once in the caller's task (the connection's
        reader; trio runs every task on one thread and the handling is synchronous, so nothing
        interleaves and nothing queued is overtaken). Through the mailbox an ack cost a task
        hop here and another to its user actor before the position was closed, and a burst's
        acks each waited for the scheduler's turns (``bench.e2e``'s engine CPU per close).
        A failure is handed to the actor's task, which raises it for the supervisor.
        """
        if self.mailbox.awaited:
            if session is self.session:
                try:
                    self._handle(session, message)
                except Exception as exc:
                    self.mailbox.put_nowait(Failure(exc))
            return
        self.mailbox.put_nowait((session, message))

    def ping(self, session: Session, seq: int) -> None:
        """Queue a ``ping`` on ``session`` if it is still the live one (the gateway's dead-peer
        check: the EA answers with a heartbeat). It leaves through the session's writer, the
        one task that sends commands, so it never races them on the wire."""
        if session is self.session:
            session.outbox.put_nowait(Ping(seq=seq, time_ms=self.node.clock.now_ms()))

    def close_session(self, session: Session) -> None:
        """The connection ended (the reader saw it close)."""
        self.mailbox.put_nowait((session, None))

    async def end_session(self, code: int, reason: str) -> bool:
        """Close the live session, if any (a revoked device); True if there was one.

        The connection's reader then reports the close as for any disconnect.
        """
        session = self.session
        if session is None:
            return False
        await self._end(session, code, reason)
        return True

    async def _end(self, session: Session, code: int, reason: str) -> None:
        session.cancel.cancel()
        session.closed.set()
        with trio.move_on_after(1):
            try:
                await session.link.close(code, reason)
            except Exception as exc:  # already gone: nothing to close
                self.log.debug("closing a dead link", error=str(exc))

    def _send_or_queue(self, session: Session, frames: Sequence[ServerMessage]) -> None:
        """Frames for the live session: sent at once when its link can send without waiting
        and nothing is queued before them (the tick path then puts a close on the wire with no
        task hop), queued for the session's writer otherwise."""
        status = 0
        if not len(session.outbox):
            send_nowait = getattr(session.link, "send_many_nowait", None)
            if send_nowait is not None:
                status = send_nowait(frames)
        if status == 0:
            session.outbox.put_many_nowait(frames)
        elif status == 2:  # partly in the link's backlog: the writer flushes it
            session.outbox.put_nowait(_FLUSH)
        trace = tracing.TRACE
        if trace is not None:
            for frame in frames:
                if isinstance(frame, _COMMANDS):
                    trace.stamp(frame.command_id, _OUTBOX)
                    if status:
                        trace.stamp(frame.command_id, _SENT)

    async def _write(self, session: Session) -> None:
        with session.cancel:
            try:
                while True:
                    queued = await session.outbox.get_batch()
                    if _FLUSH in queued:
                        batch = [f for f in queued if not isinstance(f, _Flush)]
                        await session.link.flush()  # type: ignore[attr-defined]
                    else:  # (no copy: the common case)
                        batch = cast(list[ServerMessage], queued)
                    if not batch:
                        continue
                    if not self._gate.may_send(self.user_id):
                        batch = self._hold_commands(session, batch)
                        if not batch:
                            continue
                    send_many = getattr(session.link, "send_many", None)
                    if send_many is not None:  # one hand-over for the batch (see the link)
                        await send_many(batch)
                    else:
                        for frame in batch:
                            await session.link.send(frame)
                    trace = tracing.TRACE
                    if trace is not None:
                        for frame in batch:
                            if isinstance(frame, _COMMANDS):
                                trace.stamp(frame.command_id, _SENT)
            except Exception as exc:  # the connection broke: the reader will report the close
                self.log.info("device link write failed", error=str(exc))

    def _hold_commands(self, session: Session, batch: list[ServerMessage]) -> list[ServerMessage]:
        """The gate closed while these frames waited in the outbox: its commands go back to
        the core's queue (unless the session was replaced meanwhile: then the core returned
        them as lost already); the other frames (pings) are still sent."""
        held = [f.command_id for f in batch if isinstance(f, _COMMANDS)]
        if held and session is self.session:
            self.core.unsend(held)
            self._count()
            self.log.warning("commands held: the gate refused them", commands=len(held))
        return [f for f in batch if not isinstance(f, _COMMANDS)]

    # -- the actor ---------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            # Sessions opened from now on wait for the next run (a restart) to be ready.
            self._nursery = None
            self._started = trio.Event()

    async def _run(self) -> None:
        self.core = self._new_core()
        self._counted = (0, 0)
        if self.session is not None:  # a restart: the old session cannot be trusted
            stale, self.session = self.session, None
            await self._end(stale, CloseCode.SERVICE_RESTART, "device actor restarted")
        lost = [cid for cid, c in self.node.state.commands.items() if c.device_id == self.device_id]
        if lost:
            self.node.command_outcomes["lost"] += len(lost)
            self.node.user(self.user_id).deliver(LinkLost(self.device_id, lost))
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._started.set()
            nursery.start_soon(self._tick)
            while True:
                batch = await self.mailbox.get_batch()
                # Woken with a batch, then cancelled before running (its user released to
                # another node): the batch is not this node's to handle any more.
                await trio.lowlevel.checkpoint_if_cancelled()
                for item in batch:
                    if isinstance(item, Failure):
                        raise item.error
                    session, message = item
                    if session is self.session:
                        self._handle(session, message)

    def _handle(self, session: Session, message: DeviceMessage | None) -> None:
        """A frame of the live session, or None: that session ended."""
        now = self.node.clock.now_ms()
        core = self.core
        user = self.node.user(self.user_id)
        match message:
            case None:
                self.session = None
                session.cancel.cancel()
                self._apply(core.disconnect(now))
                self.log.info("device session closed", session_id=session.session_id)
            case Ack():
                mismatches = core.hash_mismatches
                out = core.on_ack(message, now)
                fault = out.fault
                self._apply(out)
                if core.hash_mismatches != mismatches:
                    self.log.error(
                        "ack refused: its command_hash is another command's",
                        command_id=message.command_id,
                        command_hash=message.command_hash,
                    )
                if fault is not None:
                    self._refuse(session, fault, now)
            case Heartbeat():
                self._apply(core.on_heartbeat(now))
                self._heard_from()
            case PositionsSnapshot():
                positions, out = core.on_snapshot(message.positions, now)
                self._apply(out)
                user.deliver(TerminalSnapshot(self.device_id, positions))
                self._apply(core.flush(self._gate.may_send(self.user_id)))
            case DealsReport():
                core.last_seen_ms = now
                if message.deals:
                    user.deliver(TerminalDeals(self.device_id, list(message.deals)))
            case PositionEvent():
                event = core.on_event(message, now)
                if event is not None:
                    user.deliver(TerminalEvent(self.device_id, event))
            case AccountState():
                core.last_seen_ms = now
                user.deliver(AccountReport(self.device_id, message))
                self._heard_from()
            case Hello():  # a session begins with its hello (the gateway's): not one again
                self.log.warning("unexpected device message", type="Hello")
            case _:
                assert_never(message)

    def _refuse(self, session: Session, fault: PeerError, now: int) -> None:
        """The device broke the protocol (``fault``): its session ends now (its unanswered
        commands are lost: their positions go UNKNOWN until its next snapshot settles them);
        it is told why with an error frame, then closed with the matching code."""
        self.session = None
        self._apply(self.core.disconnect(now))
        self.log.warning("device refused", code=fault.code, reason=fault.message)
        assert self._nursery is not None
        self._nursery.start_soon(self._tell_and_end, session, fault)

    async def _tell_and_end(self, session: Session, fault: PeerError) -> None:
        session.cancel.cancel()  # its writer stops: the error frame is the last one sent
        with trio.move_on_after(1):
            try:
                command_id = fault.details.get("command_id")
                await session.link.send(device_error(fault, fatal=True, command_id=command_id))
            except Exception as exc:  # already gone: nothing to tell
                self.log.debug("could not send the error frame", error=str(exc))
        await self._end(session, close_code_for(fault), close_reason(fault))

    def _heard_from(self) -> None:
        """The device's periodic frames move its ``last_seen_ms``: streams get the new view
        (coalesced per device, so a client reading slowly gets the latest one only)."""
        hub = self.node.hub
        if hub.watches(self.user_id):
            hub.device_changed(self.user_id, self.view())

    async def _tick(self) -> None:
        period = self.node.config.device_tick_s
        # Each device ticks at its own phase of the period (fixed by its id): devices started
        # together would otherwise all tick in the same instant, and 1,000 of them stalled the
        # loop for ~45 ms once a second (bench.engine's tick-to-outbox p99).
        await trio.sleep(period * (zlib.crc32(self.device_id.encode()) % 1000) / 1000)
        while True:
            core = self.core
            self._apply(core.tick(self.node.clock.now_ms()))
            if core.gate_held and self._gate.may_send(self.user_id):
                self._apply(core.flush(True))  # the gate opened again: what it held goes
            await trio.sleep(period)

    def retry_held(self) -> None:
        """Send what the gate held, if it allows now (the node calls it when a lease is
        renewed, so held commands need not wait for the next tick)."""
        core = self.core
        if core.gate_held and self._gate.may_send(self.user_id):
            self._apply(core.flush(True))

    def _count(self) -> None:
        """Add what the core counted since the last call to the node's device counters."""
        core = self.core
        held, mismatches = self._counted
        if core.held_no_lease != held or core.hash_mismatches != mismatches:
            counts = self.node.device_counts
            counts["commands_held_no_lease"] += core.held_no_lease - held
            counts["ack_hash_mismatches"] += core.hash_mismatches - mismatches
            self._counted = (core.held_no_lease, core.hash_mismatches)

    def _apply(self, out: DeviceOutput) -> None:
        node = self.node
        self._count()
        if out.frames:
            session = self.session
            if session is not None:
                self._send_or_queue(session, out.frames)
        if out.records:
            # Before the results: a user settling one at once (its idle fast path) journals
            # what it decides after the device's own records, as when it settled in its task.
            node.record(out.records)
        if out.results or out.lost:
            user = node.user(self.user_id)
            for result in out.results:
                node.command_outcomes[result.category] += 1
                user.deliver(Settled(result))
            if out.lost:
                node.command_outcomes["lost"] += len(out.lost)
                user.deliver(LinkLost(self.device_id, out.lost))
        if out.alerts:
            node.publish_alerts(out.alerts)
        if out.status_changed:
            node.user(self.user_id).deliver(DeviceChanged(self.info))
            node.hub.device_changed(self.user_id, self.view())

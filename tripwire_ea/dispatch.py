"""What the bridge answers to each server frame, and what it reports of the terminal.

Synchronous on purpose: every method talks to the terminal (blocking IPC), so the session runs
them one at a time in a worker thread. Nothing a server frame carries reaches ``order_send``
unless it decodes as a command and its signature verifies under this session's key: a frame
that does not decode is dropped, a command that does not verify is answered ``EA_BAD_SIGNATURE``
and never executed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec
import structlog

from protocol.codec import WireCodec
from protocol.device import (
    Ack,
    CloseCommand,
    Command,
    DeviceMessage,
    EventKind,
    Heartbeat,
    ModifyCommand,
    OpenCommand,
    PartialCloseCommand,
    Ping,
    ServerMessage,
    TerminalPosition,
    command_hash,
)
from protocol.errors import BadSignature, TripwireError
from protocol.session import verify_command
from tripwire_ea import retcodes as rc
from tripwire_ea.terminal import Terminal
from tripwire_ea.window import CommandWindow

__all__ = ["Dispatcher"]

_COMMANDS = (OpenCommand, CloseCommand, PartialCloseCommand, ModifyCommand)
ACCOUNT_EVERY_MS = 1000
"""The protocol's limit: an account report when it changes, at most one a second."""

log = structlog.get_logger("tripwire_ea")


class Dispatcher:
    """One bridge's state across sessions: the terminal, the window, what was last reported."""

    def __init__(
        self,
        terminal: Terminal,
        window: CommandWindow,
        codec: WireCodec[ServerMessage, DeviceMessage],
        *,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.terminal = terminal
        self.window = window
        self.codec = codec
        self.clock = clock or (lambda: time.time_ns() // 1_000_000)
        self.session_key: bytes | None = None
        """This session's key; None outside a session (then every command is refused)."""
        self.known: dict[int, TerminalPosition] = {}
        """The positions as last reported (snapshot, acks): a change is something to report."""
        self._ours: set[int] = set()
        """Tickets whose open or close an ack of ours reported: not an event."""
        self._placed: set[str] = set()
        """Order comments of pending orders we placed: their fill is ``opened_pending``."""
        self._account: tuple[float, ...] | None = None
        self._account_ms = 0

    # -- a session starts ----------------------------------------------------------------------

    def resolve_pending(self) -> list[Ack]:
        """Answer every command a previous run started and never answered, from the terminal's
        history; stored, so the server's resend of the id gets it."""
        answered = []
        for entry in self.window.pending():
            ack = self.terminal.resolve(entry)
            self.window.finish(entry.command_id, ack)
            log.warning("resolved an unanswered command", command_id=entry.command_id,
                        retcode=ack.retcode, executed=ack.executed)  # fmt: skip
            answered.append(ack)
        return answered

    def greeting(self) -> list[DeviceMessage]:
        """What follows the welcome: every position, the closing deals, the account."""
        snapshot = self.terminal.snapshot()
        self.known = {p.ticket: p for p in snapshot.positions}
        account = self.terminal.account()
        self._note_account(account)
        return [snapshot, *self.terminal.deals(), account]

    # -- frames from the server ----------------------------------------------------------------

    def decode(self, frame: bytes | str) -> ServerMessage | None:
        try:
            return self.codec.decode(frame)
        except TripwireError as exc:  # a broken frame is the server's bug: drop it, stay up
            log.warning("server frame did not decode", error=exc.message[:200])
            return None

    def handle(self, message: ServerMessage) -> list[DeviceMessage]:
        """The answer to one decoded message (a command, a ping); nothing for the rest."""
        if isinstance(message, Ping):
            return [Heartbeat(seq=message.seq, time_ms=self.clock())]
        if isinstance(message, _COMMANDS):
            return [self.command(message)]
        return []

    def handle_frame(self, frame: bytes | str) -> list[DeviceMessage]:
        message = self.decode(frame)
        return [] if message is None else self.handle(message)

    def command(self, command: Command) -> Ack:
        """Verify, look up, execute once, store, answer (docs/protocol.md, "Commands are
        idempotent")."""
        cid = command.command_id
        try:
            if self.session_key is None:
                raise BadSignature("no session")
            verify_command(command, self.session_key)
        except BadSignature:
            log.warning("command refused: its signature does not verify", command_id=cid)
            return Ack(command_id=cid, retcode=rc.EA_BAD_SIGNATURE, executed=False,
                       result_text="signature does not verify",
                       category=rc.Outcome.REJECTED.value)  # fmt: skip
        entry = self.window.get(cid)
        if entry is not None and entry.ack is None:  # we died inside its order_send
            ack = msgspec.structs.replace(
                self.terminal.resolve(entry, command), command_hash=command_hash(command)
            )
            self.window.finish(cid, ack)
            self._after(command, ack)
            return msgspec.structs.replace(ack, repeat=True)
        if entry is not None and entry.ack is not None:
            return msgspec.structs.replace(entry.ack, repeat=True)
        ticket = None if isinstance(command, OpenCommand) else command.ticket
        client_id = command.client_id if isinstance(command, OpenCommand) else None
        self.window.start(cid, _kind(command), self.clock(), ticket=ticket, client_id=client_id)
        ack = self.terminal.execute(command)  # TerminalUnavailable leaves it started
        # Stored with the hash of the command it answers: a repeat carries the same one.
        ack = msgspec.structs.replace(ack, command_hash=command_hash(command))
        self.window.finish(cid, ack)
        log.info("command executed", command_id=cid, retcode=ack.retcode,
                 fill_price=ack.fill_price, ticket=ack.ticket)  # fmt: skip
        self._after(command, ack)
        return ack

    def _after(self, command: Command, ack: Ack) -> None:
        """Take what the command changed into :attr:`known`, so the next poll does not report
        it as the terminal's own doing."""
        if ack.ticket is not None:
            self._ours.add(ack.ticket)
        if isinstance(command, OpenCommand) and ack.retcode == rc.TRADE_RETCODE_PLACED:
            self._placed.add(command.client_id[:31])
        self.known = {p.ticket: p for p in self.terminal.positions()}

    # -- the terminal's own doings -------------------------------------------------------------

    def poll(self) -> list[DeviceMessage]:
        """Events for positions that closed or opened without a command of ours, a snapshot when
        levels or swaps changed on their own, the account when it changed (≤ 1/s)."""
        out: list[DeviceMessage] = []
        now = self.terminal.positions()
        current = {p.ticket: p for p in now}
        for ticket, was in self.known.items():
            if ticket in current:
                continue
            event = self.terminal.closed_event(was)
            if event is None:
                current[ticket] = was  # its deal is not in the history yet: next poll
            else:
                out.append(event)
        changed = False
        for ticket, p in current.items():
            was_known = self.known.get(ticket)
            if was_known is None:
                if ticket in self._ours:
                    continue
                pending = any(p.comment.startswith(c) for c in self._placed)
                kind = EventKind.OPENED_PENDING if pending else EventKind.OPENED_MANUAL
                out.append(self.terminal.opened_event(p, kind))
            elif (p.sl, p.tp, p.volume, p.swap) != (
                was_known.sl,
                was_known.tp,
                was_known.volume,
                was_known.swap,
            ):
                changed = True
        self.known = current
        if changed:
            out.append(self.terminal.snapshot())
        account = self.terminal.account()
        if self._note_account(account):
            out.append(account)
        return out

    def _note_account(self, account: Any) -> bool:
        figures = (account.balance, account.equity, account.margin, account.free_margin)
        now = self.clock()
        if figures == self._account or now - self._account_ms < ACCOUNT_EVERY_MS:
            return False
        self._account, self._account_ms = figures, now
        return True


def _kind(command: Command) -> str:
    return str(command.__struct_config__.tag)

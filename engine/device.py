"""One device's session: symbol names, the outbox, acks, deadlines and health.

:class:`DeviceCore` is what a device actor drives. It holds no position state (that is the
user core's): it translates commands to the broker's names, remembers which commands are out,
matches acks to them, notices deadlines and silence, and says which commands were lost with
the link.

Rules of operation
------------------
* A command is *queued* while the device is away or has not yet sent its positions snapshot
  after connecting, and *sent* after that, in submission order. Nothing is ever dropped: past
  ``outbox_limit`` commands the device is marked unhealthy and an alert is raised. The snapshot
  rule is what makes a partition move safe (docs/architecture.md): a device core is new on the
  node that adopts its user, so nothing goes to it, first sends, closes and resends alike,
  before its snapshot reached that node (which shows whether the old owner's last close ran).
* A send is also *held* while the caller's gate refuses it (``allowed=False``: a cluster node
  whose lease on the user's partition may have run out). A held command stays queued as if the
  link were down, is counted (:attr:`DeviceCore.held_no_lease`), and goes out with the first
  :meth:`DeviceCore.flush` the gate allows. Commands handed to the link but not yet written
  when the gate closes come back with :meth:`DeviceCore.unsend`.
* A close acked *done* without a ``fill_price`` is refused (``malformed``, reason
  ``fill_missing``): the session is ended and the command treated as lost with the link, so
  its position goes UNKNOWN and the next positions snapshot (and ``deals``) settles it. Taking
  such an ack would close the position with no price and no P&L for good; leaving it CLOSING
  would wait for an answer that cannot come (the EA answers a repeat with the same ack).
* An ack settles a sent command once. A second ack for it (a duplicate, or the EA's ``repeat``
  answer) is counted and ignored; an ack for an id never sent here is reported. An ack that
  carries a ``command_hash`` other than the hash of the command sent under its id answers some
  other command that had the id: it settles nothing, and is counted, alerted and recorded.
* On disconnect, sent commands without an ack are returned as *lost* (the user core moves their
  positions to UNKNOWN); queued ones stay queued for the next session.
* A sent command past its deadline raises one ``command_overdue`` alert (it stays out: an ack
  may still come). No heartbeat for ``stale_after_ms`` makes the device stale (one alert, and
  its positions are flagged) until it is heard from again.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

import msgspec

from engine.broker_symbols import SymbolMap
from engine.instruments import Instrument
from engine.records import AlertRaised, ReconciliationEntry, ReconciliationRecorded, Record
from protocol.common import Alert, AlertLevel
from protocol.device import (
    Ack,
    CloseCommand,
    Command,
    HelloBody,
    ModifyCommand,
    OpenCommand,
    Platform,
    PositionEvent,
    TerminalPosition,
    command_hash,
)
from protocol.errors import DecodeError, PeerError
from protocol.results import CATEGORY, Category, ResultCategory

__all__ = ["Classifier", "DeviceCore", "DeviceOutput", "Result"]

# The price fields of each command type, rounded to the broker's digits on the way out.
_PRICE_FIELDS: dict[type, tuple[str, ...]] = {
    OpenCommand: ("price", "sl", "tp"),
    ModifyCommand: ("sl", "tp"),
}

Classifier = Callable[[Platform, int, "bool | None"], ResultCategory]
"""``(platform, retcode, executed) -> category``: ``protocol.results.classify``."""


class Result(NamedTuple):
    """A settled command, for the user core."""

    command_id: str
    category: Category
    ack: Ack | None

    @classmethod
    def refused(cls, command_id: str, text: str) -> Result:
        """A final refusal made on our side (the command never reached a terminal)."""
        return cls(command_id, "final", Ack(command_id=command_id, retcode=-1, result_text=text))


class DeviceOutput:
    """What the device actor must do after a call."""

    __slots__ = ("alerts", "fault", "frames", "lost", "records", "results", "status_changed")

    def __init__(self) -> None:
        self.frames: list[Command] = []
        """Commands to write to the device now, in the broker's names and digits."""
        self.results: list[Result] = []
        self.lost: list[str] = []
        self.alerts: list[Alert] = []
        self.records: list[Record] = []
        self.status_changed = False
        self.fault: PeerError | None = None
        """The device broke the protocol: tell it (an error frame) and end its session."""


class _Out(msgspec.Struct, frozen=True, gc=False):
    """A command in the outbox. Untracked by the cyclic collector (it holds no container that
    could close a cycle): a storm puts 100,000 of them in outboxes at once, and each tracked
    one was scanned by every young collection until it left."""

    command: Command  # canonical
    sent: bool
    overdue: bool


class DeviceCore:
    """A device's session state. Pure: the caller passes the time."""

    RESOLVED_WINDOW = 4096

    def __init__(
        self,
        device_id: str,
        user_id: str,
        instruments: Mapping[str, Instrument],
        classify: Classifier,
        overrides: Mapping[str, str] | None = None,
        stale_after_ms: int = 30_000,
        outbox_limit: int = 10_000,
    ) -> None:
        self.device_id = device_id
        self.user_id = user_id
        self.canonical = dict(instruments)
        self.classify = classify
        self.overrides = dict(overrides or {})
        self.stale_after_ms = stale_after_ms
        self.outbox_limit = outbox_limit
        self.symbols = SymbolMap.identity(self.canonical)
        self.tradable: frozenset[str] = frozenset(self.canonical)
        """Canonical symbols this device can open: mapped to a broker name whose trade mode
        allows opening (every symbol until a hello names the broker's)."""
        self.instruments: dict[str, Instrument] = dict(self.canonical)
        self._broker_digits: dict[str, int] = {s: i.digits for s, i in self.canonical.items()}
        self.platform: Platform = "mt5"
        self.session_id: str | None = None
        self.connected = False
        self.ready = False
        self.stale = False
        self.healthy = True
        self.last_seen_ms: int | None = None
        self.hello: HelloBody | None = None
        self._out: OrderedDict[str, _Out] = OrderedDict()
        self._next_due = math.inf
        """No outbox item that is not overdue yet has an earlier deadline (a lower bound:
        :meth:`tick` scans the outbox only from then, not on every call)."""
        self._resolved: OrderedDict[str, str] = OrderedDict()
        self.duplicate_acks = 0
        self.unknown_acks = 0
        self.hash_mismatches = 0
        """Acks refused because their ``command_hash`` is not their command's."""
        self.held_no_lease = 0
        """Sends the gate refused (a command refused at submission and again at a flush
        counts twice)."""
        self.gate_held = False
        """Some queued command waits only for the gate: the next allowed :meth:`flush` sends."""

    # -- session -----------------------------------------------------------------------------

    def connect(self, session_id: str, body: HelloBody, now_ms: int) -> DeviceOutput:
        """A verified hello. A live session is replaced: its unanswered commands are lost."""
        out = self.disconnect(now_ms) if self.connected else DeviceOutput()
        self.session_id, self.hello = session_id, body
        self.platform = body.platform
        self.connected, self.ready = True, False
        self.last_seen_ms = now_ms
        self._learn_symbols(body, now_ms, out)
        self._set_stale(False, now_ms, out)
        out.status_changed = True
        return out

    def disconnect(self, now_ms: int) -> DeviceOutput:
        out = DeviceOutput()
        if not self.connected:
            return out
        self.connected, self.ready, self.session_id = False, False, None
        for cid, item in list(self._out.items()):
            if item.sent:
                out.lost.append(cid)
                del self._out[cid]
        out.status_changed = True
        return out

    def _learn_symbols(self, body: HelloBody, now_ms: int, out: DeviceOutput) -> None:
        specs = {s.name: s for s in body.symbols}
        if specs:
            self.symbols = SymbolMap.build(self.canonical, specs, self.overrides)
        tradable = set()
        for canonical in self.canonical:
            broker = self.symbols.to_broker(canonical)
            if broker is None:
                continue
            spec = specs.get(broker)
            if spec is None or spec.trade_mode not in ("disabled", "close_only"):
                tradable.add(canonical)
        self.tradable = frozenset(tradable)
        for canonical, base in self.canonical.items():
            broker = self.symbols.to_broker(canonical)
            spec = specs.get(broker) if broker else None
            if spec is None:
                continue
            shift = base.digits - spec.digits
            stops = spec.stops_level * 10**shift if shift >= 0 else spec.stops_level // 10**-shift
            self.instruments[canonical] = msgspec.structs.replace(
                base,
                contract_size=spec.contract_size,
                volume_min=spec.volume_min,
                volume_step=spec.volume_step,
                volume_max=spec.volume_max,
                stops_level=stops,
            )
            self._broker_digits[canonical] = spec.digits
        for missing in self.symbols.unmapped:
            out.records.append(
                self._recon(now_ms, "unmapped_symbol", f"the broker offers no name for {missing}")
            )

    def on_heartbeat(self, now_ms: int) -> DeviceOutput:
        out = DeviceOutput()
        self.last_seen_ms = now_ms
        self._set_stale(False, now_ms, out)
        return out

    # -- commands ----------------------------------------------------------------------------

    def submit(self, command: Command, now_ms: int, allowed: bool = True) -> DeviceOutput:
        """Take a command (canonical symbol). It is sent now if the session is ready and the
        gate ``allowed`` it."""
        return self.submit_many((command,), now_ms, allowed)

    def submit_many(
        self, commands: Iterable[Command], now_ms: int, allowed: bool = True
    ) -> DeviceOutput:
        """:meth:`submit` for several commands at once, in order (a burst of closes: one
        output, so the actor queues all the frames with one wake-up of the writer)."""
        out = DeviceOutput()
        ready = self.connected and self.ready
        sendable = ready and allowed
        outbox, frames, to_wire = self._out, out.frames, self._to_wire
        brokers: dict[str, str | None] = {}  # a burst is mostly one symbol: look it up once
        next_due = self._next_due
        for command in commands:
            symbol = command.symbol
            broker = (
                brokers[symbol]
                if symbol in brokers
                else brokers.setdefault(symbol, self.symbols.to_broker(symbol))
            )
            if broker is None:
                text = f"the broker offers no symbol for {symbol}"
                out.results.append(Result.refused(command.command_id, text))
                continue
            outbox[command.command_id] = _Out(command, sendable, False)
            next_due = min(next_due, command.deadline_ms)
            if sendable:
                frames.append(to_wire(command, broker))
            elif ready:
                self.held_no_lease += 1
                self.gate_held = True
        self._next_due = next_due
        if len(self._out) > self.outbox_limit and self.healthy:
            self.healthy = False
            out.status_changed = True
            self._alert(
                out,
                "outbox_full",
                AlertLevel.CRITICAL,
                now_ms,
                f"device {self.device_id} has {len(self._out)} commands outstanding",
            )
        return out

    def on_ack(self, ack: Ack, now_ms: int) -> DeviceOutput:
        out = DeviceOutput()
        self.last_seen_ms = now_ms
        cid = ack.command_id
        item = self._out.get(cid)
        if item is None or not item.sent:
            if cid in self._resolved:
                self.duplicate_acks += 1
            else:
                self.unknown_acks += 1
                out.records.append(
                    self._recon(now_ms, "unknown_ack", f"ack for {cid} (retcode {ack.retcode})")
                )
            return out
        if ack.command_hash is not None and ack.command_hash != command_hash(
            self._to_wire(item.command)
        ):
            # Not this command's answer: settling it would act on another command's result.
            # The command stays out (its own answer may still come; its deadline alerts).
            self.hash_mismatches += 1
            text = (
                f"ack for {cid} carries the hash of another command "
                f"({ack.command_hash}, retcode {ack.retcode}): not taken as its answer"
            )
            self._alert(out, "ack_hash_mismatch", AlertLevel.CRITICAL, now_ms, text)
            out.records.append(self._recon(now_ms, "ack_hash_mismatch", text))
            return out
        category = CATEGORY[self.classify(self.platform, ack.retcode, ack.executed)]
        if category == "done" and ack.fill_price is None and isinstance(item.command, CloseCommand):
            # Kept as sent: the session's end returns it as lost (UNKNOWN), see the module doc.
            out.fault = DecodeError(
                f"ack of {cid} reports a close done without its fill_price",
                reason="fill_missing",
                command_id=cid,
            )
            return out
        del self._out[cid]
        self._resolved[cid] = category
        while len(self._resolved) > self.RESOLVED_WINDOW:
            self._resolved.popitem(last=False)
        out.results.append(Result(cid, category, ack))
        if not self.healthy and len(self._out) <= self.outbox_limit // 2:
            self.healthy = True
            out.status_changed = True
        return out

    def on_snapshot(
        self, positions: Iterable[TerminalPosition], now_ms: int
    ) -> tuple[list[TerminalPosition], DeviceOutput]:
        """The terminal's positions (canonical) and the queued commands now due to go out."""
        out = DeviceOutput()
        self.last_seen_ms = now_ms
        canonical = []
        for t in positions:
            name = self.symbols.to_canonical(t.symbol)
            if name is None:
                out.records.append(
                    self._recon(now_ms, "unmapped_symbol", f"ticket {t.ticket} on {t.symbol}")
                )
                continue
            canonical.append(msgspec.structs.replace(t, symbol=name))
        self.ready = True
        return canonical, out

    def flush(self, allowed: bool = True) -> DeviceOutput:
        """Send what was queued, if the session is ready (its snapshot is in) and the gate
        ``allowed`` it; a refusal keeps it queued and counts it."""
        out = DeviceOutput()
        if not (self.connected and self.ready):
            return out
        if not allowed:
            held = sum(1 for item in self._out.values() if not item.sent)
            self.held_no_lease += held
            self.gate_held = self.gate_held or held > 0
            return out
        self.gate_held = False
        for cid, item in self._out.items():
            if not item.sent:
                self._out[cid] = _Out(item.command, True, item.overdue)
                out.frames.append(self._to_wire(item.command))
        return out

    def unsend(self, command_ids: Iterable[str]) -> int:
        """Commands handed to the link that were never written (the gate closed before the
        writer reached them): queued again, counted as held; returns how many."""
        held = 0
        for cid in command_ids:
            item = self._out.get(cid)
            if item is not None and item.sent:
                self._out[cid] = _Out(item.command, False, item.overdue)
                held += 1
        self.held_no_lease += held
        self.gate_held = self.gate_held or held > 0
        return held

    def queued(self) -> list[str]:
        """Ids of the commands waiting to be sent (device away, no snapshot yet, or held)."""
        return [cid for cid, item in self._out.items() if not item.sent]

    def on_event(self, event: PositionEvent, now_ms: int) -> PositionEvent | None:
        """The terminal's own event with a canonical symbol (None if the symbol is not ours)."""
        self.last_seen_ms = now_ms
        name = self.symbols.to_canonical(event.symbol)
        return None if name is None else msgspec.structs.replace(event, symbol=name)

    def outstanding(self) -> list[str]:
        return list(self._out)

    # -- time --------------------------------------------------------------------------------

    def tick(self, now_ms: int) -> DeviceOutput:
        out = DeviceOutput()
        if now_ms >= self._next_due:
            self._mark_overdue(now_ms, out)
        if self.last_seen_ms is not None and now_ms - self.last_seen_ms > self.stale_after_ms:
            self._set_stale(True, now_ms, out)
        return out

    def _mark_overdue(self, now_ms: int, out: DeviceOutput) -> None:
        """Alert once for each command past its deadline; find the next deadline."""
        next_due = math.inf
        for cid, item in list(self._out.items()):
            if item.overdue:
                continue
            deadline = item.command.deadline_ms
            if deadline > now_ms:
                next_due = min(next_due, deadline)
            else:
                self._out[cid] = _Out(item.command, item.sent, True)
                where = "sent" if item.sent else "still queued (device away)"
                self._alert(
                    out,
                    "command_overdue",
                    AlertLevel.WARNING,
                    now_ms,
                    f"no ack for {cid} by its deadline ({where})",
                )
        self._next_due = next_due

    # -- internals ---------------------------------------------------------------------------

    def _to_wire(self, command: Command, broker: str | None = None) -> Command:
        """The command in the broker's symbol name (``broker``, if already looked up) and price
        digits; the command itself when both already fit (no copy on the hot path)."""
        if broker is None:
            broker = self.symbols.to_broker(command.symbol)
        if broker == command.symbol and type(command) not in _PRICE_FIELDS:
            return command  # a close or partial close in the canonical name: nothing to change
        changes: dict[str, object] = {}
        if broker != command.symbol:
            changes["symbol"] = broker
        digits = self._broker_digits.get(command.symbol)
        if digits is not None:
            for field in _PRICE_FIELDS.get(type(command), ()):
                value = getattr(command, field)
                if value is not None and (rounded := round(value, digits)) != value:
                    changes[field] = rounded
        return msgspec.structs.replace(command, **changes) if changes else command

    def _set_stale(self, stale: bool, now_ms: int, out: DeviceOutput) -> None:
        if stale == self.stale:
            return
        self.stale = stale
        out.status_changed = True
        if stale:
            self._alert(
                out,
                "device_stale",
                AlertLevel.WARNING,
                now_ms,
                f"no heartbeat from {self.device_id} for "
                f"{self.stale_after_ms // 1000} s: its positions are flagged",
            )
        else:
            self._alert(
                out,
                "device_stale",
                AlertLevel.INFO,
                now_ms,
                f"{self.device_id} is heard from again",
            )

    def _alert(
        self, out: DeviceOutput, kind: str, level: AlertLevel, now_ms: int, message: str
    ) -> None:
        alert = Alert(
            kind=kind,
            level=level,
            message=message,
            time_ms=now_ms,
            user_id=self.user_id,
            device_id=self.device_id,
        )
        out.alerts.append(alert)
        out.records.append(AlertRaised(alert=alert))

    def _recon(self, now_ms: int, kind: str, detail: str) -> ReconciliationRecorded:
        return ReconciliationRecorded(
            entry=ReconciliationEntry(
                time_ms=now_ms, device_id=self.device_id, kind=kind, detail=detail
            )
        )

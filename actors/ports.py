"""What each actor needs from the node it runs in, as narrow typed ports.

An actor is given the node, but sees it through one of these protocols: only the services it
uses, so an actor module imports no other actor module and none imports ``actors.node`` (the
node imports them all, and satisfies every port). The actors reach each other through the
node's lookups (``user``, ``device``, ``symbol``), typed by the inbox each one offers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from actors.clock import Clock
from actors.config import NodeConfig
from actors.directory import Directory
from actors.messages import SymbolControl, UserMessage
from actors.prices import PriceBoard
from engine.device import Classifier
from engine.instruments import Instrument
from engine.notices import Notice
from engine.positions import Position
from engine.records import Record
from engine.state import EngineState, UserState
from engine.user import DeviceInfo
from protocol.client import AccountView, DeviceView, Snapshot
from protocol.common import Alert
from protocol.device import Command

__all__ = [
    "AllowAll",
    "CommandGate",
    "DeviceInbox",
    "DeviceNode",
    "HubNode",
    "Probes",
    "Streams",
    "SymbolInbox",
    "SymbolNode",
    "UserInbox",
    "UserNode",
]


class Probes:
    """Measurement hooks a harness (or the metrics) sets; each is None when nobody listens.

    Actors keep a reference to this one object and read a hook where it fires: one attribute
    read and a branch per fired quote, as when they lived on the node.
    """

    __slots__ = ("commands_out", "fire_latency", "quote_done")

    def __init__(self) -> None:
        self.commands_out: Callable[[int, int], None] | None = None
        """Called with (quote seq, commands) when a fired quote's commands are in their
        outboxes (the harnesses' tick-to-outbox)."""
        self.fire_latency: Callable[[float, int], None] | None = None
        """Called with (``perf_counter`` when the quote was processed, commands) at the same
        moment (the production latency histogram)."""
        self.quote_done: Callable[[int], None] | None = None
        """Called with a symbol actor's quote seq once the quote is processed."""


class CommandGate(Protocol):
    """Whether this node may send a command to a device of ``user_id`` now.

    A cluster node wires its lease manager here: the local deadline of the lease on the user's
    partition (the monotonic time the renewal was sent, plus the lease, minus a margin) has not
    passed. The device actor asks before every command it hands to a link (first sends, closes,
    resends alike); a refused command stays queued, as if the link were down, and goes out once
    the gate allows again. It must answer at once and never block (it is asked on the tick
    path).
    """

    def may_send(self, user_id: str) -> bool: ...


class AllowAll:
    """The single node's gate: it owns every user for good, so every send is allowed."""

    __slots__ = ()

    def may_send(self, user_id: str) -> bool:
        return True


# -- the actors, as their peers see them -----------------------------------------------------


class UserInbox(Protocol):
    def deliver(self, message: UserMessage, inline: bool = True) -> None: ...


class DeviceInbox(Protocol):
    def submit_nowait(self, command: Command) -> None: ...

    def submit_many_nowait(self, commands: list[Command]) -> None: ...


class SymbolInbox(Protocol):
    def control(self, op: SymbolControl) -> None: ...


class Streams(Protocol):
    """The client hub, as the user and device actors feed it."""

    def watches(self, user_id: str) -> bool: ...

    def positions_changed(self, user_id: str, positions: list[Position]) -> None: ...

    def account_changed(self, user_id: str, view: AccountView) -> None: ...

    def device_changed(self, user_id: str, view: DeviceView) -> None: ...

    def snapshot(
        self,
        user_id: str,
        live: Iterable[Position],
        recent_closed: Iterable[Position],
        account: AccountView,
    ) -> Snapshot: ...


# -- the node, as each actor sees it -----------------------------------------------------------


class _Shared(Protocol):
    @property
    def config(self) -> NodeConfig: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def prices(self) -> PriceBoard: ...

    def user(self, user_id: str) -> UserInbox: ...


class _Recorder(Protocol):
    def record(self, records: Iterable[Record]) -> int: ...

    def publish_alerts(self, alerts: list[Alert]) -> None: ...


class UserNode(_Shared, _Recorder, Protocol):
    @property
    def directory(self) -> Directory: ...

    @property
    def instruments(self) -> Mapping[str, Instrument]: ...

    @property
    def hub(self) -> Streams: ...

    @property
    def probes(self) -> Probes: ...

    @property
    def notify(self) -> Callable[[str, list[Notice]], None] | None: ...

    async def record_durably(self, record: Record) -> int: ...

    def restore_view(self, user_id: str) -> tuple[UserState, bool]: ...

    def device_infos(self, user_id: str) -> list[DeviceInfo]: ...

    def device(self, device_id: str) -> DeviceInbox: ...

    def symbol(self, symbol: str) -> SymbolInbox | None: ...


class SymbolNode(_Shared, Protocol):
    @property
    def state(self) -> EngineState: ...

    @property
    def probes(self) -> Probes: ...

    def raise_alerts(self, alerts: list[Alert]) -> None: ...

    def raise_market_alerts(self, alerts: list[Alert]) -> None: ...


class DeviceNode(_Shared, _Recorder, Protocol):
    @property
    def directory(self) -> Directory: ...

    @property
    def instruments(self) -> Mapping[str, Instrument]: ...

    @property
    def classify(self) -> Classifier: ...

    @property
    def state(self) -> EngineState: ...

    @property
    def hub(self) -> Streams: ...

    @property
    def command_outcomes(self) -> Counter[str]: ...

    @property
    def device_counts(self) -> Counter[str]:
        """Node-wide device counters (``commands_held_no_lease``, ``ack_hash_mismatches``)."""

    @property
    def gate(self) -> CommandGate: ...


class HubNode(_Shared, Protocol):
    @property
    def instruments(self) -> Mapping[str, Instrument]: ...

    def device_views(self, user_id: str) -> list[DeviceView]: ...

"""Actor tests: a real node (real trio tasks, mailboxes, supervision) in virtual time."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from actors.clock import TrioClock
from actors.directory import StaticDirectory
from actors.node import MemoryJournal, Node, NodeConfig
from engine.sizing import UserSettings
from protocol.feed import Quote
from protocol.results import classify


class Harness:
    def __init__(self, node: Node, journal: MemoryJournal) -> None:
        self.node = node
        self.journal = journal

    def quote(self, bid: float, ask: float, symbol: str = "XAUUSD") -> None:
        self.node.offer_quotes(
            [Quote(symbol=symbol, bid=bid, ask=ask, time_ms=self.node.clock.now_ms())]
        )


@pytest.fixture
async def harness(nursery: trio.Nursery) -> AsyncIterator[Harness]:
    journal = MemoryJournal()
    directory = StaticDirectory(
        devices={"d1": "u1", "d2": "u2"}, settings={"u1": UserSettings(fixed_volume=0.1)}
    )
    node = Node(
        journal=journal,
        directory=directory,
        clock=TrioClock(),
        classify=classify,
        config=NodeConfig(device_stale_ms=30_000),
    )
    await nursery.start(node.run)
    yield Harness(node, journal)


class ScriptedLink:
    """A device link whose frames a test reads and whose answers a test writes."""

    def __init__(self) -> None:
        self.frames: list = []
        self.closed: tuple[int, str] | None = None
        self._arrived = trio.Event()

    async def send(self, message) -> None:
        if self.closed is not None:
            raise trio.ClosedResourceError("link closed")
        self.frames.append(message)
        self._arrived.set()

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    async def next(self, kind: type, timeout: float = 5.0):
        """The first frame of ``kind`` not yet taken (waits for it)."""
        with trio.fail_after(timeout):
            while True:
                for i, frame in enumerate(self.frames):
                    if isinstance(frame, kind):
                        return self.frames.pop(i)
                self._arrived = trio.Event()
                await self._arrived.wait()


class ScriptedDevice:
    """A device driven by the test: it says exactly what the test tells it to."""

    def __init__(self, harness: Harness, device_id: str, suffix: str = "") -> None:
        self.harness = harness
        self.device_id = device_id
        self.suffix = suffix
        self.link: ScriptedLink | None = None
        self.session = None

    @property
    def actor(self):
        return self.harness.node.device(self.device_id)

    async def connect(self, positions=(), symbols=("XAUUSD", "EURUSD")) -> ScriptedLink:
        from protocol.device import HelloBody, PositionsSnapshot, SymbolSpec

        node = self.harness.node
        specs = [
            SymbolSpec(
                name=s + self.suffix,
                digits=node.instruments[s].digits,
                contract_size=node.instruments[s].contract_size,
            )
            for s in symbols
        ]
        body = HelloBody(
            ea_build="t", account_login="42", terminal_time_ms=node.clock.now_ms(), symbols=specs
        )
        self.link = ScriptedLink()
        self.session = await self.actor.open_session(body, self.link)
        self.send(PositionsSnapshot(time_ms=node.clock.now_ms(), positions=list(positions)))
        await trio.sleep(0.05)
        return self.link

    def send(self, message) -> None:
        self.actor.inbound(self.session, message)

    def disconnect(self) -> None:
        self.actor.close_session(self.session)

    def ack(self, command, retcode: int = 10009, **fields) -> None:
        from protocol.device import Ack

        self.send(Ack(command_id=command.command_id, retcode=retcode, **fields))


@pytest.fixture
def device(harness: Harness) -> ScriptedDevice:
    return ScriptedDevice(harness, "d1")

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


def classify(platform: str, retcode: int, executed: bool | None) -> str:
    """The rules the actor tests rely on (the full table lives in protocol.results)."""
    if retcode in (10008, 10009, 10010):
        return "done"
    if retcode in (10004, 10020, 10021, 10024) or (retcode == 10012 and executed is False):
        return "retryable"
    if retcode == 10036:
        return "already_closed"
    if retcode in (10012, 10031):
        return "unknown"
    return "final"


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

"""A breach storm is handed out in slices: the loop runs other tasks between them, every
position still gets exactly one close, later quotes wait their turn, and a backlog the symbol
actor cannot finish ends in the users' mailboxes (actors.symbol, NodeConfig.dispatch_budget_ms).
Each test runs twice: with the whole storm fired at once, and fired 37 levels a step
(NodeConfig.fire_step), the rest pending in the book between steps.

The node is bench.engine's: positions recovered as after a restart, devices connected through
in-process links. A budget of 0 hands out one user per scheduler round.
"""

from __future__ import annotations

import gc
from collections import Counter

import pytest
import trio
import trio.testing

from actors.messages import Fired
from bench.engine import GOLD, _start
from engine.records import CommandIssued
from protocol.feed import Quote

ENTRY = GOLD.to_points(2000.0)
POSITIONS, USERS = 400, 40

steps = pytest.mark.parametrize("step", [None, 37], ids=["at-once", "stepped"])


def gap(node, points_below: int) -> None:
    price = GOLD.to_price(ENTRY - points_below)
    node.offer_quotes(
        [Quote(symbol="XAUUSD", bid=price, ask=price + 0.3, time_ms=node.clock.now_ms())]
    )


def closes(node) -> Counter[str]:
    return Counter(r.position_id for r in node.journal.records if isinstance(r, CommandIssued))


@steps
async def test_the_loop_runs_between_slices_and_every_position_closes_once(step) -> None:
    async with trio.open_nursery() as nursery:
        node, links = await _start(
            nursery, POSITIONS, USERS, ENTRY, storm=True, budget_ms=0, fire_step=step
        )
        symbol = node.symbols["XAUUSD"]
        seen: list[int] = []

        async def probe() -> None:
            while True:
                seen.append(sum(closes(node).values()))
                await trio.lowlevel.checkpoint()

        nursery.start_soon(probe)
        await trio.lowlevel.checkpoint()
        frames = sum(link.frames for link in links)
        gap(node, 100_000)  # under every SL
        assert symbol._backlog  # the storm did not fit its budget
        assert symbol.core.pending == (0 if step is None else POSITIONS - step)
        assert node.pending() >= symbol.unhanded > 0  # what shutdown waits for
        with trio.fail_after(30):
            while symbol._backlog or len(closes(node)) < POSITIONS:
                await trio.lowlevel.checkpoint()
        assert symbol.core.pending == 0
        assert any(0 < count < POSITIONS for count in seen)  # other tasks ran mid-storm
        assert set(closes(node).values()) == {1} and len(closes(node)) == POSITIONS
        with trio.fail_after(5):  # and every close leaves through its device's link
            while sum(link.frames for link in links) - frames < POSITIONS:
                await trio.lowlevel.checkpoint()
        assert sum(link.frames for link in links) - frames == POSITIONS
        nursery.cancel_scope.cancel()


@steps
async def test_a_quote_arriving_mid_storm_waits_for_the_storm(step) -> None:
    async with trio.open_nursery() as nursery:
        node, _ = await _start(
            nursery, POSITIONS, USERS, ENTRY, storm=True, budget_ms=0, fire_step=step
        )
        symbol = node.symbols["XAUUSD"]
        order: list[int] = []
        node.probes.commands_out = lambda seq, commands: order.append(seq)
        gap(node, 8_000)  # the nearer half of the SLs
        first = symbol.seq
        assert symbol._backlog
        gap(node, 100_000)  # the rest: queued behind the backlog, not handled inline
        assert symbol.seq == first and len(symbol.inbox) > 0
        with trio.fail_after(30):
            while len(closes(node)) < POSITIONS:
                await trio.lowlevel.checkpoint()
        assert order == sorted(order) and order[0] == first and order[-1] == first + 1
        nursery.cancel_scope.cancel()


@steps
async def test_a_backlog_cut_short_ends_in_the_users_mailboxes(step) -> None:
    async with trio.open_nursery() as outer:
        inner = trio.CancelScope()
        state: dict[str, object] = {}

        async def node_until_cancelled() -> None:
            with inner:
                async with trio.open_nursery() as nursery:
                    node, _ = await _start(
                        nursery, POSITIONS, USERS, ENTRY, storm=True, budget_ms=0, fire_step=step
                    )
                    state["node"] = node
                    await trio.sleep_forever()

        outer.start_soon(node_until_cancelled)
        with trio.fail_after(30):
            while "node" not in state:
                await trio.sleep(0.01)
        node = state["node"]
        symbol = node.symbols["XAUUSD"]
        gap(node, 100_000)
        for _ in range(3):
            await trio.lowlevel.checkpoint()
        assert symbol._backlog  # cut short mid-storm
        assert symbol.core.pending or step is None  # (some of it still in the book)
        assert not gc.isenabled()  # the storm holds the collector...
        inner.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert gc.isenabled()  # ...and a storm cut short gives it back

    waiting = sum(
        len(m.triggers)
        for user in node.users.values()
        for m in user.mailbox._items
        if type(m) is Fired
    )
    assert not symbol._backlog
    assert sum(closes(node).values()) + waiting == POSITIONS


@steps
async def test_shutdown_drains_a_storm_in_flight(step) -> None:
    """A node asked to stop mid-storm hands the rest of it out first (within its drain time):
    every position gets its close, none is left for the next start to fire."""
    async with trio.open_nursery() as nursery:
        node, _ = await _start(
            nursery, POSITIONS, USERS, ENTRY, storm=True, budget_ms=0, fire_step=step
        )
        symbol = node.symbols["XAUUSD"]
        gap(node, 100_000)
        assert symbol.unhanded
        with trio.fail_after(30):
            await node.shutdown()
        assert set(closes(node).values()) == {1} and len(closes(node)) == POSITIONS
        nursery.cancel_scope.cancel()


async def test_the_book_is_tidied_once_a_stepped_storm_is_handed_out() -> None:
    # Enough levels for a compaction (4,096 stale at least): fire_pending leaves it to the
    # actor, which runs it after the last step's closes are out.
    async with trio.open_nursery() as nursery:
        node, _ = await _start(nursery, 5_000, 50, ENTRY, storm=True, fire_step=1_000)
        symbol = node.symbols["XAUUSD"]
        gap(node, 100_000)
        assert symbol.core.pending
        assert not gc.isenabled()  # held from the quote that began the storm
        with trio.fail_after(30):
            while symbol.unhanded or len(closes(node)) < 5_000:
                await trio.lowlevel.checkpoint()
            while symbol.core.book._stale:
                await trio.lowlevel.checkpoint()
        assert len(symbol.core.book) == 0 and not any(symbol.core.book._ladders)
        assert gc.isenabled()  # and given back once the storm is out
        symbol.core.book.check()
        nursery.cancel_scope.cancel()

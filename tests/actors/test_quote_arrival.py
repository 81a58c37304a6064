"""Quotes are judged fresh or stale on arrival at the node, not when a busy actor reaches them."""

from __future__ import annotations

import trio
import trio.testing

from actors.node import MemoryJournal, Node
from engine.effects import Disarm
from protocol.feed import Quote


class ManualClock:
    """A node clock that moves only when the test says so."""

    def __init__(self, now_ms: int = 1_700_000_000_000) -> None:
        self.now = now_ms

    def now_ms(self) -> int:
        return self.now


async def _node(nursery: trio.Nursery, clock: ManualClock) -> Node:
    node = Node(journal=MemoryJournal(), clock=clock)
    await nursery.start(node.run)
    return node


def _quote(clock: ManualClock, bid: float) -> Quote:
    return Quote(symbol="XAUUSD", bid=bid, ask=bid + 0.3, time_ms=clock.now)


async def test_a_quote_queued_behind_work_is_not_stale_for_our_own_lag(nursery) -> None:
    clock = ManualClock()
    node = await _node(nursery, clock)
    symbol = node.symbols["XAUUSD"]
    node.offer_quotes([_quote(clock, 2000.0)])
    await trio.testing.wait_all_tasks_blocked()
    # The actor has work waiting (its task is woken but has not run): the quote queues.
    symbol.control(Disarm(symbol="XAUUSD", position_id="nobody"))
    node.offer_quotes([_quote(clock, 2001.0)])
    assert len(symbol.inbox) == 2
    # The engine falls far behind before the actor gets to it: longer than max_age_ms.
    clock.now += node.config.quote_limits.max_age_ms * 3
    await trio.testing.wait_all_tasks_blocked()
    assert symbol.rejected == 0
    price = node.prices.get("XAUUSD")
    assert price is not None and price[0] == 2001.0


async def test_a_quote_already_old_when_it_arrives_is_rejected(nursery) -> None:
    clock = ManualClock()
    node = await _node(nursery, clock)
    old = _quote(clock, 2000.0)
    clock.now += node.config.quote_limits.max_age_ms + 1
    node.offer_quotes([old])
    await trio.testing.wait_all_tasks_blocked()
    assert node.symbols["XAUUSD"].rejected == 1
    assert node.prices.get("XAUUSD") is None


async def test_time_in_the_nodes_socket_buffers_is_not_the_quotes_age(nursery) -> None:
    clock = ManualClock()
    node = await _node(nursery, clock)
    max_age = node.config.quote_limits.max_age_ms
    quote = _quote(clock, 2000.0)
    sent_ms = clock.now + 10
    clock.now += max_age * 3  # the batch waited this long before the node read it
    assert node.offer_quotes([quote], sent_ms=sent_ms) == 1
    await trio.testing.wait_all_tasks_blocked()
    assert node.symbols["XAUUSD"].rejected == 0
    assert node.feed_lag_ms == max_age * 3 - 10


async def test_a_quote_already_old_when_its_publisher_sent_it_is_rejected(nursery) -> None:
    clock = ManualClock()
    node = await _node(nursery, clock)
    max_age = node.config.quote_limits.max_age_ms
    quote = _quote(clock, 2000.0)
    clock.now += max_age + 1
    # A publisher clock ahead of ours does not make the quote younger than its arrival.
    node.offer_quotes([quote], sent_ms=clock.now + 60_000)
    await trio.testing.wait_all_tasks_blocked()
    assert node.symbols["XAUUSD"].rejected == 1
    assert node.feed_lag_ms == 0

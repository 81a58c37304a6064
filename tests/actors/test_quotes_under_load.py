"""Quote validation under load: staleness is judged on arrival, not when a busy actor reaches a
quote, and quotes coalesced into a sweep are validated too."""

from __future__ import annotations

import trio
import trio.testing

from actors.mailbox import QuoteInbox, Sweep
from actors.node import MemoryJournal, Node, NodeConfig
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


async def test_a_quote_coalesced_under_load_is_still_validated() -> None:
    inbox = QuoteInbox("t", 2, admit=lambda quote, arrived_ms: quote.bid <= quote.ask)
    crossed = Quote(symbol="XAUUSD", bid=1900.0, ask=1800.0, time_ms=0)
    good = [Quote(symbol="XAUUSD", bid=b, ask=b + 0.3, time_ms=0) for b in (2000.0, 2001.0)]
    inbox.put_quote(crossed, 0)
    inbox.put_quote(good[0], 0)
    inbox.put_quote(good[1], 0)  # over capacity: the two queued quotes are coalesced
    sweep, batch = await inbox.get_batch()
    assert sweep == Sweep(2000.0, 2000.0, 2000.3, 2000.3, 1)  # the crossed quote left out
    assert [item.quote for item in batch] == [good[1]]  # type: ignore[attr-defined]
    assert inbox.coalesced == 2


async def test_the_symbol_actor_counts_coalesced_quotes_it_refuses(nursery) -> None:
    clock = ManualClock()
    node = Node(journal=MemoryJournal(), clock=clock, config=NodeConfig(quote_inbox=2))
    await nursery.start(node.run)
    symbol = node.symbols["XAUUSD"]
    node.offer_quotes([_quote(clock, 2000.0)])
    await trio.testing.wait_all_tasks_blocked()
    symbol.control(Disarm(symbol="XAUUSD", position_id="nobody"))  # busy: quotes queue
    crossed = Quote(symbol="XAUUSD", bid=2010.0, ask=2000.0, time_ms=clock.now)
    node.offer_quotes([crossed, _quote(clock, 2001.0), _quote(clock, 2002.0)])
    await trio.testing.wait_all_tasks_blocked()
    assert symbol.inbox.coalesced == 2
    assert symbol.rejected == 1
    assert node.prices.get("XAUUSD")[0] == 2002.0  # type: ignore[index]


YEAR_MS = 365 * 86_400_000


async def test_a_batch_sent_from_the_future_is_judged_by_the_nodes_clock(nursery) -> None:
    """A ``sent_ms`` a year ahead does not move arrival (the earlier of the two is taken), so
    its quotes are judged by the node's clock: a genuine one is accepted, one stamped a year
    ahead too is refused, and the next genuine quote is not held back by it."""
    clock = ManualClock()
    node = await _node(nursery, clock)
    symbol = node.symbols["XAUUSD"]
    node.offer_quotes([_quote(clock, 2000.0)], sent_ms=clock.now + YEAR_MS)
    ahead = Quote(symbol="XAUUSD", bid=2001.0, ask=2001.3, time_ms=clock.now + YEAR_MS)
    node.offer_quotes([ahead], sent_ms=clock.now + YEAR_MS)
    clock.now += 1
    node.offer_quotes([_quote(clock, 2002.0)])
    await trio.testing.wait_all_tasks_blocked()
    assert symbol.rejections == {"future": 1}
    assert node.prices.get("XAUUSD")[0] == 2002.0  # type: ignore[index]
    assert node.feed_lag_ms == 0
    assert node.stats()["quotes_rejected_by_reason"]["future"] == 1


async def test_a_quote_stamped_after_its_batch_was_sent_is_refused(nursery) -> None:
    """``sent_ms`` far in the past (a publisher sending 0) would have made every quote young
    enough; a quote stamped more than the bound after its batch left is refused instead."""
    clock = ManualClock()
    node = await _node(nursery, clock)
    bound = node.config.quote_limits.max_ahead_ms
    node.offer_quotes([_quote(clock, 2000.0)], sent_ms=0)
    node.offer_quotes([_quote(clock, 2000.5)], sent_ms=clock.now - bound)  # the bound: kept
    await trio.testing.wait_all_tasks_blocked()
    assert node.symbols["XAUUSD"].rejections == {"future": 1}
    assert node.prices.get("XAUUSD")[0] == 2000.5  # type: ignore[index]

"""A cluster node's quote order: its own appends delivered early, never twice, never out of order.

A simulation of one symbol's stream shared by this node and another: appends by either (this
node's come back from its appender as soon as Redis numbered them), and reads that bring the
stream back in order from the reader's cursor, interleaved as hypothesis chooses.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cluster import DeliveryOrder
from persistence.tick_streams import Stamped
from protocol.feed import Quote


def _stamped(seq: int, symbol: str = "XAUUSD") -> Stamped:
    quote = Quote(symbol=symbol, bid=1.0 + seq, ask=1.5 + seq, time_ms=seq)
    return Stamped(symbol=symbol, seq=seq, stream_id=(seq, 0), quote=quote)


# Steps: ("ours", n) this node appends n quotes; ("theirs", n) another node does;
# ("read", n) the reader brings back at most n entries past its cursor.
steps = st.lists(
    st.tuples(st.sampled_from(["ours", "theirs", "read"]), st.integers(1, 5)), max_size=60
)


@settings(max_examples=300, deadline=None)
@given(steps, st.integers(0, 3))
def test_each_seq_once_in_order_whoever_appended_it(
    plan: list[tuple[str, int]], reads_before: int
) -> None:
    order = DeliveryOrder()
    stream: list[Stamped] = []
    cursor = 0  # entries the reader has read
    seen: list[int] = []

    def read(n: int) -> None:
        nonlocal cursor
        batch, cursor = stream[cursor : cursor + n], min(len(stream), cursor + n)
        seen.extend(int(q.time_ms) for q in order.fresh(batch, own=False))

    for _ in range(reads_before):  # the reader may have delivered nothing yet
        read(1)
    for kind, n in plan:
        if kind == "read":
            read(n)
            continue
        appended = [_stamped(len(stream) + 1 + k) for k in range(n)]
        stream.extend(appended)
        if kind == "ours":
            seen.extend(int(q.time_ms) for q in order.fresh(appended, own=True))
    read(len(stream))  # the reader catches up

    assert seen == list(range(1, len(stream) + 1))  # every seq once, in stream order
    assert order.last.get("XAUUSD", 0) == len(stream)


def test_own_quotes_go_at_once_when_nothing_is_ahead_of_them() -> None:
    order = DeliveryOrder()
    assert order.fresh([_stamped(1)], own=True) == []  # nothing read yet: the reader starts it
    assert [q.time_ms for q in order.fresh([_stamped(1)], own=False)] == [1]
    assert [q.time_ms for q in order.fresh([_stamped(2), _stamped(3)], own=True)] == [2, 3]
    assert order.fresh([_stamped(2), _stamped(3)], own=False) == []  # the read skips them
    assert order.fresh([_stamped(5)], own=True) == []  # 4 is another node's, not read yet
    assert [q.time_ms for q in order.fresh([_stamped(4), _stamped(5)], own=False)] == [4, 5]


def test_symbols_are_ordered_apart_and_bar_quotes_never_reach_the_book() -> None:
    order = DeliveryOrder()
    order.fresh([_stamped(10, "EURUSD"), _stamped(1)], own=False)
    bar = Stamped(symbol="XAUUSD", seq=2, stream_id=(2, 0), quote=_stamped(2).quote, synthetic=True)
    assert order.fresh([bar], own=False) == []
    got = order.fresh([_stamped(11, "EURUSD"), _stamped(2)], own=True)
    assert [(q.symbol, q.time_ms) for q in got] == [("EURUSD", 11), ("XAUUSD", 2)]

"""The candle book against a brute-force oracle: whatever the samples, the ring's wrap and the
interval, the candles are those a plain loop over the kept samples builds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.rest.candlebook import Candle, CandleBook


class Board:
    def __init__(self) -> None:
        self.quotes: dict[str, tuple[float, float, int]] = {}

    def all(self) -> dict[str, tuple[float, float, int]]:
        return self.quotes


def oracle(samples: list[tuple[int, float]], interval_s: int, limit: int) -> list[Candle]:
    interval = interval_s * 1000
    buckets: dict[int, list[float]] = {}
    for t, price in samples:
        buckets.setdefault(t // interval, []).append(price)
    chosen = sorted(buckets)[-limit:]
    last = max(buckets) if buckets else 0
    chosen = [b for b in chosen if b >= last - (limit - 1)]
    return [
        Candle(b * interval, buckets[b][0], max(buckets[b]), min(buckets[b]), buckets[b][-1])
        for b in chosen
    ]


@given(
    steps=st.lists(
        st.tuples(st.integers(1, 5_000), st.floats(0.5, 5_000, allow_nan=False)), max_size=80
    ),
    capacity=st.integers(1, 40),
    interval_s=st.integers(1, 20),
    limit=st.integers(1, 15),
)
def test_candles_match_a_plain_loop(steps, capacity, interval_s, limit) -> None:
    book, board = CandleBook(capacity=capacity), Board()
    now, kept = 1_700_000_000_000, []
    for seq, (gap_ms, price) in enumerate(steps):
        now += gap_ms
        board.quotes["XAUUSD"] = (price, price + 0.5, seq)
        assert book.sample(board, now) == 1
        kept.append((now, price))
    kept = kept[-capacity:]
    assert book.candles("XAUUSD", interval_s, limit) == oracle(kept, interval_s, limit)


def test_a_symbol_that_did_not_quote_again_is_not_sampled_again() -> None:
    book, board = CandleBook(capacity=10), Board()
    board.quotes["EURUSD"] = (1.1, 1.1001, 5)
    assert book.sample(board, 1_000) == 1
    assert book.sample(board, 2_000) == 0  # same quote: no new sample
    board.quotes["EURUSD"] = (1.2, 1.2001, 6)
    assert book.sample(board, 3_000) == 1
    assert book.closes("EURUSD", 1, 10) == [1.1, 1.2]
    assert book.candles("GBPUSD", 60, 10) == []
    assert book.samples == 2

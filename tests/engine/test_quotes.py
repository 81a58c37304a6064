from __future__ import annotations

import math

import pytest

from engine.quotes import QuoteLimits, QuoteValidator


@pytest.mark.parametrize(
    ("bid", "ask", "reason"),
    [
        (math.nan, 1.0, "not_finite"),
        (1.0, math.inf, "not_finite"),
        (0.0, 1.0, "non_positive"),
        (-1.0, 1.0, "non_positive"),
        (1.1, 1.0, "crossed"),
    ],
)
def test_invalid_quotes_are_rejected_and_counted(bid: float, ask: float, reason: str) -> None:
    v = QuoteValidator()
    assert v.check(bid, ask, 1000, 1000) == reason
    assert v.rejected == {reason: 1}
    assert v.last_mid is None


def test_locked_market_is_allowed() -> None:
    assert QuoteValidator().check(1.0, 1.0, 0, 0) is None


def test_stale_and_out_of_order() -> None:
    v = QuoteValidator(QuoteLimits(max_age_ms=100))
    assert v.check(1.0, 1.1, 1000, 1101) == "stale"
    assert v.check(1.0, 1.1, 1000, 1100) is None
    assert v.check(1.0, 1.1, 999, 1100) == "stale"


def test_a_single_wild_print_is_dropped_a_real_move_is_followed() -> None:
    v = QuoteValidator(QuoteLimits(max_jump=0.02, confirm_jumps=3))
    assert v.check(100.0, 100.1, 0, 0) is None
    assert v.check(150.0, 150.1, 1, 1) == "jump"  # a bad print
    assert v.check(100.1, 100.2, 2, 2) is None  # back to normal
    assert v.check(90.0, 90.1, 3, 3) == "jump"
    assert v.check(90.1, 90.2, 4, 4) == "jump"
    assert v.check(90.0, 90.1, 5, 5) is None  # third agreeing quote: the market really moved
    assert v.last_mid == pytest.approx(90.05)


def test_real_gold_gap_is_not_a_wild_jump() -> None:
    v = QuoteValidator()
    assert v.check(1290.00, 1290.40, 0, 0) is None
    assert v.check(1284.43, 1284.83, 1, 1) is None  # the 5.57 drop in data/: 0.43 %


T0 = 1_767_225_600_000  # 2026-01-01, ms
YEAR_MS = 365 * 86_400_000


def test_a_quote_stamped_past_the_bound_ahead_of_arrival_is_future() -> None:
    v = QuoteValidator(QuoteLimits(max_ahead_ms=5_000))
    assert v.check(1.0, 1.1, T0 + 5_001, T0) == "future"
    assert v.check(1.0, 1.1, T0 * 1000, T0) == "future"  # microseconds sent as milliseconds
    assert v.rejected == {"future": 2}
    assert v.last_mid is None and v.last_ts is None
    assert v.check(1.0, 1.1, T0 + 5_000, T0) is None  # the bound itself is tolerated skew


def test_a_year_ahead_quote_does_not_hold_back_the_quotes_after_it() -> None:
    """The regression: accepted, it became the "last" quote, and every genuine quote after it
    was out of order for a year."""
    v = QuoteValidator()
    assert v.check(1.0, 1.1, T0, T0) is None
    assert v.check(1.05, 1.15, T0 + YEAR_MS, T0 + 10) == "future"
    for i in range(1, 4):
        assert v.check(1.0 + i / 1000, 1.1, T0 + 10 * i, T0 + 10 * i) is None
    assert v.last_mid == pytest.approx((1.003 + 1.1) / 2)


def test_a_quote_ahead_within_the_bound_counts_as_of_its_arrival() -> None:
    """Accepted (clock skew), but remembered no later than its arrival: the genuine quote of
    the next millisecond is not out of order behind it."""
    v = QuoteValidator(QuoteLimits(max_ahead_ms=5_000))
    assert v.check(1.0, 1.1, T0 + 4_999, T0) is None
    assert v.last_ts == T0
    assert v.check(1.0, 1.1, T0 + 1, T0 + 1) is None
    assert v.check(1.0, 1.1, T0, T0 + 2) == "stale"  # still in order up to the node's clock


def test_a_coalesced_quote_from_the_future_is_refused_too() -> None:
    v = QuoteValidator()
    assert v.check_coalesced(1.0, 1.1, T0 + YEAR_MS, T0) == "future"
    assert v.check_coalesced(1.0, 1.1, T0, T0) is None
    assert v.rejected == {"future": 1}

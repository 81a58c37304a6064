from __future__ import annotations

import pytest

from engine.instruments import DEFAULT_INSTRUMENTS, Instrument
from engine.sizing import (
    LatePolicy,
    ProtectiveStops,
    SizingMode,
    UserSettings,
    check_entry,
    check_stops,
    protective_levels,
    size_volume,
)
from protocol.common import Side
from protocol.device import OrderType
from protocol.errors import LateSignal, PriceDeviation, SizingRefused

GOLD = DEFAULT_INSTRUMENTS["XAUUSD"]  # 3 digits: a pip (0.1) is 100 points
P = GOLD.to_points


def test_fixed_multiple_and_risk_sizing() -> None:
    assert (
        size_volume(GOLD, UserSettings(fixed_volume=0.05), None, None, None, P(1950), None) == 0.05
    )
    multiple = UserSettings(sizing=SizingMode.MULTIPLE, multiple=2.5)
    assert size_volume(GOLD, multiple, 0.1, None, None, P(1950), None) == 0.25
    # Risk 1 % of 10,000 = 100 USD; SL 5.00 away on 100 oz a lot = 500 USD a lot -> 0.2 lots.
    risk = UserSettings(sizing=SizingMode.RISK, risk_percent=1.0)
    assert size_volume(GOLD, risk, None, None, 10_000, P(1950), P(1945)) == 0.2
    # The signal's own risk wins over the user's default.
    assert size_volume(GOLD, risk, None, 2.0, 10_000, P(1950), P(1945)) == 0.4
    # Rounded down to the step, never up.
    assert size_volume(GOLD, risk, None, None, 10_000, P(1950), P(1943)) == 0.14


@pytest.mark.parametrize(
    ("settings", "volume", "risk", "equity", "sl", "why"),
    [
        (UserSettings(sizing=SizingMode.MULTIPLE), None, None, None, None, "needs a signal volume"),
        (UserSettings(sizing=SizingMode.RISK), None, None, 10_000, None, "needs a stop-loss"),
        (
            UserSettings(sizing=SizingMode.RISK),
            None,
            None,
            None,
            1945.0,
            "needs the account equity",
        ),
        (
            UserSettings(sizing=SizingMode.RISK, risk_percent=0.001),
            None,
            None,
            1000,
            1900.0,
            "below the broker minimum",
        ),
        (UserSettings(fixed_volume=500), None, None, None, None, "above the broker maximum"),
    ],
)
def test_sizing_refusals_say_why(settings, volume, risk, equity, sl, why) -> None:
    with pytest.raises(SizingRefused, match=why):
        size_volume(GOLD, settings, volume, risk, equity, P(1950), None if sl is None else P(sl))


def test_entry_in_time_and_near_the_price_is_at_market() -> None:
    plan = check_entry(
        GOLD, Side.BUY, P(1950), 0, None, P(1950.5), P(1950.9), 1_000, UserSettings()
    )
    assert plan.order_type is OrderType.MARKET and plan.price == P(1950.9)


def test_late_and_moved_are_refused_with_numbers() -> None:
    s = UserSettings(max_delay_ms=60_000, max_deviation_pips=30)
    with pytest.raises(LateSignal) as late:
        check_entry(GOLD, Side.BUY, P(1950), 0, None, P(1950), P(1950.2), 61_000, s)
    assert late.value.details["delay_ms"] == 61_000
    with pytest.raises(PriceDeviation) as moved:
        check_entry(GOLD, Side.SELL, P(1950), 0, None, P(1946.9), P(1947.3), 1_000, s)
    assert moved.value.details["deviation_pips"] == pytest.approx(31)
    with pytest.raises(LateSignal, match="expired"):
        check_entry(GOLD, Side.BUY, P(1950), 0, 500, P(1950), P(1950.2), 1_000, s)


def test_pending_policy_turns_late_or_moved_into_orders_at_the_signal_price() -> None:
    s = UserSettings(
        late_policy=LatePolicy.PENDING, max_deviation_pips=10, pending_expiry_ms=60_000
    )
    worse = check_entry(GOLD, Side.BUY, P(1950), 0, None, P(1954), P(1954.4), 1_000, s)
    assert worse.order_type is OrderType.LIMIT and worse.price == P(1950)
    assert worse.expires_ms == 61_000
    better = check_entry(GOLD, Side.BUY, P(1950), 0, 30_000, P(1945), P(1945.4), 1_000, s)
    assert better.order_type is OrderType.STOP and better.expires_ms == 30_000


def test_stops_must_be_on_the_right_side_and_beyond_the_stops_level() -> None:
    inst = Instrument(symbol="XAUUSD", digits=3, pip_size=0.1, contract_size=100, stops_level=500)
    check_stops(inst, Side.BUY, P(1950), P(1945), P(1960))
    with pytest.raises(SizingRefused) as wrong:
        check_stops(inst, Side.BUY, P(1950), P(1955), None)
    assert wrong.value.details["reason"] == "wrong_side"
    with pytest.raises(SizingRefused) as near:
        check_stops(inst, Side.SELL, P(1950), P(1950.4), None)
    assert near.value.details["reason"] == "stops_level"


def test_disaster_stops_are_wider_than_the_engine_levels() -> None:
    same = protective_levels(GOLD, Side.BUY, P(1950), P(1945), P(1960), UserSettings())
    assert same == (P(1945), P(1960))
    far = UserSettings(protective_stops=ProtectiveStops.DISASTER, disaster_distance_pips=100)
    assert protective_levels(GOLD, Side.BUY, P(1950), P(1945), P(1960), far) == (P(1940), P(1960))
    assert protective_levels(GOLD, Side.SELL, P(1950), P(1930), None, far) == (P(1960), P(1940))

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.instruments import DEFAULT_INSTRUMENTS, Instrument
from protocol.errors import SizingRefused, UsageError

GOLD = DEFAULT_INSTRUMENTS["XAUUSD"]
EURUSD = DEFAULT_INSTRUMENTS["EURUSD"]


def test_points_round_trip_without_float_dust() -> None:
    assert GOLD.to_points(1284.065) == 1_284_065
    assert EURUSD.to_points(1.38319) == 138_319
    # 0.1 + 0.2 style dust lands on the same point as the clean value.
    assert GOLD.to_points(1284.06 + 0.005) == GOLD.to_points(1284.065)
    assert GOLD.to_price(1_284_065) == 1284.065
    assert GOLD.pip_points == 100 and EURUSD.pip_points == 10


@given(st.integers(min_value=1, max_value=10**9))
def test_points_survive_a_float_round_trip(points: int) -> None:
    assert EURUSD.to_points(EURUSD.to_price(points)) == points


@given(st.integers(min_value=-(10**14), max_value=10**14), st.integers(min_value=0, max_value=8))
def test_to_price_is_the_decimal_rounding(points: int, digits: int) -> None:
    # to_price divides without round(): the two must agree bit for bit, and the float must
    # print as the exact decimal at the instrument's digits.
    instrument = Instrument(symbol="X", digits=digits, pip_size=1.0, contract_size=1.0)
    price = instrument.to_price(points)
    assert price == round(points / 10**digits, digits)
    assert Decimal(repr(price)) == Decimal(points).scaleb(-digits)
    assert instrument.scale == 10**digits


def test_non_finite_price_is_refused() -> None:
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(UsageError):
            GOLD.to_points(bad)


@pytest.mark.parametrize(
    ("asked", "got"),
    [
        (0.07, 0.07),
        (0.29, 0.29),
        (0.123, 0.12),
        (1.0, 1.0),
        (100.0, 100.0),
        (0.019, 0.01),
    ],
)
def test_volume_rounds_down_to_the_step(asked: float, got: float) -> None:
    assert GOLD.normalize_volume(asked) == got


@pytest.mark.parametrize("bad", [0.0, -1.0, 0.009, 100.01, math.nan, math.inf])
def test_volume_outside_limits_is_refused_with_the_limits(bad: float) -> None:
    with pytest.raises(SizingRefused) as info:
        GOLD.normalize_volume(bad)
    assert info.value.details["min"] == 0.01 and info.value.details["max"] == 100.0


def test_step_of_a_tenth() -> None:
    inst = Instrument(
        symbol="X",
        digits=2,
        pip_size=0.01,
        contract_size=1,
        volume_min=0.1,
        volume_step=0.1,
        volume_max=50,
    )
    assert inst.normalize_volume(0.35) == 0.3
    assert inst.normalize_volume(49.99) == 49.9


def test_invalid_instrument_is_refused() -> None:
    with pytest.raises(UsageError):
        Instrument(symbol="X", digits=12, pip_size=0.1, contract_size=1)
    with pytest.raises(UsageError):
        Instrument(symbol="X", digits=2, pip_size=0.1, contract_size=1, volume_min=2, volume_max=1)


@given(st.integers(min_value=1, max_value=10_000), st.sampled_from([0.01, 0.1, 0.05]))
def test_a_typed_lot_on_the_step_is_taken_as_typed(steps: int, step: float) -> None:
    inst = Instrument(
        symbol="X",
        digits=2,
        pip_size=0.01,
        contract_size=1,
        volume_min=step,
        volume_step=step,
        volume_max=step * 10_000,
    )
    typed = float(Decimal(steps) * Decimal(repr(step)))  # as a person types it: 0.07, 1.3
    assert inst.check_volume(typed) == typed


@given(st.integers(min_value=1, max_value=9_999), st.integers(min_value=1, max_value=9))
def test_a_typed_lot_off_the_step_is_refused_not_rounded(hundredths: int, thousandth: int) -> None:
    typed = float(Decimal(hundredths) / 100 + Decimal(thousandth) / 1000)  # 0.075, 12.341
    with pytest.raises(SizingRefused) as info:
        GOLD.check_volume(typed)
    assert info.value.details["step"] == 0.01


@pytest.mark.parametrize("bad", [0.0, -0.01, 0.009, 100.01, math.nan, math.inf])
def test_a_typed_lot_outside_the_limits_is_refused(bad: float) -> None:
    with pytest.raises(SizingRefused) as info:
        GOLD.check_volume(bad)
    assert info.value.details["min"] == 0.01 and info.value.details["max"] == 100.0

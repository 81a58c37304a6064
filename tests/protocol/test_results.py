"""The broker result-code table and its retry rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import UsageError
from protocol.results import RESULT_CODES, ResultCategory, classify, describe

D, R, F, C, U = (
    ResultCategory.DONE,
    ResultCategory.RETRYABLE,
    ResultCategory.FINAL,
    ResultCategory.ALREADY_CLOSED,
    ResultCategory.UNKNOWN,
)

# Written out by hand from the MQL4/MQL5 references: (platform, code, name, category without
# proof, category with executed=False).
EXPECTED = [
    ("mt5", 10004, "REQUOTE", R, R), ("mt5", 10006, "REJECT", F, F), ("mt5", 10007, "CANCEL", F, F),
    ("mt5", 10008, "PLACED", D, D), ("mt5", 10009, "DONE", D, D),
    ("mt5", 10010, "DONE_PARTIAL", D, D),
    ("mt5", 10011, "ERROR", F, F), ("mt5", 10012, "TIMEOUT", U, R), ("mt5", 10013, "INVALID", F, F),
    ("mt5", 10014, "INVALID_VOLUME", F, F), ("mt5", 10015, "INVALID_PRICE", F, F),
    ("mt5", 10016, "INVALID_STOPS", F, F), ("mt5", 10017, "TRADE_DISABLED", F, F),
    ("mt5", 10018, "MARKET_CLOSED", F, F), ("mt5", 10019, "NO_MONEY", F, F),
    ("mt5", 10020, "PRICE_CHANGED", R, R), ("mt5", 10021, "PRICE_OFF", R, R),
    ("mt5", 10022, "INVALID_EXPIRATION", F, F), ("mt5", 10023, "ORDER_CHANGED", F, F),
    ("mt5", 10024, "TOO_MANY_REQUESTS", R, R), ("mt5", 10025, "NO_CHANGES", D, D),
    ("mt5", 10026, "SERVER_DISABLES_AT", F, F), ("mt5", 10027, "CLIENT_DISABLES_AT", F, F),
    ("mt5", 10028, "LOCKED", U, U), ("mt5", 10029, "FROZEN", F, F),
    ("mt5", 10030, "INVALID_FILL", F, F),
    ("mt5", 10031, "CONNECTION", U, R), ("mt5", 10032, "ONLY_REAL", F, F),
    ("mt5", 10033, "LIMIT_ORDERS", F, F), ("mt5", 10034, "LIMIT_VOLUME", F, F),
    ("mt5", 10035, "INVALID_ORDER", F, F), ("mt5", 10036, "POSITION_CLOSED", C, C),
    ("mt5", 10038, "INVALID_CLOSE_VOLUME", F, F), ("mt5", 10039, "CLOSE_ORDER_EXIST", F, F),
    ("mt5", 10040, "LIMIT_POSITIONS", F, F), ("mt5", 10041, "REJECT_CANCEL", F, F),
    ("mt5", 10042, "LONG_ONLY", F, F), ("mt5", 10043, "SHORT_ONLY", F, F),
    ("mt5", 10044, "CLOSE_ONLY", F, F), ("mt5", 10045, "FIFO_CLOSE", F, F),
    ("mt5", 10046, "HEDGE_PROHIBITED", F, F),
    ("mt4", 0, "NO_ERROR", D, D), ("mt4", 1, "NO_RESULT", D, D), ("mt4", 2, "COMMON_ERROR", F, F),
    ("mt4", 3, "INVALID_TRADE_PARAMETERS", F, F), ("mt4", 4, "SERVER_BUSY", R, R),
    ("mt4", 5, "OLD_VERSION", F, F), ("mt4", 6, "NO_CONNECTION", U, R),
    ("mt4", 7, "NOT_ENOUGH_RIGHTS", F, F), ("mt4", 8, "TOO_FREQUENT_REQUESTS", R, R),
    ("mt4", 9, "MALFUNCTIONAL_TRADE", F, F), ("mt4", 64, "ACCOUNT_DISABLED", F, F),
    ("mt4", 65, "INVALID_ACCOUNT", F, F), ("mt4", 128, "TRADE_TIMEOUT", U, R),
    ("mt4", 129, "INVALID_PRICE", F, F), ("mt4", 130, "INVALID_STOPS", F, F),
    ("mt4", 131, "INVALID_TRADE_VOLUME", F, F), ("mt4", 132, "MARKET_CLOSED", F, F),
    ("mt4", 133, "TRADE_DISABLED", F, F), ("mt4", 134, "NOT_ENOUGH_MONEY", F, F),
    ("mt4", 135, "PRICE_CHANGED", R, R), ("mt4", 136, "OFF_QUOTES", R, R),
    ("mt4", 137, "BROKER_BUSY", R, R), ("mt4", 138, "REQUOTE", R, R),
    ("mt4", 139, "ORDER_LOCKED", U, U), ("mt4", 140, "LONG_POSITIONS_ONLY_ALLOWED", F, F),
    ("mt4", 141, "TOO_MANY_REQUESTS", R, R), ("mt4", 145, "TRADE_MODIFY_DENIED", F, F),
    ("mt4", 146, "TRADE_CONTEXT_BUSY", R, R), ("mt4", 147, "TRADE_EXPIRATION_DENIED", F, F),
    ("mt4", 148, "TRADE_TOO_MANY_ORDERS", F, F), ("mt4", 149, "TRADE_HEDGE_PROHIBITED", F, F),
    ("mt4", 150, "TRADE_PROHIBITED_BY_FIFO", F, F), ("mt4", 4108, "INVALID_TICKET", C, C),
    ("mt4", 4109, "TRADE_NOT_ALLOWED", F, F), ("mt4", 4110, "LONGS_NOT_ALLOWED", F, F),
    ("mt4", 4111, "SHORTS_NOT_ALLOWED", F, F),
    ("mt5", -1, "EA_BAD_SIGNATURE", F, F), ("mt5", -2, "EA_REJECTED", F, F),
    ("mt4", -1, "EA_BAD_SIGNATURE", F, F), ("mt4", -2, "EA_REJECTED", F, F),
]  # fmt: skip


@pytest.mark.parametrize(("platform", "code", "name", "plain", "proven"), EXPECTED)
def test_every_listed_code(
    platform: str, code: int, name: str, plain: ResultCategory, proven: ResultCategory
) -> None:
    entry = describe(platform, code)  # type: ignore[arg-type]
    assert entry is not None and entry.name == name and entry.description
    assert classify(platform, code) is plain  # type: ignore[arg-type]
    assert classify(platform, code, executed=False) is proven  # type: ignore[arg-type]
    # An ack claiming execution is never retried, and never turned into a failure.
    with_execution = classify(platform, code, executed=True)  # type: ignore[arg-type]
    assert with_execution is (plain if plain in (D, C, U) else U)


def test_the_table_is_exactly_the_expected_one() -> None:
    listed = {(p, c) for p, table in RESULT_CODES.items() for c in table}
    assert listed == {(p, c) for p, c, *_ in EXPECTED}


def test_the_rules_of_the_issue() -> None:
    never_retried = [
        "INVALID_STOPS",
        "INVALID_VOLUME",
        "MARKET_CLOSED",
        "TRADE_DISABLED",
        "NO_MONEY",
    ]
    for name in never_retried:
        (code,) = [c for c, e in RESULT_CODES["mt5"].items() if e.name == name]
        for executed in (None, False, True):
            assert classify("mt5", code, executed) is not R
    assert classify("mt5", 10012) is U and classify("mt5", 10012, executed=False) is R
    assert classify("mt4", 4108) is C and classify("mt5", 10036) is C


@given(
    st.sampled_from(["mt4", "mt5"]),
    st.integers(-(2**31), 2**31 - 1),
    st.sampled_from([None, False, True]),
)
def test_unlisted_codes_are_final_and_retries_need_a_listed_code(
    platform: str, code: int, executed: bool | None
) -> None:
    category = classify(platform, code, executed)  # type: ignore[arg-type]
    if code not in RESULT_CODES[platform]:  # type: ignore[index]
        assert category is F
    if category is R:
        assert executed is not True


def test_unknown_platform() -> None:
    with pytest.raises(UsageError):
        classify("mt6", 0)  # type: ignore[arg-type]

from __future__ import annotations

import pytest

from engine.broker_symbols import SymbolMap

CANON = ["XAUUSD", "EURUSD", "GBPUSD"]


@pytest.mark.parametrize(
    ("offered", "gold", "euro"),
    [
        (["XAUUSD", "EURUSD", "GBPUSD"], "XAUUSD", "EURUSD"),
        (["XAUUSDm", "EURUSDm", "GBPUSDm", "USDJPYm"], "XAUUSDm", "EURUSDm"),
        (["GOLD", "EURUSD", "GBPUSD"], "GOLD", "EURUSD"),
        (["XAUUSD.vip", "EURUSD.vip", "GBPUSD.vip"], "XAUUSD.vip", "EURUSD.vip"),
        (["#XAUUSD", "#EURUSD", "#GBPUSD"], "#XAUUSD", "#EURUSD"),
        (["GOLD.vip", "EURUSD.vip", "GBPUSD.vip"], "GOLD.vip", "EURUSD.vip"),
        # A bare (raw) name beside the usual suffixed tradable one: the suffix wins.
        (["EURUSD", "EURUSD-ecn", "GBPUSD-ecn", "XAUUSD-ecn"], "XAUUSD-ecn", "EURUSD-ecn"),
    ],
)
def test_detects_names_prefixes_suffixes_and_aliases(offered, gold, euro) -> None:
    m = SymbolMap.build(CANON, offered)
    assert m.to_broker("XAUUSD") == gold and m.to_broker("EURUSD") == euro
    assert m.to_canonical(gold) == "XAUUSD" and m.to_canonical(euro) == "EURUSD"


def test_overrides_win_and_missing_symbols_are_reported_not_guessed() -> None:
    m = SymbolMap.build(CANON, ["XAUUSDm", "EURUSDm", "GOLDX"], overrides={"XAUUSD": "GOLDX"})
    assert m.to_broker("XAUUSD") == "GOLDX"
    assert m.to_broker("GBPUSD") is None and m.unmapped == ("GBPUSD",)
    assert m.to_canonical("USDJPYm") is None


def test_identity_map() -> None:
    m = SymbolMap.identity(CANON)
    assert m.to_broker("EURUSD") == "EURUSD" and m.to_canonical("GBPUSD") == "GBPUSD"

from __future__ import annotations

import pytest

from engine.guards import (
    DrawdownGuard,
    DrawdownLimits,
    GuardDecision,
    GuardLevel,
    MarketGuard,
    MarketLimits,
)
from protocol.common import AlertLevel


def test_drawdown_levels_follow_the_old_thresholds() -> None:
    g = DrawdownGuard(user_id="u1")
    assert g.update(10_000, 0) == ([], [])
    alerts, decisions = g.update(9_100, 1)  # 9 %: still normal
    assert alerts == [] and g.level is GuardLevel.NORMAL
    alerts, decisions = g.update(9_000, 2)  # 10 %: warning
    assert [a.level for a in alerts] == [AlertLevel.WARNING] and decisions == []
    assert alerts[0].user_id == "u1" and alerts[0].kind == "drawdown"
    assert g.update(8_800, 3) == ([], [])  # 12 %: still warning, no repeat alert
    alerts, decisions = g.update(8_500, 4)  # 15 %: critical
    assert [a.level for a in alerts] == [AlertLevel.CRITICAL]
    assert decisions == [GuardDecision.BLOCK_OPENS] and g.opens_blocked
    alerts, decisions = g.update(9_950, 5)  # back to 0.5 %: normal, opens allowed again
    assert decisions == [GuardDecision.ALLOW_OPENS] and not g.opens_blocked


def test_close_all_on_critical_when_configured() -> None:
    g = DrawdownGuard(DrawdownLimits(on_critical="close_all"))
    g.update(100.0, 0)
    _, decisions = g.update(80.0, 1)
    assert decisions == [GuardDecision.BLOCK_OPENS, GuardDecision.CLOSE_ALL]


def test_alert_only_mode_decides_nothing() -> None:
    g = DrawdownGuard(DrawdownLimits(on_critical="alert"))
    g.update(100.0, 0)
    alerts, decisions = g.update(50.0, 1)
    assert alerts and decisions == []


def test_peak_follows_new_highs() -> None:
    g = DrawdownGuard()
    g.update(100.0, 0)
    g.update(200.0, 1)
    g.update(170.0, 2)
    assert g.drawdown == pytest.approx(0.15) and g.level is GuardLevel.CRITICAL


def test_invalid_limits() -> None:
    with pytest.raises(ValueError):
        DrawdownLimits(warning=0.2, critical=0.1)
    with pytest.raises(ValueError):
        DrawdownLimits(on_critical="panic")


def test_wide_spread_alerts_once_then_recovers() -> None:
    g = MarketGuard("XAUUSD", MarketLimits(spread_multiple=5))
    for i in range(100):
        assert g.on_quote(1000.0, 1000.4, i) == []
    wide = g.on_quote(1000.0, 1003.0, 100)
    assert [a.kind for a in wide] == ["spread"] and wide[0].level is AlertLevel.WARNING
    assert g.on_quote(1000.0, 1003.0, 101) == []
    back = g.on_quote(1000.0, 1000.4, 102)
    assert [(a.kind, a.level) for a in back] == [("spread", AlertLevel.INFO)]


def test_price_jump_and_silence() -> None:
    g = MarketGuard("XAUUSD", MarketLimits(jump=0.003, silence_ms=1000))
    g.on_quote(1000.0, 1000.2, 0)
    assert [a.kind for a in g.on_quote(1005.0, 1005.2, 1)] == ["price_jump"]
    assert g.check_silence(500) == []
    assert [a.kind for a in g.check_silence(1500)] == ["feed_silent"]
    assert g.check_silence(2500) == []  # once per silence
    g.on_quote(1005.0, 1005.2, 3000)
    assert [a.kind for a in g.check_silence(4500)] == ["feed_silent"]

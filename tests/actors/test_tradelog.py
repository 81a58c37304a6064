"""The trading log writes in short turns: never for long in one scheduler round, so the quotes and
closes behind it are not held; what it holds is written over the following rounds."""

from __future__ import annotations

import structlog

from actors.tradelog import TradeLog
from protocol.common import Alert


def _alert(n: int) -> Alert:
    return Alert(kind="spread", level="info", message=f"spread wide {n}", time_ms=n)


def test_a_drain_stops_at_its_budget() -> None:
    with structlog.testing.capture_logs():
        log = TradeLog()
        for n in range(5_000):
            log.note(_alert(n))
        done = log.drain(limit=5_000, budget_s=0.0)
        assert 0 < done < 5_000  # stopped at the first clock check past the budget
        assert log.drain() == 5_000 - done

"""A signal's ``created_at_ms`` may be ahead of the server's clock by the window, not more."""

from __future__ import annotations

import pytest

from protocol.common import Side
from protocol.errors import FutureTimestamp, PeerError
from protocol.signals import Signal, check_signal_time

NOW = 1_767_225_600_000
WINDOW = 5_000


def _signal(created_at_ms: int) -> Signal:
    return Signal(
        strategy_id="s1",
        signal_id="sig",
        audience=["u1"],
        symbol="XAUUSD",
        side=Side.BUY,
        entry=2000.0,
        created_at_ms=created_at_ms,
    )


@pytest.mark.parametrize("created", [0, NOW - 86_400_000, NOW, NOW + WINDOW])
def test_a_signal_up_to_the_window_ahead_is_accepted(created: int) -> None:
    check_signal_time(_signal(created), NOW, WINDOW)


@pytest.mark.parametrize("created", [NOW + WINDOW + 1, NOW * 1000, 2**53])
def test_a_signal_further_ahead_is_refused_with_the_clocks_in_details(created: int) -> None:
    with pytest.raises(FutureTimestamp) as refused:
        check_signal_time(_signal(created), NOW, WINDOW)
    assert isinstance(refused.value, PeerError) and refused.value.code == "future_timestamp"
    assert refused.value.details == {"ts_ms": created, "server_time_ms": NOW, "window_ms": WINDOW}

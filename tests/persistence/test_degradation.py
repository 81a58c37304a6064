"""The degraded-mode state machine shared by the Redis components, in virtual time."""

from __future__ import annotations

import structlog
import trio
import trio.testing

from persistence import Degradation
from protocol.errors import StorageError


async def test_retries_are_paced_and_an_outage_is_logged_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    state = Degradation("tick_bus", retry_after_s=2.0)
    error = StorageError("redis unavailable", error="ConnectionRefusedError(111)")
    with structlog.testing.capture_logs() as logs:
        assert state.should_try() and not state.degraded
        state.failed(error)
        assert state.degraded and not state.should_try()
        await trio.sleep(1.9)
        assert not state.should_try()
        await trio.sleep(0.2)
        assert state.should_try()  # one attempt per retry_after_s
        state.failed(error)  # that attempt failed too: paced again, not logged again
        assert not state.should_try()
        for _ in range(3):
            state.served_degraded()
        state.succeeded()
        assert not state.degraded and state.should_try()
        state.succeeded()  # staying healthy logs nothing
    assert [entry["event"] for entry in logs] == [
        "redis unavailable: degrading",
        "redis available again",
    ]
    assert logs[0]["log_level"] == "error"
    assert logs[0]["error"] == "ConnectionRefusedError(111)"
    assert state.outages_total == 1
    assert state.degraded_total == 3

"""The trading log writes in short turns: never for long in one scheduler round, so the quotes and
closes behind it are not held; what it holds is written over the following rounds. Idle, it
waits for an event to be noted rather than waking on a timer."""

from __future__ import annotations

import math

import structlog
import trio
import trio.testing

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


async def test_an_idle_log_sets_no_timer_and_a_noted_event_wakes_it() -> None:
    log = TradeLog()
    with structlog.testing.capture_logs() as lines:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log.run)
            await trio.testing.wait_all_tasks_blocked()
            # Nothing noted: no timer of the log's is pending (it used to wake every 0.1 s).
            assert trio.lowlevel.current_statistics().seconds_to_next_deadline == math.inf
            log.note(_alert(1))
            with trio.fail_after(5):
                while not lines:
                    await trio.sleep(0.01)
            await trio.testing.wait_all_tasks_blocked()
            assert trio.lowlevel.current_statistics().seconds_to_next_deadline > 1  # idle again
            log.note(_alert(2))  # a second wake-up works as the first
            with trio.fail_after(5):
                while len(lines) < 2:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert [line["message"] for line in lines][:2] == ["spread wide 1", "spread wide 2"]

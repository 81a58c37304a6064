"""Hop tracing (``actors.tracing``): off by default; on, a close made by a quote carries a
stamp for every hop of the engine, in order."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio

from actors import tracing
from engine.lifecycle import PositionState
from sim.paper_terminal import PaperConfig, run_paper_device
from tests.actors.test_flow import approve, gold_signal, wait_for_state


@pytest.fixture
def trace() -> Iterator[tracing.HopTrace]:
    assert tracing.TRACE is None  # off unless a harness turns it on
    yield tracing.enable()
    tracing.TRACE = None


async def test_a_close_is_stamped_at_every_hop_in_order(
    trace, harness, nursery, autojump_clock
) -> None:
    node = harness.node
    harness.quote(1950.0, 1950.3)
    terminal = await nursery.start(run_paper_device, node, "d1", PaperConfig(broker_stops=False))
    await trio.sleep(0.5)
    approval = await approve(node, gold_signal(node))
    pid = approval.position_id
    await wait_for_state(node, "u1", pid, PositionState.OPEN)
    assert trace.commands == {}  # an open is not made by a quote: not traced
    trace.frame_ns = tracing.now_ns()  # as the feed handler does for the frame it read
    harness.quote(1944.9, 1945.2)  # through the SL
    await wait_for_state(node, "u1", pid, PositionState.CLOSED)
    assert len(trace.commands) == 1  # the close, which the terminal executed
    ((command_id, row),) = trace.commands.items()
    assert command_id in terminal.executed and len(terminal.executed) == 2
    assert len(row) == len(tracing.HOPS) and all(row)
    assert row == sorted(row)
    assert trace.quotes == {}  # every quote's stamps were taken by its symbol actor

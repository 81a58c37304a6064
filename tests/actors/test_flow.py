"""The engine's main flows through real actors, a paper device, virtual time."""

from __future__ import annotations

import trio

from actors.messages import DecideSignal, Reply
from engine.lifecycle import PositionState
from protocol.common import Side
from protocol.signals import Signal
from sim.paper_terminal import PaperConfig, run_paper_device


def gold_signal(node, **over) -> Signal:
    fields = dict(
        strategy_id="s1",
        signal_id="g1",
        version=1,
        audience=["u1"],
        symbol="XAUUSD",
        side=Side.BUY,
        entry=1950.3,
        sl=1945.0,
        tp=1960.0,
        created_at_ms=node.clock.now_ms(),
        expires_at_ms=None,
    )
    fields.update(over)
    return Signal(**fields)


async def approve(node, signal: Signal, approval_id: str = "a1"):
    """u1 approves ``signal`` at the price board's quote (as the REST decision does)."""
    decided = Reply()
    node.user("u1").deliver(DecideSignal(signal, "approve", approval_id, "", "", None, decided))
    return await decided.wait()


async def wait_for_state(node, user_id, position_id, state):
    with trio.fail_after(10):
        while True:
            core = node.users[user_id].core
            p = core.positions.get(position_id) or core.recent_closed.get(position_id)
            if p is not None and p.state is state:
                return p
            await trio.sleep(0.01)


async def test_signal_open_breach_close_ack_closed(harness, nursery, autojump_clock) -> None:
    node = harness.node
    harness.quote(1950.0, 1950.3)
    terminal = await nursery.start(run_paper_device, node, "d1", PaperConfig(broker_stops=False))
    await trio.sleep(0.5)
    approval = await approve(node, gold_signal(node))
    pid = approval.position_id
    opened = await wait_for_state(node, "u1", pid, PositionState.OPEN)
    assert opened.ticket in terminal.positions and opened.volume == 0.1
    harness.quote(1944.9, 1945.2)  # through the SL
    closed = await wait_for_state(node, "u1", pid, PositionState.CLOSED)
    assert closed.close_reason == "sl" and closed.trigger_price == 1_944_900
    assert closed.close_price == 1_944_900 and not terminal.positions
    assert closed.realized_pl == round((1944.9 - 1950.3) * 0.1 * 100, 2)
    kinds = [type(r).__name__ for r in harness.journal.records]
    assert kinds.count("CommandIssued") == 2 and kinds.count("CommandResolved") == 2

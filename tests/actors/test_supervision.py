"""One failing actor never takes down another; a restarted actor's triggers still fire."""

from __future__ import annotations

import trio

from engine.lifecycle import PositionState
from engine.symbol import SymbolCore
from engine.user import UserCore
from protocol.closecodes import CloseCode
from protocol.device import CloseCommand, OpenCommand
from tests.actors.test_commands import open_position
from tests.actors.test_flow import wait_for_state


async def test_user_actor_crash_is_restarted_and_its_trigger_fires(
    harness, device, autojump_clock, monkeypatch
) -> None:
    await device.connect()
    pid = await open_position(harness, device)
    real = UserCore.on_triggers
    crashes = []

    def crash_once(self, triggers, now_ms):
        if not crashes:
            crashes.append(now_ms)
            raise RuntimeError("injected fault")
        return real(self, triggers, now_ms)

    monkeypatch.setattr(UserCore, "on_triggers", crash_once)
    harness.quote(1944.0, 1944.3)  # fires; the user actor crashes handling it
    await trio.sleep(1)
    assert crashes and harness.node.supervised["user:u1"].restarts == 1
    # Restored from the state fold: still OPEN, re-armed; the next quote past the SL fires.
    harness.quote(1943.5, 1943.8)
    close = await device.link.next(CloseCommand)
    assert close.command_id == f"{pid}.close.1"
    device.ack(close, fill_price=1943.5)
    await wait_for_state(harness.node, "u1", pid, PositionState.CLOSED)


async def test_symbol_actor_crash_does_not_touch_other_actors(
    harness, device, autojump_clock, monkeypatch
) -> None:
    await device.connect()
    pid = await open_position(harness, device)
    real = SymbolCore.on_quote
    crashed = []

    def crash_once(self, bid, ask, ts_ms, now_ms):
        if self.symbol == "XAUUSD" and not crashed:
            crashed.append(1)
            raise RuntimeError("injected fault")
        return real(self, bid, ask, ts_ms, now_ms)

    monkeypatch.setattr(SymbolCore, "on_quote", crash_once)
    harness.quote(1950.1, 1950.4)
    harness.quote(1.1, 1.10002, symbol="EURUSD")
    await trio.sleep(1)
    node = harness.node
    assert node.supervised["symbol:XAUUSD"].restarts == 1
    assert not node.supervised["symbol:EURUSD"].restarts
    assert node.prices.get("EURUSD") is not None
    assert node.users["u1"].core.positions[pid].state is PositionState.OPEN
    harness.quote(1944.0, 1944.3)  # the rebuilt book still holds the position
    assert (await device.link.next(CloseCommand)).command_id == f"{pid}.close.1"


async def test_second_connection_replaces_the_first(harness, device, autojump_clock) -> None:
    first = await device.connect()
    node = harness.node
    harness.quote(1950.0, 1950.3)
    await trio.sleep(0.05)
    from tests.actors.test_flow import approve, gold_signal

    approval = await approve(node, gold_signal(node))
    await first.next(OpenCommand)  # sent on the first connection, never answered
    second = await device.connect(positions=[])
    assert first.closed is not None and first.closed[0] == CloseCode.REPLACED
    # The open was lost with the first link; the new snapshot lacks it: REJECTED, not resent.
    await wait_for_state(node, "u1", approval.position_id, PositionState.REJECTED)
    assert not [f for f in second.frames if isinstance(f, OpenCommand)]

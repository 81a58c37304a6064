"""One failing actor never takes down another; a restarted actor's triggers still fire."""

from __future__ import annotations

import pytest
import trio

from actors.messages import ClosePosition, DeviceChanged, Reply
from engine.lifecycle import PositionState
from engine.symbol import SymbolCore
from engine.user import UserCore
from protocol.closecodes import CloseCode
from protocol.device import CloseCommand, OpenCommand
from protocol.errors import NotFound
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

    def crash_once(self, bid, ask, ts_ms, now_ms, *rest):
        if self.symbol == "XAUUSD" and not crashed:
            crashed.append(1)
            raise RuntimeError("injected fault")
        return real(self, bid, ask, ts_ms, now_ms, *rest)

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


async def test_a_breach_is_in_the_outbox_when_the_quote_returns(
    harness, device, autojump_clock
) -> None:
    # The idle fast paths (symbol actor, then user actor) run the whole tick path inside the
    # feed's call: no task hop between the quote and its close command in the device outbox.
    await device.connect()
    pid = await open_position(harness, device)
    await trio.sleep(1)  # every actor idle again
    outbox = device.actor.session.outbox
    before = len(outbox)
    harness.quote(1944.0, 1944.3)  # no await between the quote and the check
    assert len(outbox) == before + 1
    close = await device.link.next(CloseCommand)
    assert close.command_id == f"{pid}.close.1"


async def test_a_timer_set_on_the_fast_path_wakes_the_actor(
    harness, device, autojump_clock, monkeypatch
) -> None:
    await device.connect()
    await open_position(harness, device)
    await trio.sleep(1)
    user = harness.node.users["u1"]
    assert user.core.next_due_ms() is None  # the task sleeps on its mailbox with no timer
    real_on_triggers, real_tick = UserCore.on_triggers, UserCore.tick
    due: list[int] = []
    ticks: list[int] = []

    def on_triggers(self, triggers, now_ms):  # as if handling the fire scheduled a retry
        due.append(now_ms + 5_000)
        return real_on_triggers(self, triggers, now_ms)

    def tick(self, now_ms):
        ticks.append(now_ms)
        due.clear()
        return real_tick(self, now_ms)

    monkeypatch.setattr(UserCore, "on_triggers", on_triggers)
    monkeypatch.setattr(UserCore, "next_due_ms", lambda self: due[0] if due else None)
    monkeypatch.setattr(UserCore, "tick", tick)
    harness.quote(1944.0, 1944.3)  # handled on the fast path, in this call
    assert due and not ticks
    await trio.sleep(6)
    assert ticks and ticks[0] >= 0  # the task re-read its timer and woke for it


async def test_a_busy_user_actor_queues_instead(harness, device, autojump_clock) -> None:
    await device.connect()
    await open_position(harness, device)
    await trio.sleep(1)
    user = harness.node.users["u1"]
    user.deliver(DeviceChanged(harness.node.device("d1").info))  # queued: the task is awake now
    outbox = device.actor.session.outbox
    before = len(outbox)
    harness.quote(1944.0, 1944.3)
    assert len(outbox) == before  # behind the queued message, in order
    await device.link.next(CloseCommand)


async def test_a_request_answers_its_refusal_and_a_broken_one_crashes_the_actor(
    harness, device, autojump_clock, monkeypatch
) -> None:
    await device.connect()
    pid = await open_position(harness, device)
    node = harness.node
    refused: Reply[str | None] = Reply()
    node.user("u1").deliver(ClosePosition("p-none", refused))
    with pytest.raises(NotFound):  # a refusal: the caller's answer, the actor carries on
        await refused.wait()
    await trio.sleep(1)
    assert node.supervised["user:u1"].restarts == 0

    def broken(self, position_id, reason, now_ms):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(UserCore, "close_position", broken)
    failed: Reply[str | None] = Reply()
    node.user("u1").deliver(ClosePosition(pid, failed))
    with pytest.raises(RuntimeError, match="injected fault"):  # the caller learns of it...
        await failed.wait()
    await trio.sleep(1)
    assert node.supervised["user:u1"].restarts == 1  # ...and the actor was restarted
    monkeypatch.undo()
    closed: Reply[str | None] = Reply()  # the restarted actor serves requests again
    node.user("u1").deliver(ClosePosition(pid, closed))
    assert await closed.wait() == f"{pid}.close.1"


async def _closing(harness, device) -> tuple[str, CloseCommand]:
    """A position fired and its close at the device, every actor idle again."""
    await device.connect()
    pid = await open_position(harness, device)
    harness.quote(1944.0, 1944.3)
    close = await device.link.next(CloseCommand)
    await trio.sleep(1)
    return pid, close


def _state(node, user_id: str, position_id: str) -> PositionState:
    core = node.users[user_id].core
    position = core.positions.get(position_id) or core.recent_closed[position_id]
    return position.state


async def test_an_ack_closes_its_position_in_the_call_that_reads_it(
    harness, device, autojump_clock
) -> None:
    # The idle fast paths (device actor, then user actor) settle an ack inside the reader's
    # call: no task hop between the frame and the closed position.
    pid, close = await _closing(harness, device)
    assert _state(harness.node, "u1", pid) is PositionState.CLOSING
    device.ack(close, fill_price=1944.0)  # no await between the ack and the check
    assert _state(harness.node, "u1", pid) is PositionState.CLOSED


async def test_an_ack_that_fails_on_the_fast_path_restarts_the_device_actor(
    harness, device, autojump_clock, monkeypatch
) -> None:
    # The failure is raised in the actor's own task (its supervisor restarts it), not in the
    # connection's reader that handed the frame over.
    from engine.device import DeviceCore

    pid, close = await _closing(harness, device)

    def broken(self, ack, now_ms):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(DeviceCore, "on_ack", broken)
    device.ack(close, fill_price=1944.0)  # returns: the reader is not the one that fails
    await trio.sleep(1)
    assert harness.node.supervised["device:d1"].restarts == 1
    # The restarted actor ended the session it could not trust; the position waits, CLOSING
    # or UNKNOWN, for the device's next snapshot (never closed twice, never lost).
    assert _state(harness.node, "u1", pid) in {PositionState.CLOSING, PositionState.UNKNOWN}

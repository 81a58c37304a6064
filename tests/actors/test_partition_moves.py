"""A running node takes partitions of users over and gives them away (issue #21), and never
sends a command its gate refuses, before its device's snapshot, or takes another command's ack."""

from __future__ import annotations

import pytest
import trio

from actors.device import DeviceActor
from engine.lifecycle import PositionState
from engine.records import CommandIssued
from engine.state import EngineState
from protocol.common import Side
from protocol.device import (
    CloseCommand,
    HelloBody,
    PositionsSnapshot,
    TerminalPosition,
    command_hash,
)
from protocol.errors import UsageError
from tests.actors.conftest import ScriptedLink
from tests.actors.test_flow import wait_for_state
from tests.engine.position_helpers import make_position


def partition(*, in_flight: bool = False) -> EngineState:
    """u1's recovered state: one OPEN long on d1 at 1950.3, SL 1945 (ticket 700); with
    ``in_flight``, closing, its close sent by the old owner and never answered."""
    state = EngineState()
    p = make_position(
        1,
        user_id="u1",
        device_id="d1",
        open_price=1_950_300,
        sl=1_945_000,
        tp=1_990_000,
        ticket=700,
    )
    if in_flight:
        p = make_position(
            1,
            user_id="u1",
            device_id="d1",
            open_price=1_950_300,
            sl=1_945_000,
            tp=1_990_000,
            ticket=700,
            state=PositionState.CLOSING,
            command_id="p1.close.1",
            attempt=1,
            close_reason="sl",
        )
        command = CloseCommand(
            command_id="p1.close.1",
            ticket=700,
            symbol="XAUUSD",
            volume=0.1,
            reason="sl",
            deadline_ms=10**12,
        )
        state.commands[command.command_id] = CommandIssued(
            command=command, position_id=p.id, user_id="u1", device_id="d1", issued_ms=0
        )
    state.positions[p.id] = p
    return state


HELD = TerminalPosition(
    ticket=700,
    symbol="XAUUSD",
    side=Side.BUY,
    volume=0.1,
    open_price=1950.3,
    open_time_ms=0,
    comment="tw:p1",
)


async def open_session(node, device_id: str = "d1") -> tuple[ScriptedLink, object]:
    """A session with no positions snapshot yet."""
    link = ScriptedLink()
    body = HelloBody(ea_build="t", account_login="42", terminal_time_ms=node.clock.now_ms())
    session = await node.device(device_id).open_session(body, link)
    return link, session


async def adopted_with_snapshot(harness) -> tuple[ScriptedLink, object]:
    """u1 adopted and OPEN, d1 connected with its positions snapshot (its commands may go)."""
    node = harness.node
    harness.quote(1950.0, 1950.3)
    await node.adopt(partition())
    await wait_for_state(node, "u1", "p1", PositionState.OPEN)
    link, session = await open_session(node)
    node.device("d1").inbound(
        session, PositionsSnapshot(time_ms=node.clock.now_ms(), positions=[HELD])
    )
    return link, session


def commands(link: ScriptedLink) -> list[CloseCommand]:
    return [f for f in link.frames if isinstance(f, CloseCommand)]


async def feed(harness, prices) -> None:
    """Quotes flowing, one every 10 ms."""
    for bid in prices:
        harness.quote(bid, bid + 0.3)
        await trio.sleep(0.01)


async def test_adopt_while_quotes_flow_then_the_snapshot_lets_the_close_out(
    harness, nursery, autojump_clock
) -> None:
    node = harness.node
    nursery.start_soon(feed, harness, [1950.0] * 50)
    await trio.sleep(0.1)
    adopted = await node.adopt(partition())
    assert adopted.user_ids == {"u1"} and adopted.positions == 1 and adopted.in_flight == 0
    await wait_for_state(node, "u1", "p1", PositionState.OPEN)
    await trio.sleep(0.2)
    assert node.symbols["XAUUSD"].core.owner("p1") == "u1"  # re-armed in the book
    link, session = await open_session(node)
    harness.quote(1944.0, 1944.3)  # crosses the adopted SL
    await wait_for_state(node, "u1", "p1", PositionState.CLOSING)
    await trio.sleep(0.5)
    assert commands(link) == []  # connected, but no snapshot yet: held
    node.device("d1").inbound(
        session, PositionsSnapshot(time_ms=node.clock.now_ms(), positions=[HELD])
    )
    close = await link.next(CloseCommand)
    assert close.command_id == "p1.close.1" and close.ticket == 700


async def test_adopted_in_flight_close_waits_for_the_snapshot_and_resends_the_same_id(
    harness, autojump_clock
) -> None:
    node = harness.node
    harness.quote(1950.0, 1950.3)
    await trio.sleep(0.05)
    await node.adopt(partition(in_flight=True))
    await wait_for_state(node, "u1", "p1", PositionState.UNKNOWN)  # its link was lost
    link, session = await open_session(node)
    await trio.sleep(0.5)
    assert commands(link) == []
    node.device("d1").inbound(
        session, PositionsSnapshot(time_ms=node.clock.now_ms(), positions=[HELD])
    )
    resent = await link.next(CloseCommand)
    assert resent.command_id == "p1.close.1"  # the old owner's close did not run: same id again


async def test_adopted_close_that_ran_on_the_old_owner_is_not_sent_again(
    harness, autojump_clock
) -> None:
    node = harness.node
    await node.adopt(partition(in_flight=True))
    link, session = await open_session(node)
    node.device("d1").inbound(session, PositionsSnapshot(time_ms=node.clock.now_ms(), positions=[]))
    closed = await wait_for_state(node, "u1", "p1", PositionState.CLOSED)
    assert "fill_pending" in closed.flags
    await trio.sleep(1)
    assert commands(link) == []


async def test_release_forgets_everything_and_a_later_adopt_works(
    harness, nursery, autojump_clock
) -> None:
    node = harness.node
    link, _ = await adopted_with_snapshot(harness)
    await trio.sleep(0.1)
    symbol = node.symbols["XAUUSD"]
    assert symbol.armed == 1
    released_devices: list[str] = []

    async def moved(actor: DeviceActor) -> None:
        released_devices.append(actor.device_id)
        await link.close(4010, "moved")

    released = await node.release(["u1"], reason="rebalance", on_device_released=moved)
    assert released.user_ids == {"u1"} and released.device_ids == ("d1",)
    assert released.positions_disarmed == 1 and released_devices == ["d1"]
    assert "u1" not in node.users and "d1" not in node.devices
    assert not any(name in node.supervised for name in ("user:u1", "device:d1"))
    assert symbol.armed == 0 and symbol.core.owner("p1") is None
    assert not node.state.positions and not node.state.guards
    fired = symbol.fired
    harness.quote(1940.0, 1940.3)  # through the released SL
    await trio.sleep(0.5)
    assert symbol.fired == fired and "u1" not in node.users
    assert commands(link) == []
    with pytest.raises(UsageError):
        node.user("u1")
    with pytest.raises(UsageError):
        node.device("d1")

    harness.quote(1950.0, 1950.3)
    await node.adopt(partition())  # it comes back
    await wait_for_state(node, "u1", "p1", PositionState.OPEN)
    await trio.sleep(0.1)
    assert symbol.armed == 1
    link2, session2 = await open_session(node)
    node.device("d1").inbound(
        session2, PositionsSnapshot(time_ms=node.clock.now_ms(), positions=[HELD])
    )
    harness.quote(1944.0, 1944.3)
    assert (await link2.next(CloseCommand)).command_id == "p1.close.1"


async def test_a_frame_queued_as_its_user_is_released_is_dropped_not_a_crash(
    harness, autojump_clock
) -> None:
    """The frozen zombie's race (CI, 2026-12-07): a device actor woken with a batch is
    cancelled by a release before it runs; it must not handle the batch (its user is gone:
    that raised UsageError beside the Cancelled, which escaped the supervisor and ended the
    whole node), and the node goes on serving."""
    node = harness.node
    link, session = await adopted_with_snapshot(harness)
    await trio.sleep(0.1)
    # Queued: the actor's task is woken with it, and has not run yet.
    node.device("d1").close_session(session)

    async def moved(released: DeviceActor) -> None:
        await link.close(4010, "moved")

    released = await node.release(["u1"], reason="lost", on_device_released=moved)
    assert released.device_ids == ("d1",)
    await trio.sleep(1)
    assert "device:d1" not in node.supervised and "u1" not in node.users
    await node.adopt(partition())  # the node still runs: the user can come back
    await wait_for_state(node, "u1", "p1", PositionState.OPEN)


async def test_an_actor_failing_as_its_user_is_released_ends_alone_not_the_node(
    harness, autojump_clock, monkeypatch
) -> None:
    """A failure raised beside the Cancelled of an actor's stop (here the device's tick task
    fails as the release cancels it: a group of both) passes the supervisor; the actor's own
    scope takes it, not the node's nursery."""
    node = harness.node

    async def tick_failing_when_stopped(self: DeviceActor) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            raise ValueError("failed while stopping") from None

    monkeypatch.setattr(DeviceActor, "_tick", tick_failing_when_stopped)
    await adopted_with_snapshot(harness)
    await trio.sleep(0.1)
    released = await node.release(["u1"], reason="lost")
    assert released.device_ids == ("d1",)
    await node.adopt(partition())  # the node still runs: the user comes back
    await wait_for_state(node, "u1", "p1", PositionState.OPEN)


async def test_release_without_a_hook_closes_the_session(harness, autojump_clock) -> None:
    node = harness.node
    await node.adopt(partition())
    link, _ = await open_session(node)
    released = await node.release({"u1"}, reason="shutdown")
    assert released.device_ids == ("d1",) and link.closed is not None and link.closed[0] == 1012


class Gate:
    def __init__(self) -> None:
        self.open = True
        self.asked = 0

    def may_send(self, user_id: str) -> bool:
        self.asked += 1
        return self.open


@pytest.fixture
def gate(harness) -> Gate:
    gate = Gate()
    harness.node.gate = gate
    return gate


async def test_gate_refusals_hold_commands_until_it_opens(harness, gate, autojump_clock) -> None:
    node = harness.node
    link, _ = await adopted_with_snapshot(harness)
    await trio.sleep(0.1)
    gate.open = False
    harness.quote(1944.0, 1944.3)
    await wait_for_state(node, "u1", "p1", PositionState.CLOSING)
    await trio.sleep(3)  # ticks pass: still refused, still held
    assert commands(link) == []
    assert node.stats()["commands_held_no_lease"] >= 1
    assert node.devices["d1"].core.queued() == ["p1.close.1"]
    gate.open = True
    node.retry_held()
    close = await link.next(CloseCommand)
    assert close.command_id == "p1.close.1"


async def test_gate_reopening_releases_at_the_next_tick(harness, gate, autojump_clock) -> None:
    node = harness.node
    harness.quote(1950.0, 1950.3)
    await node.adopt(partition())
    await wait_for_state(node, "u1", "p1", PositionState.OPEN)
    gate.open = False
    link, session = await open_session(node)
    node.device("d1").inbound(
        session, PositionsSnapshot(time_ms=node.clock.now_ms(), positions=[HELD])
    )
    harness.quote(1944.0, 1944.3)
    await trio.sleep(2)
    assert commands(link) == []
    gate.open = True
    assert (await link.next(CloseCommand)).command_id == "p1.close.1"  # the device's tick


async def test_an_ack_with_another_commands_hash_is_refused(harness, autojump_clock) -> None:
    from protocol.device import Ack

    node = harness.node
    alerts: list = []
    node.on_alerts(alerts.extend)
    link, session = await adopted_with_snapshot(harness)
    device = node.device("d1")
    harness.quote(1944.0, 1944.3)
    close = await link.next(CloseCommand)
    other = CloseCommand(
        command_id=close.command_id, ticket=701, symbol="XAUUSD", volume=0.1, deadline_ms=0
    )
    fields = {"retcode": 10009, "fill_price": 1943.9, "repeat": True}
    device.inbound(
        session, Ack(command_id=close.command_id, command_hash=command_hash(other), **fields)
    )
    await trio.sleep(0.2)
    assert node.users["u1"].core.positions["p1"].state is PositionState.CLOSING
    assert node.stats()["ack_hash_mismatches"] == 1
    assert any(a.kind == "ack_hash_mismatch" for a in alerts)
    device.inbound(
        session, Ack(command_id=close.command_id, command_hash=command_hash(close), **fields)
    )
    closed = await wait_for_state(node, "u1", "p1", PositionState.CLOSED)
    assert closed.close_price == 1_943_900

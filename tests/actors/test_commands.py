"""Close commands are never lost and never doubled: retries, rejections, disconnects, acks."""

from __future__ import annotations

import pytest
import trio

from actors.messages import ApplySettings, Reply
from engine.lifecycle import PositionState
from protocol.common import Side
from protocol.device import (
    AccountState,
    CloseCommand,
    EventKind,
    Heartbeat,
    OpenCommand,
    PositionEvent,
    TerminalPosition,
)
from protocol.errors import GuardBlocked, LateSignal, SizingRefused
from tests.actors.test_flow import approve, gold_signal, wait_for_state


async def open_position(harness, device, **signal_fields):
    """Approve a signal and fill its open: returns (position id, ticket)."""
    node = harness.node
    harness.quote(1950.0, 1950.3)
    await trio.sleep(0.05)
    approval = await approve(node, gold_signal(node, **signal_fields))
    open_cmd = await device.link.next(OpenCommand)
    device.ack(open_cmd, ticket=700, fill_price=1950.3, fill_volume=0.1)
    await wait_for_state(node, "u1", approval.position_id, PositionState.OPEN)
    return approval.position_id


async def test_retryable_rejection_retries_then_closes(harness, device, autojump_clock) -> None:
    await device.connect()
    pid = await open_position(harness, device)
    harness.quote(1944.0, 1944.3)
    first = await device.link.next(CloseCommand)
    device.ack(first, retcode=10004)  # requote
    second = await device.link.next(CloseCommand)
    assert second.command_id == f"{pid}.close.2" and second.ticket == first.ticket
    device.ack(second, fill_price=1943.9)
    closed = await wait_for_state(harness.node, "u1", pid, PositionState.CLOSED)
    assert closed.close_price == 1_943_900


async def test_final_rejection_fails_with_an_alert(harness, device, autojump_clock) -> None:
    await device.connect()
    pid = await open_position(harness, device)
    alerts = []
    harness.node.on_alerts(alerts.extend)
    harness.quote(1944.0, 1944.3)
    device.ack(await device.link.next(CloseCommand), retcode=10018)  # market closed
    await wait_for_state(harness.node, "u1", pid, PositionState.CLOSE_FAILED)
    assert any(a.kind == "close_failed" and a.level == "critical" for a in alerts)


async def test_disconnect_mid_close_then_snapshot_closed_means_no_resend(
    harness, device, autojump_clock
) -> None:
    await device.connect()
    pid = await open_position(harness, device)
    harness.quote(1944.0, 1944.3)
    await device.link.next(CloseCommand)
    device.disconnect()
    await wait_for_state(harness.node, "u1", pid, PositionState.UNKNOWN)
    link = await device.connect(positions=[])  # the terminal no longer holds it
    await wait_for_state(harness.node, "u1", pid, PositionState.CLOSED)
    await trio.sleep(1)
    assert not [f for f in link.frames if isinstance(f, CloseCommand)]


async def test_disconnect_mid_close_then_snapshot_open_resends_same_id(
    harness, device, autojump_clock
) -> None:
    await device.connect()
    pid = await open_position(harness, device)
    harness.quote(1944.0, 1944.3)
    first = await device.link.next(CloseCommand)
    device.disconnect()
    await wait_for_state(harness.node, "u1", pid, PositionState.UNKNOWN)
    held = TerminalPosition(
        ticket=700,
        symbol="XAUUSD",
        side=Side.BUY,
        volume=0.1,
        open_price=1950.3,
        open_time_ms=0,
        comment=f"tw:{pid}",
    )
    link = await device.connect(positions=[held])
    resent = await link.next(CloseCommand)
    assert resent.command_id == first.command_id and resent.ticket == first.ticket
    device.ack(resent, fill_price=1943.8)
    await wait_for_state(harness.node, "u1", pid, PositionState.CLOSED)


async def test_duplicate_late_and_unknown_acks(harness, device, autojump_clock) -> None:
    node = harness.node
    await device.connect()
    pid = await open_position(harness, device)
    harness.quote(1944.0, 1944.3)
    close = await device.link.next(CloseCommand)
    device.ack(close, fill_price=1943.9)
    device.ack(close, fill_price=1943.9, repeat=True)  # duplicate
    device.ack(close, retcode=10004)  # late, contradictory: ignored
    device.ack(
        OpenCommand(
            command_id="Pnope.open.1",
            client_id="tw:Pnope",
            symbol="XAUUSD",
            side=Side.BUY,
            volume=0.1,
            deadline_ms=0,
        )
    )  # never sent
    closed = await wait_for_state(node, "u1", pid, PositionState.CLOSED)
    await trio.sleep(0.1)
    assert closed.close_price == 1_943_900
    actor = node.devices["d1"]
    assert actor.core.duplicate_acks == 2 and actor.core.unknown_acks == 1
    kinds = [getattr(r, "entry", None) and r.entry.kind for r in harness.journal.records]
    assert "unknown_ack" in kinds


async def test_broker_stop_first_then_already_closed(harness, device, autojump_clock) -> None:
    await device.connect()
    pid = await open_position(harness, device)
    harness.quote(1944.0, 1944.3)
    close = await device.link.next(CloseCommand)
    # The broker's own stop closed it a moment earlier; the terminal says so, then answers.
    device.send(
        PositionEvent(
            kind=EventKind.CLOSED_SL,
            ticket=700,
            symbol="XAUUSD",
            side=Side.BUY,
            volume=0.1,
            price=1945.0,
            time_ms=1,
            profit=-53.0,
        )
    )
    device.ack(close, retcode=10036)
    closed = await wait_for_state(harness.node, "u1", pid, PositionState.CLOSED)
    assert closed.close_price == 1_945_000 and closed.realized_pl == -53.0
    assert closed.close_reason == "sl"


async def test_already_closed_first_then_fill_from_terminal_event(
    harness, device, autojump_clock
) -> None:
    await device.connect()
    pid = await open_position(harness, device)
    harness.quote(1944.0, 1944.3)
    device.ack(await device.link.next(CloseCommand), retcode=10036)
    await wait_for_state(harness.node, "u1", pid, PositionState.CLOSED)
    device.send(
        PositionEvent(
            kind=EventKind.CLOSED_SL,
            ticket=700,
            symbol="XAUUSD",
            side=Side.BUY,
            volume=0.1,
            price=1945.0,
            time_ms=1,
        )
    )
    await trio.sleep(0.1)
    closed = harness.node.users["u1"].core.recent_closed[pid]
    assert closed.close_price == 1_945_000


async def test_broker_symbol_names_both_ways(harness, autojump_clock) -> None:
    from tests.actors.conftest import ScriptedDevice

    device = ScriptedDevice(harness, "d1", suffix="m")
    await device.connect()
    pid = await open_position(harness, device)
    harness.quote(1944.0, 1944.3)
    close = await device.link.next(CloseCommand)
    assert close.symbol == "XAUUSDm"
    device.ack(close, fill_price=1943.9)
    await wait_for_state(harness.node, "u1", pid, PositionState.CLOSED)
    # A report in the broker's name comes back canonical: a manual open is adopted as XAUUSD.
    device.send(
        PositionEvent(
            kind=EventKind.OPENED_MANUAL,
            ticket=901,
            symbol="XAUUSDm",
            side=Side.SELL,
            volume=0.2,
            price=1944.0,
            time_ms=1,
        )
    )
    await trio.sleep(0.1)
    [adopted] = harness.node.users["u1"].core.positions.values()
    assert adopted.symbol == "XAUUSD" and adopted.origin.value == "external"


async def test_stale_device_flags_positions_and_alerts(harness, device, autojump_clock) -> None:
    alerts = []
    harness.node.on_alerts(alerts.extend)
    await device.connect()
    pid = await open_position(harness, device)
    await trio.sleep(31)  # no heartbeat for longer than the stale window
    assert any(a.kind == "device_stale" for a in alerts)
    core = harness.node.users["u1"].core
    assert "stale_device" in core.positions[pid].flags
    device.send(Heartbeat(seq=1, time_ms=harness.node.clock.now_ms()))
    await trio.sleep(0.1)
    assert "stale_device" not in core.positions[pid].flags


async def test_unanswered_command_raises_overdue_alert(harness, device, autojump_clock) -> None:
    alerts = []
    harness.node.on_alerts(alerts.extend)
    await device.connect()
    await open_position(harness, device)
    harness.quote(1944.0, 1944.3)
    await device.link.next(CloseCommand)
    await trio.sleep(12)  # close deadline is 10 s
    assert [a.kind for a in alerts].count("command_overdue") == 1


async def test_approval_expiry_closes_what_it_opened(harness, device, autojump_clock) -> None:
    await device.connect()
    expires = harness.node.clock.now_ms() + 60_000
    pid = await open_position(harness, device, expires_at_ms=expires)
    await trio.sleep(59)
    assert not [f for f in device.link.frames if isinstance(f, CloseCommand)]
    close = await device.link.next(CloseCommand, timeout=5)
    assert close.reason == "expiry" and close.command_id == f"{pid}.close.1"


async def test_drawdown_critical_blocks_opens(harness, device, autojump_clock) -> None:
    node = harness.node
    await device.connect()
    harness.quote(1950.0, 1950.3)
    now = node.clock.now_ms()
    device.send(AccountState(balance=10_000, equity=10_000, time_ms=now))
    device.send(AccountState(balance=10_000, equity=8_000, time_ms=now))
    await trio.sleep(0.1)
    with pytest.raises(GuardBlocked):
        await approve(node, gold_signal(node))


async def test_drawdown_critical_closes_all_when_configured(harness, autojump_clock) -> None:
    from engine.guards import DrawdownLimits
    from engine.sizing import UserSettings
    from tests.actors.conftest import ScriptedDevice

    harness.node.directory.settings["u1"] = UserSettings(
        fixed_volume=0.1, drawdown=DrawdownLimits(on_critical="close_all")
    )
    device = ScriptedDevice(harness, "d1")
    await device.connect()
    await open_position(harness, device)
    now = harness.node.clock.now_ms()
    device.send(AccountState(balance=10_000, equity=10_000, time_ms=now))
    device.send(AccountState(balance=10_000, equity=8_000, time_ms=now))
    close = await device.link.next(CloseCommand)
    assert close.reason == "guard"


async def test_sizing_and_late_signal_refusals(harness, device, autojump_clock) -> None:
    from engine.sizing import UserSettings

    node = harness.node
    await device.connect()
    harness.quote(1950.0, 1950.3)
    await trio.sleep(0.05)
    late = gold_signal(node, created_at_ms=node.clock.now_ms() - 600_000)
    with pytest.raises(LateSignal):
        await approve(node, late)
    node.directory.settings["u1"] = UserSettings(fixed_volume=500)
    applied = Reply()
    node.user("u1").deliver(ApplySettings(node.directory.user_settings("u1"), applied))
    await applied.wait()
    with pytest.raises(SizingRefused):
        await approve(node, gold_signal(node, signal_id="g2"))
    assert not node.users["u1"].core.positions

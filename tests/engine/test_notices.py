"""Notices: a fill and a close are noted exactly when the state changes into them, alerts map
to the user they name, and the retry delay stays within its bounds."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from engine.instruments import DEFAULT_INSTRUMENTS
from engine.lifecycle import PositionState, next_state, transitions
from engine.notices import (
    Notice,
    alert_notification,
    notice_of,
    position_notification,
    retry_delay_s,
)
from engine.positions import Position
from protocol.common import Alert, AlertLevel, Side
from protocol.device import Ack
from protocol.notifications import decode_notification, encode_notification
from tests.engine.user_helpers import T0, P, core, fire, opened

S = PositionState


def _position(state: S, **changes: object) -> Position:
    return Position(
        id="p1",
        user_id="u1",
        device_id="d1",
        account="1",
        symbol="XAUUSD",
        side=Side.BUY,
        volume=0.1,
        state=state,
        **changes,  # type: ignore[arg-type]
    )


def test_every_legal_transition_is_noted_only_into_a_fill_or_a_close() -> None:
    for (state, event), after in transitions().items():
        before = _position(state, unknown_from=S.PENDING_OPEN if state is S.UNKNOWN else None)
        notice = notice_of(before, _position(next_state(state, event)))
        was_pending = state in {S.PENDING_OPEN, S.UNKNOWN}
        if after is S.OPEN and was_pending:
            assert notice is not None and notice.kind == "fill", (state, event)
        elif after is S.CLOSED:
            assert notice is not None and notice.kind == "close", (state, event)
        else:
            assert notice is None, (state, event)


def test_an_unknown_that_was_open_is_no_fill_and_an_adopted_position_no_fill() -> None:
    assert notice_of(_position(S.UNKNOWN, unknown_from=S.OPEN), _position(S.OPEN)) is None
    assert notice_of(None, _position(S.OPEN, origin="external")) is None
    assert notice_of(_position(S.OPEN), _position(S.OPEN, sl=5)) is None  # a modify


def test_the_core_notes_the_fill_and_the_sl_close_once_each() -> None:
    c = core()
    pid = opened(c)
    fx = fire(c, pid)
    assert fx.notices == []  # CLOSING: nothing yet
    [(_, close)] = fx.commands
    fx = c.on_result(
        close.command_id,
        "done",
        Ack(command_id=close.command_id, retcode=10009, fill_price=1944.4),
        T0 + 2100,
    )
    [notice] = fx.notices
    assert notice.kind == "close" and notice.position.close_reason == "sl"
    notification = position_notification(notice, DEFAULT_INSTRUMENTS["XAUUSD"])
    assert notification.id == f"{pid}.close" and notification.position is not None
    assert notification.position.close_price == 1944.4 and "by SL" in notification.text
    body = encode_notification(notification)
    assert decode_notification(body) == notification


def test_opened_notes_a_fill() -> None:
    c = core()
    pid = opened(c)
    fill = position_notification(Notice("fill", c.positions[pid]), DEFAULT_INSTRUMENTS["XAUUSD"])
    assert fill.kind == "fill" and fill.position is not None and fill.position.state == "open"
    assert c.positions[pid].open_price == P(1950.3)


def _alert(**changes: object) -> Alert:
    values: dict[str, object] = dict(
        kind="drawdown", level=AlertLevel.CRITICAL, message="drawdown 16%", time_ms=T0
    )
    values.update(changes)
    return Alert(**values)  # type: ignore[arg-type]


def test_alerts_go_only_to_the_user_they_name() -> None:
    assert alert_notification(_alert()) is None  # a market alert concerns nobody
    guard = alert_notification(_alert(user_id="u1"))
    assert guard is not None and (guard.event, guard.kind) == ("alert", "alert")
    assert guard.id == alert_notification(_alert(user_id="u1")).id  # type: ignore[union-attr]
    stale = alert_notification(
        _alert(kind="device_stale", level=AlertLevel.WARNING, user_id="u1", device_id="d1")
    )
    back = alert_notification(
        _alert(kind="device_stale", level=AlertLevel.INFO, user_id="u1", device_id="d1")
    )
    assert stale is not None and (stale.event, stale.kind) == ("device_offline", "device_offline")
    assert back is not None and (back.event, back.kind) == ("device_offline", "device_online")
    msgspec.json.decode(encode_notification(stale))


@given(
    attempt=st.integers(1, 40),
    base=st.floats(0.001, 10),
    cap=st.floats(0.001, 3600),
    unit=st.floats(0, 1, exclude_max=True),
)
def test_the_retry_delay_is_half_fixed_half_jitter_and_capped(
    attempt: int, base: float, cap: float, unit: float
) -> None:
    step = min(cap, base * 2 ** (attempt - 1))
    delay = retry_delay_s(attempt, base, cap, unit)
    assert step / 2 <= delay <= step + 1e-9
    assert retry_delay_s(attempt + 1, base, cap, 0.0) >= retry_delay_s(attempt, base, cap, 0.0)

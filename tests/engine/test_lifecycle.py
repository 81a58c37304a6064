from __future__ import annotations

import itertools

import pytest

from engine.lifecycle import (
    FINAL_STATES,
    PositionEvent,
    PositionState,
    next_state,
    transitions,
)
from engine.positions import Position
from protocol.common import Side
from protocol.errors import IllegalTransition, UsageError

S, E = PositionState, PositionEvent


def _position(state: PositionState) -> Position:
    return Position(
        id="p1",
        user_id="u1",
        device_id="d1",
        account="1",
        symbol="XAUUSD",
        side=Side.BUY,
        volume=0.1,
        state=state,
        updated_ms=5,
    )


@pytest.mark.parametrize(
    ("path", "final"),
    [
        ([E.OPEN_FILLED, E.CLOSE_SENT, E.CLOSE_FILLED], S.CLOSED),
        ([E.OPEN_REJECTED], S.REJECTED),
        ([E.RETRY, E.OPEN_FILLED, E.CLOSE_SENT, E.RETRY, E.CLOSE_FAILED], S.CLOSE_FAILED),
        ([E.OPEN_FILLED, E.CLOSE_SENT, E.LINK_LOST, E.BROKER_CLOSED], S.CLOSED),
        ([E.OPEN_FILLED, E.CLOSE_SENT, E.LINK_LOST, E.CLOSE_SENT, E.CLOSE_FILLED], S.CLOSED),
        ([E.LINK_LOST, E.OPEN_FILLED], S.OPEN),
        ([E.LINK_LOST, E.OPEN_REJECTED], S.REJECTED),
        ([E.OPEN_FILLED, E.BROKER_CLOSED], S.CLOSED),
        ([E.OPEN_FILLED, E.CLOSE_SENT, E.CLOSE_FAILED, E.CLOSE_SENT, E.BROKER_CLOSED], S.CLOSED),
    ],
)
def test_documented_paths(path: list[PositionEvent], final: PositionState) -> None:
    p = _position(S.PENDING_OPEN)
    for i, event in enumerate(path):
        p = p.transition(event, now_ms=10 + i)
    assert p.state is final
    assert p.updated_ms == 10 + len(path) - 1


def test_unknown_remembers_where_it_came_from() -> None:
    p = _position(S.CLOSING)
    p = p.transition(E.LINK_LOST, 1)
    assert p.state is S.UNKNOWN and p.unknown_from is S.CLOSING
    p = p.transition(E.CLOSE_SENT, 2)
    assert p.state is S.CLOSING and p.unknown_from is None


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (s, e)
        for s, e in itertools.product(PositionState, PositionEvent)
        if (s, e) not in transitions()
    ],
)
def test_every_illegal_transition_raises_and_changes_nothing(
    state: PositionState, event: PositionEvent
) -> None:
    p = _position(state)
    before = (p.state, p.updated_ms, p.unknown_from)
    with pytest.raises(IllegalTransition) as info:
        p.transition(event, now_ms=99, volume=5.0)
    assert (p.state, p.updated_ms, p.unknown_from, p.volume) == (*before, 0.1)
    assert info.value.code == "illegal_transition"
    assert info.value.details == {"state": state.value, "event": event.value}


def test_final_states_have_no_way_out() -> None:
    for state in FINAL_STATES:
        for event in PositionEvent:
            with pytest.raises(IllegalTransition):
                next_state(state, event)


def test_unknown_is_never_left_by_a_retry_or_a_link_loss() -> None:
    """UNKNOWN is resolved only by what a snapshot proves (docs/architecture.md): no blind
    resend."""
    for event in (E.RETRY, E.LINK_LOST, E.CLOSE_FILLED, E.CLOSE_FAILED):
        with pytest.raises(IllegalTransition):
            next_state(S.UNKNOWN, event)


def test_positions_are_immutable_values() -> None:
    p = _position(S.OPEN)
    moved = p.with_changes(7, sl=123)
    assert p.sl is None and moved.sl == 123 and moved.updated_ms == 7
    with pytest.raises(AttributeError):
        p.sl = 5  # type: ignore[misc]
    with pytest.raises(UsageError):
        p.with_changes(8, state=S.CLOSED)


def test_position_documents_round_trip() -> None:
    import msgspec

    from engine.positions import (
        BreakEvenRule,
        TrailingRule,
        decode_position_document,
        decode_position_documents,
        position_document,
    )

    p = _position(S.OPEN).with_changes(
        3,
        sl=100,
        trailing=TrailingRule(distance=50),
        break_even=BreakEvenRule(trigger=10),
        flags=("x",),
    )
    doc = position_document(p)
    assert doc["id"] == "p1" and doc["sl"] == 100 and doc["state"] == "open"
    text = msgspec.json.encode(doc)
    assert decode_position_document(text) == p
    assert decode_position_documents(b"[" + text + b"," + text + b"]") == [p, p]


@pytest.mark.parametrize("state", list(PositionState))
def test_closing_is_the_close_sent_transition(state: PositionState) -> None:
    """The hot path's spelled-out close equals the generic transition, refusals included."""
    p = _position(state)
    if state is S.CLOSING:  # reach UNKNOWN-from-CLOSING too, whose close clears unknown_from
        p = p.transition(E.LINK_LOST, 1)
    fields = {"attempt": 2, "command_id": "p1.close.2", "close_reason": "sl", "trigger_price": 7}
    try:
        expected = p.transition(E.CLOSE_SENT, 9, **fields)
    except IllegalTransition:
        with pytest.raises(IllegalTransition):
            p.closing(9, 2, "p1.close.2", "sl", 7)
        return
    assert p.closing(9, 2, "p1.close.2", "sl", 7) == expected

"""Commission and swap: what the terminal reports of a position's costs, kept by the user core,
journaled like every other change, shown in views, and readable from journals and snapshots
written before the fields existed."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.lifecycle import PositionState
from engine.positions import Position, decode_position_document, position_document
from engine.records import (
    PositionSaved,
    decode_batch,
    decode_batch_for_replay,
    decode_positions,
    encode_batch,
)
from engine.replay import SnapshotReplay
from engine.state import EngineState
from engine.views import net_pl, position_view
from protocol.common import Origin, Side
from protocol.device import Ack, CloseCommand, EventKind, PositionEvent, TerminalPosition
from tests.engine.user_helpers import GOLD, T0, approved, core, fire, opened

COSTS = ("commission", "swap")


def _position(**over: object) -> Position:
    fields: dict[str, object] = dict(
        id="P1",
        user_id="u1",
        device_id="d1",
        account="d1",
        symbol="XAUUSD",
        side=Side.BUY,
        volume=0.1,
        state=PositionState.OPEN,
        open_price=GOLD.to_points(1950.0),
        open_time_ms=T0,
        ticket=555,
        updated_ms=T0,
    )
    fields.update(over)
    return Position(**fields)  # type: ignore[arg-type]


def _terminal(ticket: int = 555, **over: object) -> TerminalPosition:
    fields: dict[str, object] = dict(
        ticket=ticket,
        symbol="XAUUSD",
        side=Side.BUY,
        volume=0.01,
        open_price=1950.3,
        open_time_ms=T0 + 1100,
        sl=1945.0,
        tp=1960.0,
    )
    fields.update(over)
    return TerminalPosition(**fields)  # type: ignore[arg-type]


# -- the value ---------------------------------------------------------------------------------


def test_with_costs_takes_reports_and_keeps_what_a_null_does_not_say() -> None:
    p = _position()
    assert (p.commission, p.swap) == (None, None)
    assert p.with_costs(T0 + 1, None, None) is p  # an old EA: nothing changes, nothing to save
    costed = p.with_costs(T0 + 1, -0.35, 0.0)
    assert (costed.commission, costed.swap, costed.updated_ms) == (-0.35, 0.0, T0 + 1)
    assert costed.with_costs(T0 + 2, -0.35, 0.0) is costed  # the same report: no change
    later = costed.with_costs(T0 + 3, None, -1.2)  # a report without commission keeps it
    assert (later.commission, later.swap) == (-0.35, -1.2)
    assert later.state is p.state


@given(
    st.lists(
        st.tuples(
            st.none() | st.floats(-1e4, 1e4, allow_nan=False),
            st.none() | st.floats(-1e4, 1e4, allow_nan=False),
        ),
        max_size=20,
    )
)
def test_costs_are_the_last_reported_of_each(reports: list[tuple[float | None, float | None]]):
    p = _position()
    for i, (commission, swap) in enumerate(reports):
        p = p.with_costs(T0 + i, commission, swap)
    last = [None, None]
    for report in reports:
        last = [new if new is not None else old for old, new in zip(last, report, strict=True)]
    assert [p.commission, p.swap] == last


def test_net_pl_is_pl_with_the_costs_and_pl_stays_the_price_pl() -> None:
    assert net_pl(None, -0.7, -1.0) is None
    assert net_pl(-30.0, None, None) == -30.0  # costs not reported count as zero
    assert net_pl(-30.0, -0.7, -1.12) == -31.82
    closed = _position(
        state=PositionState.CLOSED,
        close_price=GOLD.to_points(1947.0),
        realized_pl=-30.0,
        commission=-0.7,
        swap=-1.12,
    )
    view = position_view(GOLD, closed)
    assert (view.pl, view.commission, view.swap, view.net_pl) == (-30.0, -0.7, -1.12, -31.82)
    live = position_view(GOLD, _position(commission=-0.35), bid=GOLD.to_points(1951.0))
    assert (live.pl, live.swap, live.net_pl) == (10.0, None, 9.65)


# -- the user core -----------------------------------------------------------------------------


def test_the_open_ack_sets_the_entry_commission_and_journals_it() -> None:
    c = core()
    cid = approved(c)
    fx = c.on_result(
        cid,
        "done",
        Ack(
            command_id=cid,
            retcode=10009,
            ticket=555,
            fill_price=1950.3,
            fill_time_ms=T0 + 1100,
            commission=-0.04,
            swap=0.0,
        ),
        T0 + 1100,
    )
    [saved] = [r for r in fx.records if isinstance(r, PositionSaved)]
    assert saved.position.state is PositionState.OPEN
    assert (saved.position.commission, saved.position.swap) == (-0.04, 0.0)
    assert fx.changed[-1] is saved.position  # clients get it as a delta


def test_an_old_ea_leaves_the_costs_null() -> None:
    c = core()
    pid = opened(c)  # its ack carries neither field
    p = c.positions[pid]
    assert (p.commission, p.swap) == (None, None)
    fx = c.on_snapshot("d1", [_terminal()], T0 + 5000)
    assert not fx.records and not fx.changed  # nothing new: nothing journaled


def test_a_snapshot_keeps_the_swap_current_and_a_repeated_one_saves_nothing() -> None:
    c = core()
    pid = opened(c)
    day = 86_400_000
    fx = c.on_snapshot("d1", [_terminal(commission=-0.04, swap=-0.06)], T0 + day)
    [saved] = fx.records
    assert isinstance(saved, PositionSaved)
    assert (saved.position.commission, saved.position.swap) == (-0.04, -0.06)
    assert saved.position.updated_ms == T0 + day
    assert c.positions[pid] is saved.position
    again = c.on_snapshot("d1", [_terminal(commission=-0.04, swap=-0.06)], T0 + day + 5000)
    assert not again.records and not again.changed
    # An EA that stops reporting them (null) does not erase what it said.
    quiet = c.on_snapshot("d1", [_terminal()], T0 + day + 9000)
    assert not quiet.records
    assert (c.positions[pid].commission, c.positions[pid].swap) == (-0.04, -0.06)


def test_the_close_ack_carries_the_totals_and_the_view_nets_them() -> None:
    c = core()
    pid = opened(c)
    c.on_snapshot("d1", [_terminal(commission=-0.04, swap=-0.06)], T0 + 1500)
    [(_, close)] = fire(c, pid).commands
    assert isinstance(close, CloseCommand)
    c.on_result(
        close.command_id,
        "done",
        Ack(
            command_id=close.command_id,
            retcode=10009,
            fill_price=1944.4,
            commission=-0.07,
            swap=-0.06,
        ),
        T0 + 2100,
    )
    closed = c.recent_closed[pid]
    assert closed.state is PositionState.CLOSED
    assert (closed.commission, closed.swap) == (-0.07, -0.06)
    assert closed.realized_pl == pytest.approx(-5.9)  # the price P&L, costs apart
    view = position_view(GOLD, closed)
    assert view.net_pl == round(closed.realized_pl - 0.13, 2)


def test_a_broker_close_event_carries_the_final_totals() -> None:
    c = core()
    pid = opened(c)
    c.on_event(
        "d1",
        PositionEvent(
            kind=EventKind.CLOSED_TP,
            ticket=555,
            symbol="XAUUSD",
            side=Side.BUY,
            volume=0.01,
            price=1960.0,
            time_ms=T0 + 3000,
            profit=9.7,
            commission=-0.07,
            swap=-0.18,
        ),
        T0 + 3000,
    )
    closed = c.recent_closed[pid]
    assert (closed.realized_pl, closed.commission, closed.swap) == (9.7, -0.07, -0.18)


def test_an_adopted_position_brings_its_costs() -> None:
    c = core()
    fx = c.on_snapshot("d1", [_terminal(ticket=777, comment="", commission=-1.5, swap=3.25)], T0)
    [adopted] = [r.position for r in fx.records if isinstance(r, PositionSaved)]
    assert adopted.ticket == 777 and (adopted.commission, adopted.swap) == (-1.5, 3.25)


# -- journals and snapshots written before the fields ----------------------------------------


def _without_costs(p: Position) -> bytes:
    """``p`` as msgpack the way a Position was encoded before commission and swap existed
    (an array: the same fields, those two and every later one absent)."""
    fields = msgspec.msgpack.decode(msgspec.msgpack.encode(p))
    assert len(fields) == len(Position.__struct_fields__)
    first = Position.__struct_fields__.index(COSTS[0])
    assert Position.__struct_fields__[first : first + 2] == COSTS
    return msgspec.msgpack.encode(fields[:first])


def test_a_journal_record_from_before_the_fields_decodes_with_null_costs() -> None:
    p = _position(commission=-9.0, swap=-9.0)
    old_position = msgspec.msgpack.decode(_without_costs(p))
    payload = msgspec.msgpack.encode([["pos", old_position]])
    [record] = decode_batch(payload)
    assert isinstance(record, PositionSaved)
    assert record.position == msgspec.structs.replace(p, commission=None, swap=None)
    # The replay's lazy path reads the same bytes.
    [raw] = decode_batch_for_replay(payload)
    assert decode_positions([raw.position]) == [record.position]  # type: ignore[union-attr]
    # A new record still round-trips.
    assert decode_batch(encode_batch([PositionSaved(position=p)])) == [PositionSaved(position=p)]


def test_an_external_position_from_before_adoption_decodes_adopted() -> None:
    """Before adoption was asked for, a position found on a terminal was armed on sight: a
    journal of then keeps it armed (``adopted`` is the last field, True by default)."""
    assert Position.__struct_fields__[-1] == "adopted"
    p = _position(origin=Origin.EXTERNAL, adopted=False)
    fields = msgspec.msgpack.decode(msgspec.msgpack.encode(p))
    payload = msgspec.msgpack.encode([["pos", fields[:-1]]])
    [record] = decode_batch(payload)
    assert isinstance(record, PositionSaved)
    assert record.position == msgspec.structs.replace(p, adopted=True)
    assert record.position.watched
    # A new record keeps its user's choice.
    assert decode_batch(encode_batch([PositionSaved(position=p)])) == [PositionSaved(position=p)]


def test_a_snapshot_from_before_the_fields_decodes_with_null_costs() -> None:
    p = _position()
    state = EngineState()
    state.apply(PositionSaved(position=p), 1)
    snapshot = msgspec.msgpack.decode(state.encode_snapshot())
    snapshot["positions"] = [msgspec.msgpack.decode(_without_costs(p))]
    old = msgspec.msgpack.encode(snapshot)
    assert EngineState.decode_snapshot(old).positions == {"P1": p}
    assert SnapshotReplay(old).finish().positions == {"P1": p}


def test_a_projection_document_from_before_the_fields_decodes() -> None:
    p = _position()
    document = position_document(p)
    assert {k: document.pop(k) for k in COSTS} == {"commission": None, "swap": None}
    assert decode_position_document(msgspec.json.encode(document)) == p

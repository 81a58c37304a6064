"""Fills are never lost or invented (issue 20): fill-pending closes, deals, acks without a fill,
and opens routed to a device that can trade the symbol. Plain calls on the pure cores."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.device import DeviceCore
from engine.instruments import DEFAULT_INSTRUMENTS
from engine.lifecycle import PositionState
from engine.positions import FILL_PENDING
from engine.records import PositionSaved, ReconciliationRecorded
from engine.user import DeviceInfo, UserCore
from engine.views import net_pl, position_view
from protocol.common import Side
from protocol.device import (
    Ack,
    CloseCommand,
    Deal,
    EventKind,
    HelloBody,
    OpenCommand,
    PositionEvent,
    SymbolSpec,
)
from protocol.errors import DecodeError, Refused
from protocol.results import ResultCategory
from tests.engine.user_helpers import GOLD, T0, P, approved, core, fire, opened, signal

EURUSD = DEFAULT_INSTRUMENTS["EURUSD"]


def deal(position: int = 555, price: float = 1944.4, ticket: int = 9001, **over) -> Deal:
    fields = dict(
        ticket=ticket,
        position=position,
        price=price,
        time_ms=T0 + 2500,
        volume=0.01,
        profit=-5.9,
        commission=-0.07,
        swap=-0.02,
    )
    fields.update(over)
    return Deal(**fields)


def closed_while_away(c: UserCore) -> str:
    """A position whose close the terminal executed while its ack was lost (link gone), then
    proven closed by the reconnect snapshot."""
    pid = opened(c)
    cid = fire(c, pid).commands[0][1].command_id
    c.on_link_lost([cid], T0 + 3000)
    c.on_snapshot("d1", [], T0 + 5000)
    return pid


# -- fill pending ------------------------------------------------------------------------------


def test_a_close_proven_by_absence_is_fill_pending_with_no_pl() -> None:
    c = core()
    pid = closed_while_away(c)
    p = c.recent_closed[pid]
    assert p.state is PositionState.CLOSED and p.fill_pending and FILL_PENDING in p.flags
    assert p.close_price is None and p.realized_pl is None
    # Clients see it pending, with no P&L (not one made from today's quote), never 0.
    view = position_view(GOLD, p, bid=P(1990.0), ask=P(1990.3))
    assert view.fill_pending is True and view.pl is None and view.net_pl is None
    assert net_pl(p.realized_pl, p.commission, p.swap) is None  # analytics leave it out
    assert pid not in c.unreported  # no balance change invented either


def test_a_deal_gives_the_pending_position_its_fill_once() -> None:
    c = core()
    pid = closed_while_away(c)
    fx = c.on_deals("d1", [deal()], T0 + 6000)
    p = c.recent_closed[pid]
    assert not p.fill_pending and p.state is PositionState.CLOSED
    assert p.close_price == P(1944.4) and p.close_time_ms == T0 + 2500
    assert (p.realized_pl, p.commission, p.swap) == (-5.9, -0.07, -0.02)
    assert position_view(GOLD, p).pl == -5.9 and position_view(GOLD, p).fill_pending is False
    saved = [r for r in fx.records if isinstance(r, PositionSaved)]
    assert [r.position for r in saved] == [p]  # journaled
    [recon] = [r for r in fx.records if isinstance(r, ReconciliationRecorded)]
    assert recon.entry.kind == "fill_recovered" and recon.entry.position_id == pid
    # The same deal again (every reconnect repeats it), or another one for the same ticket:
    assert not c.on_deals("d1", [deal()], T0 + 7000)
    assert not c.on_deals("d1", [deal(price=1900.0, ticket=9002)], T0 + 7000)
    assert c.recent_closed[pid] == p


def test_deals_for_other_tickets_devices_or_filled_positions_change_nothing() -> None:
    c = core()
    pid = closed_while_away(c)
    assert not c.on_deals("d1", [deal(position=999)], T0 + 6000)
    assert not c.on_deals("d2", [deal()], T0 + 6000)  # the same ticket on another terminal
    assert not c.on_deals("d1", [], T0 + 6000)
    assert c.recent_closed[pid].fill_pending


def test_a_deal_without_profit_is_valued_from_the_prices() -> None:
    c = core()
    pid = closed_while_away(c)
    c.on_deals("d1", [deal(profit=None, commission=None, swap=None)], T0 + 6000)
    p = c.recent_closed[pid]
    # 0.01 lot of gold bought at 1950.3, closed at 1944.4: -5.90 on a 100 oz contract.
    assert p.realized_pl == pytest.approx(-5.9) and p.commission is None


def test_without_deals_the_position_stays_fill_pending() -> None:
    """An EA that never sends deals keeps working: the position stays closed, fill pending."""
    c = core()
    pid = closed_while_away(c)
    c.on_snapshot("d1", [], T0 + 9000)  # later reconnects change nothing
    assert c.recent_closed[pid].fill_pending and c.recent_closed[pid].realized_pl is None


def test_already_closed_without_a_fill_is_pending_until_the_terminals_event() -> None:
    c = core()
    pid = opened(c)
    cid = fire(c, pid).commands[0][1].command_id
    c.on_result(cid, "already_closed", Ack(command_id=cid, retcode=10036), T0 + 3000)
    assert c.recent_closed[pid].fill_pending
    event = PositionEvent(
        kind=EventKind.CLOSED_SL,
        ticket=555,
        symbol="XAUUSD",
        side=Side.BUY,
        volume=0.01,
        price=1945.0,
        time_ms=T0 + 2500,
        profit=-5.3,
    )
    c.on_event("d1", event, T0 + 3100)
    p = c.recent_closed[pid]
    assert not p.fill_pending and p.realized_pl == -5.3
    assert not c.on_deals("d1", [deal()], T0 + 3200)  # filled by its event: the deal is a repeat


def test_a_close_acked_with_its_fill_is_never_pending() -> None:
    c = core()
    pid = opened(c)
    cid = fire(c, pid).commands[0][1].command_id
    c.on_result(cid, "done", Ack(command_id=cid, retcode=10009, fill_price=1944.4), T0 + 3000)
    assert not c.recent_closed[pid].fill_pending


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(0, 5), max_size=30),  # the deals sent, by position index, in order
    st.lists(st.integers(0, 2), max_size=4),  # when the reconnects (resending all) happen
)
def test_each_pending_position_takes_exactly_its_first_deal(
    order: list[int], repeats: list[int]
) -> None:
    """Against a brute-force model: whatever order and repetition the deals come in, each
    fill-pending position takes the first deal naming its ticket and nothing else changes."""
    c = UserCore("u1")
    c.on_device(DeviceInfo("d1", {"XAUUSD": GOLD}), T0)
    tickets = [700 + i for i in range(3)]  # positions 0-2 exist; 3-5 name unknown tickets
    pids = []
    for i, ticket in enumerate(tickets):
        _, fx = c.decide(
            approval_id=f"a{i}",
            signal=signal(signal_id=f"g{i}"),
            decision="approve",
            bid=1950.0,
            ask=1950.3,
            now_ms=T0 + 1000,
        )
        cid = fx.commands[0][1].command_id
        ack = Ack(command_id=cid, retcode=10009, ticket=ticket, fill_price=1950.3)
        pid = c.on_result(cid, "done", ack, T0 + 1100).changed[0].id
        pids.append(pid)
        close = fire(c, pid).commands[0][1].command_id
        c.on_link_lost([close], T0 + 3000)
    c.on_snapshot("d1", [], T0 + 5000)
    first: dict[int, float] = {}
    batches = [order[: len(order) // 2], order[len(order) // 2 :]] + [order] * len(repeats)
    for n, batch in enumerate(batches):
        deals = [deal(position=700 + i, price=1940.0 + k, ticket=k) for k, i in enumerate(batch)]
        for d in deals:
            first.setdefault(d.position, d.price)
        c.on_deals("d1", deals, T0 + 6000 + n)
    for pid, ticket in zip(pids, tickets, strict=True):
        p = c.recent_closed[pid]
        if ticket in first:
            assert not p.fill_pending and p.close_price == P(first[ticket])
        else:
            assert p.fill_pending and p.close_price is None


# -- an ack that reports a close done without its fill -----------------------------------------


def classify(platform: str, retcode: int, executed: bool | None) -> ResultCategory:
    return ResultCategory(
        {10009: "done", 10008: "done", 10036: "already_closed"}.get(retcode, "final")
    )


def device(*symbols: SymbolSpec) -> DeviceCore:
    d = DeviceCore("d1", "u1", DEFAULT_INSTRUMENTS, classify)
    body = HelloBody(ea_build="1", account_login="42", terminal_time_ms=T0, symbols=list(symbols))
    d.connect("s1", body, T0)
    d.on_snapshot([], T0)
    return d


def close_command(cid: str = "P1.close.1") -> CloseCommand:
    return CloseCommand(command_id=cid, ticket=5, symbol="XAUUSD", volume=0.1, deadline_ms=T0 + 1)


def test_a_done_close_without_fill_price_is_refused_and_lost_with_the_link() -> None:
    d = device()
    d.submit(close_command(), T0)
    out = d.on_ack(Ack(command_id="P1.close.1", retcode=10009, executed=True), T0)
    assert out.results == []  # not settled: the position never closes without a price
    assert isinstance(out.fault, DecodeError) and out.fault.code == "malformed"
    assert out.fault.details["reason"] == "fill_missing"
    assert out.fault.details["command_id"] == "P1.close.1"
    assert d.outstanding() == ["P1.close.1"]
    assert d.disconnect(T0).lost == ["P1.close.1"]  # the session ends: UNKNOWN, then snapshot


def test_acks_with_a_fill_or_without_a_close_are_taken() -> None:
    d = device()
    d.submit(close_command(), T0)
    ok = d.on_ack(Ack(command_id="P1.close.1", retcode=10009, fill_price=1944.4), T0)
    assert ok.fault is None and [r.category for r in ok.results] == ["done"]
    d.submit(close_command("P2.close.1"), T0)  # already closed: no fill is claimed
    gone = d.on_ack(Ack(command_id="P2.close.1", retcode=10036), T0)
    assert gone.fault is None and gone.results
    pending_order = OpenCommand(
        command_id="P3.open.1",
        client_id="tw:P3",
        symbol="XAUUSD",
        side=Side.BUY,
        volume=0.1,
        price=1940.0,
        deadline_ms=T0 + 1,
    )
    d.submit(pending_order, T0)  # a pending order placed: its fill comes with its event
    placed = d.on_ack(Ack(command_id="P3.open.1", retcode=10008, ticket=9), T0)
    assert placed.fault is None and placed.results


# -- opens go to a device that can trade the symbol --------------------------------------------


def test_a_devices_tradable_symbols_follow_its_hello_through_its_symbol_map() -> None:
    d = device(
        SymbolSpec(name="XAUUSDm", digits=2),
        SymbolSpec(name="GBPUSDm", digits=5, trade_mode="close_only"),
        SymbolSpec(name="USDJPYm", digits=3, trade_mode="disabled"),
    )
    assert "XAUUSD" in d.tradable
    assert not {"EURUSD", "GBPUSD", "USDJPY"} & d.tradable
    named_none = DeviceCore("d2", "u1", DEFAULT_INSTRUMENTS, classify)
    named_none.connect("s", HelloBody(ea_build="1", account_login="4", terminal_time_ms=T0), T0)
    assert named_none.tradable == frozenset(DEFAULT_INSTRUMENTS)  # names none: trades all


def test_an_open_goes_to_a_connected_device_that_offers_the_symbol() -> None:
    c = UserCore("u1")
    c.on_device(DeviceInfo("fx", {"EURUSD": EURUSD}, symbols=frozenset({"EURUSD"})), T0)
    c.on_device(DeviceInfo("gold", {"XAUUSD": GOLD}, symbols=frozenset({"XAUUSD"})), T0)
    approved(c)
    [flight] = c.inflight.values()
    assert flight.device_id == "gold" and flight.command.symbol == "XAUUSD"


def test_no_capable_device_refuses_the_approval_and_records_nothing() -> None:
    c = UserCore("u1")
    c.on_device(DeviceInfo("fx", {"EURUSD": EURUSD}, symbols=frozenset({"EURUSD"})), T0)
    c.on_device(
        DeviceInfo("gold", {"XAUUSD": GOLD}, connected=False, symbols=frozenset({"XAUUSD"})), T0
    )
    with pytest.raises(Refused, match="no connected device can trade XAUUSD") as refused:
        approved(c)
    assert refused.value.details["symbol"] == "XAUUSD"
    assert c.approvals == {} and c.positions == {} and c.inflight == {}
    # Once the capable device connects, the same decision goes through.
    c.on_device(DeviceInfo("gold", {"XAUUSD": GOLD}, symbols=frozenset({"XAUUSD"})), T0)
    approved(c)
    assert [f.device_id for f in c.inflight.values()] == ["gold"]


# -- a fill-pending close survives a restart ---------------------------------------------------


def test_a_fill_pending_close_is_kept_in_the_state_until_its_fill_even_across_a_restart() -> None:
    from engine.records import PositionSaved as Saved
    from engine.state import EngineState

    c = core()
    state = EngineState()
    pid = opened(c)
    for r in fire(c, pid).records:
        state.apply(r)
    cid = c.positions[pid].command_id
    for r in c.on_link_lost([cid], T0 + 3000).records + c.on_snapshot("d1", [], T0 + 5000).records:
        state.apply(r)
    assert state.positions[pid].fill_pending  # closed, yet kept: its deal may come later

    restarted = UserCore("u1")
    view = state.user_view("u1")
    restarted.restore(view.positions, view.commands, view.approvals, view.guard)
    assert pid not in restarted.positions and restarted.recent_closed[pid].fill_pending
    fx = restarted.on_deals("d1", [deal()], T0 + 9000)
    for r in fx.records:
        state.apply(r)
    assert restarted.recent_closed[pid].close_price == P(1944.4)
    assert pid not in state.positions  # filled: final, history only
    assert any(isinstance(r, Saved) for r in fx.records)


def test_the_snapshotter_forgets_a_fill_pending_close_after_the_retention() -> None:
    from engine.state import RETENTION_MS, EngineState

    c = core()
    pid = closed_while_away(c)
    state = EngineState()
    state.apply(PositionSaved(position=c.recent_closed[pid]))
    state.prune(T0 + 6000)
    assert pid in state.positions
    state.prune(T0 + 6000 + RETENTION_MS)
    assert pid not in state.positions


def test_the_fill_missing_vector_of_the_protocol_doc() -> None:
    """docs/protocol.md's ack is refused with exactly its error frame; with a fill it is taken."""
    import re
    from pathlib import Path

    from protocol.codec import device_client_codec, device_server_codec
    from protocol.redaction import device_error

    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()

    def block(marker: str) -> str:
        match = re.search(r"```json \w+ " + marker + r"\n(.*?)\n```", doc, re.DOTALL)
        assert match, marker
        return match.group(1)

    ack = device_server_codec("json").decode(block("fill-missing-ack"))
    expected = device_client_codec("json").decode(block("fill-missing-error"))
    d = device()
    d.submit(close_command("P7Kx2.close.1"), T0)
    out = d.on_ack(ack, T0)
    assert out.fault is not None and out.results == []
    assert device_error(out.fault, fatal=True, command_id=ack.command_id) == expected
    fixed = d.on_ack(msgspec.structs.replace(ack, fill_price=2641.2), T0)
    assert fixed.fault is None and [r.category for r in fixed.results] == ["done"]

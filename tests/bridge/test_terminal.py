"""The bridge's terminal adapter and dispatcher against the fake terminal process: fills,
retcodes, a lost IPC channel, answers recovered after a crash, the broker's own closes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from protocol.codec import device_client_codec
from protocol.common import Side
from protocol.device import (
    CloseCommand,
    EventKind,
    ModifyCommand,
    OpenCommand,
    PartialCloseCommand,
    PositionEvent,
)
from protocol.session import sign_command
from sim.mt5 import constants as C  # noqa: N812
from sim.mt5.types import TradeDeal, TradePosition
from tripwire_ea import retcodes as rc
from tripwire_ea.dispatch import Dispatcher
from tripwire_ea.terminal import Terminal, TerminalUnavailable
from tripwire_ea.window import CommandWindow

KEY = bytes(range(32))


def _open(cid: str = "P1.open.1", side: Side = Side.BUY, **kw: Any) -> OpenCommand:
    return sign_command(
        OpenCommand(command_id=cid, client_id="tw:" + cid.split(".", 1)[0], symbol="XAUUSDm",
                    side=side, volume=0.1, deadline_ms=0, **kw),
        KEY,
    )  # fmt: skip


def _close(cid: str, ticket: int) -> CloseCommand:
    return sign_command(
        CloseCommand(command_id=cid, ticket=ticket, symbol="XAUUSDm", volume=0.1, deadline_ms=0),
        KEY,
    )


@pytest.fixture
def bridge(mt5: Any, terminal: Any, tmp_path: Path) -> Dispatcher:
    term = Terminal(mt5, path=terminal[0].address)
    term.connect()
    dispatcher = Dispatcher(term, CommandWindow(tmp_path / "w.json"), device_client_codec("json"))
    dispatcher.session_key = KEY
    return dispatcher


def test_the_fake_returns_the_real_packages_types(mt5: Any, terminal: Any) -> None:
    assert TradePosition._fields[:4] == ("ticket", "time", "time_msc", "time_update")
    assert "position_id" in TradeDeal._fields and "entry" in TradeDeal._fields
    tick = mt5.symbol_info_tick("XAUUSDm")
    assert (tick.bid, tick.ask) == terminal[1].quotes()["XAUUSD"] == (1284.065, 1284.405)
    assert mt5.symbol_info("NOPE") is None and mt5.last_error()[0] == C.RES_E_NOT_FOUND
    assert mt5.positions_get() == () and mt5.account_info().currency == "USD"
    assert mt5.history_deals_get() is None and mt5.last_error()[0] == C.RES_E_INVALID_PARAMS


def test_an_open_and_a_close_ack_with_the_terminals_fills(bridge: Dispatcher, mt5: Any) -> None:
    opened = bridge.command(_open(sl=1280.0, tp=1290.0))
    assert (opened.retcode, opened.category, opened.executed) == (10009, "done", True)
    assert opened.fill_price == 1284.405 and opened.fill_volume == 0.1
    [position] = mt5.positions_get()
    assert (position.ticket, position.sl, position.tp, position.comment) == (
        opened.ticket,
        1280.0,
        1290.0,
        "tw:P1",
    )
    assert opened.commission == -0.35
    closed = bridge.command(_close("P1.close.1", position.ticket))
    assert (closed.retcode, closed.fill_price, closed.ticket) == (10009, 1284.065, position.ticket)
    assert closed.commission == -0.7
    [exit_deal] = [d for d in mt5.history_deals_get(position=position.ticket) if d.entry == 1]
    assert exit_deal.comment == "P1.close.1" and exit_deal.profit == pytest.approx(
        -3.4
    )  # 0.34 below the ask, 10 oz
    assert bridge.command(_close("P1.close.1", position.ticket)).repeat  # stored, not re-run
    assert len(mt5.history_deals_get(position=position.ticket)) == 2


def test_partial_close_and_modify(bridge: Dispatcher, mt5: Any) -> None:
    ticket = bridge.command(_open()).ticket
    assert ticket is not None
    partial = sign_command(PartialCloseCommand(command_id="P1.pclose.1", ticket=ticket,
                           symbol="XAUUSDm", volume=0.04, deadline_ms=0), KEY)  # fmt: skip
    ack = bridge.command(partial)
    assert (ack.retcode, ack.fill_volume) == (10009, 0.04)
    assert mt5.positions_get(ticket=ticket)[0].volume == 0.06
    modify = sign_command(ModifyCommand(command_id="P1.modify.1", ticket=ticket,
                          symbol="XAUUSDm", sl=1270.0, tp=None, deadline_ms=0), KEY)  # fmt: skip
    assert bridge.command(modify).retcode == 10009
    assert (mt5.positions_get(ticket=ticket)[0].sl, mt5.positions_get(ticket=ticket)[0].tp) == (
        1270.0, 0.0)  # fmt: skip
    wrong = sign_command(ModifyCommand(command_id="P1.modify.2", ticket=ticket, symbol="EURUSDm",
                         sl=1.0, deadline_ms=0), KEY)  # fmt: skip
    assert bridge.command(wrong).retcode == rc.EA_REJECTED


@pytest.mark.parametrize("retcode", [10004, 10006, 10016, 10018, 10019, 10020, 10021, 10031])
def test_each_retcode_reaches_the_ack(bridge: Dispatcher, terminal: Any, retcode: int) -> None:
    terminal[1].script(retcode)
    ack = bridge.command(_open())
    row = rc.outcome(retcode)
    assert (ack.retcode, ack.category, ack.executed) == (retcode, row.outcome.value, row.executed)
    assert ack.fill_price is None
    assert terminal[1].state()["positions"] == ()


def test_a_lost_channel_leaves_the_command_started(bridge: Dispatcher, terminal: Any) -> None:
    terminal[1].ipc(False)
    with pytest.raises(TerminalUnavailable):
        bridge.command(_open())
    [entry] = bridge.window.pending()
    assert entry.command_id == "P1.open.1"
    terminal[1].ipc(True)
    # Nothing reached the broker: the answer is a proven non-execution, never a second send.
    ack = bridge.command(_open())
    assert (ack.retcode, ack.executed, ack.repeat) == (10012, False, True)
    assert terminal[1].state()["deals"] == ()


def test_a_close_done_behind_a_dead_bridge_is_answered_from_the_history(
    bridge: Dispatcher, mt5: Any
) -> None:
    ticket = bridge.command(_open()).ticket
    bridge.window.start("P1.close.1", "close", 0, ticket=ticket)
    # The previous process sent this and died before writing the answer.
    mt5.order_send({"action": 1, "position": ticket, "symbol": "XAUUSDm", "volume": 0.1,
                    "type": 1, "price": 0.0, "comment": "P1.close.1",
                    "type_filling": 1})  # fmt: skip
    [ack] = bridge.resolve_pending()
    assert (ack.retcode, ack.executed, ack.fill_price) == (10009, True, 1284.065)
    again = bridge.command(_close("P1.close.1", ticket))  # the server's resend
    assert again.repeat and again.fill_price == 1284.065
    assert len([d for d in mt5.history_deals_get(position=ticket) if d.entry == 1]) == 1


def test_the_brokers_own_stop_becomes_an_event(bridge: Dispatcher, terminal: Any, mt5: Any) -> None:
    ticket = bridge.command(_open(sl=1283.9)).ticket
    bridge.greeting()
    for _ in range(2000):
        terminal[1].step(5)
        if not mt5.positions_get():
            break
    events = [m for m in bridge.poll() if isinstance(m, PositionEvent)]
    [event] = events
    [deal] = [d for d in mt5.history_deals_get(position=ticket) if d.entry == 1]
    assert (event.kind, event.ticket, event.price) == (EventKind.CLOSED_SL, ticket, deal.price)
    assert deal.reason == C.DEAL_REASON_SL
    [report] = bridge.terminal.deals()
    assert [(d.position, d.price) for d in report.deals] == [(ticket, deal.price)]

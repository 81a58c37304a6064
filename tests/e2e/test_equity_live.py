"""The equity curve against a live account: a terminal books a close at once but reports its
balance with its next ``account`` frame, a heartbeat or so later. A curve fetched in between
must still start at the opening balance and end at the balance the close left; once the report
arrives, the curve's end is the live balance of the account message, of REST and of the
dashboard's account card.

The issue's screenshot: a -48.90 stop-loss close, the card at 9,951.10 once the report came,
and the page's curve drawn from 10,048.90 to 10,000.00 (the axis, padded by a tenth of the
range, read 10,053.79 and 9,995.11): the curve had been anchored on the balance reported
before the close, and the page did not ask again when the report moved the balance.

A simulated EA over a real WebSocket (``sim.ea``) holds the paper terminal; the test
decides when it sends its account report (``SimulatedEA.send``), so the order is the one that
produced the mismatch: the close's fill first, the report after.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url

from engine.lifecycle import PositionState
from engine.views import net_pl
from protocol.client import AccountDelta, Subscribe
from protocol.codec import client_client_codec
from sim.ea import SimulatedEA
from sim.paper_terminal import PaperConfig, PaperTerminal
from tests.e2e.conftest import Engine
from tests.e2e.helpers import GOLD_ASK, decision_url, make_signal, post_signal, quote, wait_for
from tests.e2e.test_dashboard import SHOTS, STEP_MS, launch
from tests.e2e.test_dashboard import chromium as chromium  # noqa: PLC0414 (a fixture)

pytestmark = [pytest.mark.e2e]

OPENING = 10_000.0
PASSWORD = "password-0123"
DEPOSIT = 25.0
CODEC = client_client_codec("json")


class Account:
    """A user with a simulated EA whose account reports the test sends by hand."""

    def __init__(self, engine: Engine, user_id: str, token: str, ea: SimulatedEA) -> None:
        self.engine, self.user_id, self.token, self.ea = engine, user_id, token, ea
        self.position_id = ""

    @property
    def terminal(self) -> PaperTerminal:
        return self.ea.terminal

    @property
    def core(self) -> Any:
        return self.engine.node.users[self.user_id].core

    async def open(self) -> None:
        """A buy approved through REST and filled by the EA."""
        quote(self.engine)
        signal = make_signal([self.user_id], signal_id="equity-live")
        async with self.engine.client(self.token) as http:
            assert (await post_signal(http, signal)).status_code in (200, 201, 202)
            answer = await http.post(decision_url(signal), json={"decision": "approve"})
            assert answer.status_code == 201, answer.text
        self.position_id = answer.json()["approval"]["position_id"]
        await wait_for(
            lambda: (
                (p := self.core.positions.get(self.position_id)) and p.state is PositionState.OPEN
            )
        )

    async def stop_out(self) -> float:
        """The market through the stop loss: the engine closes, the EA fills (its balance
        moves by the net P&L) and sends no account report. Waits until Postgres holds the
        trade, so the order is exactly the issue's: the trade recorded, the balance not yet
        reported."""
        quote(self.engine, bid=GOLD_ASK - 6.5, ask=GOLD_ASK - 6.0)
        closed = await wait_for(
            lambda: (
                (p := self.core.recent_closed.get(self.position_id))
                and p.state is PositionState.CLOSED
                and p
            )
        )
        await wait_for(
            lambda: self.engine.ctx.db.fetchval(
                "SELECT pl FROM positions WHERE id = $1 AND state = 'closed'", self.position_id
            )
        )
        assert closed.realized_pl is not None and closed.realized_pl < 0
        # What the close did to the balance: the paper terminal charges commission on each
        # deal, so the net, not the price P&L alone.
        assert closed.commission is not None and closed.commission < 0
        net = net_pl(closed.realized_pl, closed.commission, closed.swap)
        assert net is not None
        return net

    async def report(self) -> None:
        """The terminal's account report, sent now; waits until the engine has it."""
        now = self.ea.now_ms()
        await self.ea.send(self.terminal.account(now))
        await wait_for(lambda: self.core.balance == round(self.terminal.balance, 2))

    async def analytics(self) -> dict[str, Any]:
        async with self.engine.client(self.token) as http:
            answer = await http.get("/api/v1/analytics")
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result


async def connect(engine: Engine, nursery: trio.Nursery, name: str) -> Account:
    user_id, token = await engine.user(name, PASSWORD)
    record, secret = await engine.ctx.registry.register_device(user_id, "EA")

    def market(symbol: str) -> tuple[float, float] | None:
        q = engine.node.prices.get(symbol)
        return None if q is None else (q[0], q[1])

    # The engine's own stop closes the position (the broker's would race it on a heartbeat).
    terminal = PaperTerminal(
        engine.node.instruments, market, PaperConfig(latency_ms=0, broker_stops=False)
    )
    ea = SimulatedEA(engine.ws_url + "/ws/device", record.id, secret, terminal, encoding="json")
    await nursery.start(ea.run)
    account = Account(engine, user_id, token, ea)
    await wait_for(lambda: engine.node.users.get(user_id) and account.core.balance == OPENING)
    await wait_for(lambda: (d := account.core.devices.get(record.id)) is not None and d.connected)
    return account


async def test_the_curve_ends_at_the_balance_whichever_comes_first_close_or_report(
    engine: Engine, nursery: trio.Nursery
) -> None:
    account = await connect(engine, nursery, "alice")
    await account.open()
    url = f"{engine.ws_url}/ws/client?token={account.token}"
    async with open_websocket_url(url, subprotocols=["tripwire.v1.json"]) as ws:
        await ws.send_message(CODEC.encode(Subscribe(channels=["positions"])))
        net = await account.stop_out()
        after_close = round(OPENING + net, 2)
        assert round(account.terminal.balance, 2) == after_close  # booked, not reported

        # The close is known, its report is not: the curve is still the fold from the opening
        # balance, ending at the balance the close left (not at the last reported one).
        early = await account.analytics()
        curve = [p["equity"] for p in early["equity_curve"]]
        assert curve == [OPENING, after_close], early
        assert early["starting_balance"] == OPENING and early["balance"] == after_close

        await account.report()
        with trio.fail_after(10):
            while True:
                message = CODEC.decode(await ws.get_message())
                if isinstance(message, AccountDelta) and message.account.balance == after_close:
                    live = message.account.balance
                    break
    late = await account.analytics()
    assert [p["equity"] for p in late["equity_curve"]] == [OPENING, live]
    assert late["balance"] == live and late["starting_balance"] == OPENING
    assert late["trades"] == early["trades"] == 1


def drive(
    base_url: str, chromium: Path, username: str, engine_side: dict[str, Callable[[], Any]]
) -> dict[str, Any]:
    """The browser side, in a worker thread (see test_dashboard): what the page showed."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=STEP_MS)
    seen: dict[str, Any] = {"page_errors": []}
    with sync_playwright() as pw:
        browser = launch(pw, chromium)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(STEP_MS)
            page.on("pageerror", lambda error: seen["page_errors"].append(str(error)))
            try:
                _watch(page, expect, base_url, username, engine_side, seen)
            except Exception:
                page.screenshot(path=str(SHOTS / "equity-failure.png"), full_page=True)
                raise
        finally:
            browser.close()
    return seen


def _curve_ends_at(balance: float) -> re.Pattern[str]:
    return re.compile(rf"^Equity curve: from .* to {re.escape(f'{balance:,.2f}')}\b.*, 2 points")


def _watch(
    page: Any,
    expect: Any,
    base_url: str,
    username: str,
    engine_side: dict[str, Callable[[], Any]],
    seen: dict[str, Any],
) -> None:
    page.goto(base_url + "/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_test_id("connection-status")).to_have_text("Live")
    balance = page.get_by_test_id("account-balance")
    expect(balance).to_contain_text(f"{OPENING:,.2f}")
    expect(page.get_by_test_id("position-row")).to_have_count(1)

    after_close = engine_side["stop_out"]()
    expect(page.get_by_test_id("closed-row").get_by_test_id("pos-state")).to_have_text("CLOSED")
    canvas = page.get_by_test_id("equity-canvas")
    # Before the report: the card still says the reported balance, the curve the balance the
    # close left, from the opening balance.
    expect(canvas).to_have_attribute("aria-label", _curve_ends_at(after_close))
    expect(canvas).to_have_attribute(
        "aria-label", re.compile(rf"^Equity curve: from {re.escape(f'{OPENING:,.2f}')}\b")
    )
    page.screenshot(path=str(SHOTS / "equity-1-closed-before-report.png"), full_page=True)

    engine_side["report"]()
    expect(balance).to_contain_text(f"{after_close:,.2f}")
    expect(canvas).to_have_attribute("aria-label", _curve_ends_at(after_close))
    seen["card_after_report"] = balance.text_content()
    page.screenshot(path=str(SHOTS / "equity-2-after-report.png"), full_page=True)

    # A balance move that is no trade (a deposit, a swap): the card follows the report, and the
    # page asks for the curve again so that it ends where the card says.
    deposited = engine_side["deposit"]()
    expect(balance).to_contain_text(f"{deposited:,.2f}")
    expect(canvas).to_have_attribute("aria-label", _curve_ends_at(deposited))
    seen["card_after_deposit"] = balance.text_content()
    seen["curve_after_deposit"] = canvas.get_attribute("aria-label")
    page.screenshot(path=str(SHOTS / "equity-3-after-deposit.png"), full_page=True)


async def test_the_dashboard_curve_ends_at_the_live_balance(
    engine: Engine, nursery: trio.Nursery, chromium: Path
) -> None:
    account = await connect(engine, nursery, "bob")
    await account.open()

    async def stop_out() -> float:
        return round(OPENING + await account.stop_out(), 2)

    async def deposit() -> float:
        account.terminal.balance += DEPOSIT
        await account.report()
        return round(account.terminal.balance, 2)

    engine_side = {
        "stop_out": lambda: trio.from_thread.run(stop_out),
        "report": lambda: trio.from_thread.run(account.report),
        "deposit": lambda: trio.from_thread.run(deposit),
    }
    SHOTS.mkdir(exist_ok=True)
    seen = await trio.to_thread.run_sync(drive, engine.base_url, chromium, "bob", engine_side)
    assert seen["page_errors"] == []
    final = round(account.terminal.balance, 2)
    assert account.core.balance == final and f"{final:,.2f}" in seen["card_after_deposit"]
    answer = await account.analytics()
    assert answer["equity_curve"][-1]["equity"] == answer["balance"] == final

"""The dashboard in headless Chromium against the whole engine (replayed feed, paper device, demo
user, real Postgres): log in through the form, watch a position live, breach its stop loss on
the feed, and see the row closed with its reason and the account card's balance move without a
reload; filter the history and export it as CSV; approve a signal with a lot override; and use
the page at 390 px wide.

Each state is photographed into ``tests/e2e/screenshots/`` (git-ignored; the folder is made by
the test and overwritten by each run) so a reviewer can look at what the browser showed.

How the browser is driven: Playwright's sync API in one worker thread
(``trio.to_thread.run_sync``). Its async API needs an asyncio event loop, and this test's loop is
trio's (the engine runs in it); the sync API brings its own loop into the thread, so the two never
meet. The thread drives the page from start to end; the one engine-side step in the middle (the
breach) comes back into trio with ``trio.from_thread.run``. Every browser step has its own
timeout, so the thread, and the test, end in bounded time whatever the page does.

Chromium is Debian's (``make browser`` installs it). Without it the test skips, saying so,
except under ``CI=true`` where a missing browser is a failure, not a reason to pass.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from actors.messages import DecideSignal, Reply
from engine.lifecycle import PositionState
from engine.records import Approval, decision_key, signal_key
from gateway.demo import DEMO_DEVICE
from gateway.runtime import run
from gateway.services import accept_signal
from protocol.client import Pong
from protocol.common import Side
from protocol.errors import Refused
from protocol.feed import Quote
from protocol.signals import Signal
from tests.e2e.conftest import Engine, engine_settings, free_port
from tests.gateway.conftest import in_memory_app

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path(__file__).parent / "screenshots"
"""Where the test leaves a screenshot of each state it checks."""
STEP_MS = 15_000
"""The longest any one browser step may take (a shared 2-core machine, a cold browser)."""
DEMO_USER, DEMO_PASSWORD = "demo", "demo-password"
SYMBOL = "XAUUSD"
OVERRIDE_LOTS = 0.37
"""The lot size typed when approving (the signal asks for 0.1)."""
SL_DISTANCE = 4.0
"""Far enough that the replayed market (gold, 2014-05-02, from its start) does not reach the
stop on its own during the test; the breach is a quote we send."""


@pytest.fixture
def chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    message = f"{CHROMIUM} is missing: `make browser` installs Debian's chromium for this test"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
async def static_site(nursery: trio.Nursery) -> str:
    """The app over an idle in-memory node, on a free port: enough to load the page's modules."""
    config = HypercornConfig()
    config.bind = [f"127.0.0.1:{free_port()}"]
    config.accesslog = config.errorlog = None
    app = in_memory_app()
    await nursery.start(
        functools.partial(hypercorn_serve, app, config, shutdown_trigger=trio.sleep_forever)
    )
    return f"http://{config.bind[0]}"


@pytest.fixture
async def demo_engine(nursery: trio.Nursery, pg_dsn: str, tmp_path: Path) -> AsyncIterator[Engine]:
    """The engine as ``make run`` starts it, with a faster replay and no demo strategy (its
    signals would only be noise here)."""
    settings = engine_settings(
        tmp_path,
        pg_dsn,
        feed="replay",
        replay_speed=5.0,
        replay_start_s=0.0,  # the quiet start of the day: see SL_DISTANCE
        paper_device=True,
        demo_strategy=False,
    )
    ctx = (await nursery.start(run, settings)).gateway
    yield Engine(ctx, f"http://127.0.0.1:{settings.port}", f"ws://127.0.0.1:{settings.port}")


async def wait_until(predicate: Callable[[], Any]) -> Any:
    """Poll ``predicate`` until it returns something truthy (the caller bounds the time)."""
    while True:
        value = predicate()
        if value:
            return value
        await trio.sleep(0.05)


async def open_position(engine: Engine, user_id: str) -> tuple[str, float]:
    """Approve a signal for the demo user through its actor, as the REST endpoint will, and wait
    for the paper device to fill it: ``(position id, stop loss)``."""
    node = engine.node
    with trio.fail_after(30):
        bid, ask, _ = await wait_until(lambda: node.prices.get(SYMBOL))
        now = node.clock.now_ms()
        signal = Signal(
            strategy_id="e2e",
            signal_id="dashboard-1",
            version=1,
            audience=[user_id],
            symbol=SYMBOL,
            side=Side.BUY,
            entry=ask,
            sl=round(bid - SL_DISTANCE, 2),
            tp=round(ask + 2 * SL_DISTANCE, 2),
            volume=0.1,
            created_at_ms=now,
            expires_at_ms=now + 15 * 60_000,
        )
        await accept_signal(engine.ctx, signal)

        while True:  # until the paper device has said hello and is the user's trading device
            decided: Reply[Approval] = Reply()  # judged at the live price
            node.user(user_id).deliver(
                DecideSignal(signal, "approve", "dashboard-approval-1", "", "", None, decided)
            )
            try:
                approval = await decided.wait()
                break
            except Refused:
                await trio.sleep(0.1)
        position_id = approval.position_id
        core = node.users[user_id].core

        def opened() -> Any:
            p = core.positions.get(position_id)
            return p if p is not None and p.state is PositionState.OPEN else None

        p = await wait_until(opened)
    assert p.device_id == DEMO_DEVICE and p.sl is not None
    return position_id, signal.sl


async def breach(engine: Engine, sl: float) -> None:
    """A quote through the stop loss, into the same sink the replay feeds."""
    bid = round(sl - 0.5, 3)
    now = engine.node.clock.now_ms()
    quote = Quote(symbol=SYMBOL, bid=bid, ask=round(bid + 0.3, 3), time_ms=now)
    assert engine.node.offer_quotes([quote]) == 1


async def drop_clients(engine: Engine, user_id: str) -> None:
    """Overrun the user's client streams, as a client that stopped reading does: the server
    closes them with 1013 and the page must come back on its own."""
    for sub in list(engine.node.hub._subs.get(user_id, ())):  # the hub has no public list
        for i in range(sub.buffer.capacity + sub.buffer.max_overruns):
            sub.buffer.offer(("overrun", i), Pong(seq=0, time_ms=0))
        assert sub.dropped


def shoot(page: Any, name: str) -> None:
    """A full-page screenshot of the current state into :data:`SHOTS`."""
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def launch(pw: Any, chromium: Path) -> Any:
    """Debian's Chromium, headless, with nothing that would call out to the internet."""
    return pw.chromium.launch(
        executable_path=str(chromium), args=CHROMIUM_ARGS, timeout=STEP_MS * 2
    )


def drive_dashboard(
    base_url: str,
    chromium: Path,
    position_id: str,
    engine_side: dict[str, Callable[[], None]],
    shots: Path,
) -> dict[str, Any]:
    """The browser side, in a worker thread. Returns what the page showed."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=STEP_MS)
    seen: dict[str, Any] = {"page_errors": [], "csp": []}
    with sync_playwright() as pw:
        browser = launch(pw, chromium)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
            page.set_default_timeout(STEP_MS)
            page.on("pageerror", lambda error: seen["page_errors"].append(str(error)))
            page.on(
                "console",
                lambda m: "Content Security Policy" in m.text and seen["csp"].append(m.text),
            )
            try:
                _watch_and_breach(page, expect, base_url, position_id, engine_side, seen)
                _signals_and_logout(page, expect, position_id, engine_side, seen)
                _refused_token(page, expect)
            except Exception:
                page.screenshot(path=str(shots / "dashboard-failure.png"), full_page=True)
                shoot(page, "failure")
                raise
        finally:
            browser.close()
    return seen


def _watch_and_breach(
    page: Any,
    expect: Any,
    base_url: str,
    position_id: str,
    engine_side: dict[str, Callable[[], None]],
    seen: dict[str, Any],
) -> None:
    page.goto(base_url + "/")
    expect(page.get_by_test_id("login-form")).to_be_visible()
    page.get_by_label("Username").fill(DEMO_USER)
    page.get_by_label("Password").fill("wrong-password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_test_id("login-message")).to_have_text("Wrong username or password.")
    page.get_by_label("Password").fill(DEMO_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_test_id("connection-status")).to_have_text("Live")
    expect(page.get_by_test_id("username")).to_have_text(DEMO_USER)

    row = page.locator(f'[data-testid="position-row"][data-position-id="{position_id}"]')
    expect(row.get_by_test_id("pos-state")).to_have_text("OPEN")
    expect(row.get_by_test_id("pos-symbol")).to_have_text(SYMBOL)
    expect(row.get_by_test_id("pos-side")).to_have_text("BUY")
    price = row.get_by_test_id("pos-price")
    expect(price).to_have_text(re.compile(r"^\d+\.\d+$"))
    first = price.text_content()
    expect(price).not_to_have_text(first or "")  # it follows the replayed feed
    expect(row.get_by_test_id("pos-pl")).to_have_text(re.compile(r"\d\.\d\d"))
    expect(row.get_by_test_id("pos-opened")).to_have_text(re.compile(r"\d\d:\d\d:\d\d"))
    expect(row.get_by_test_id("pos-ticket")).to_have_text(re.compile(r"^\d+$"))
    # The demo's paper terminal charges commission at the open and reports it; a position held
    # less than a day has no swap yet (0.00, not a dash: the terminal reported it).
    expect(row.get_by_test_id("pos-commission")).to_have_text(
        re.compile("^\u2212\\d+\\.\\d\\d$")  # a cost: the page's minus sign
    )
    expect(row.get_by_test_id("pos-swap")).to_have_text("0.00")
    edit = row.locator(f'button.edit-position[data-position-id="{position_id}"]')
    expect(edit).to_have_count(1)  # the hook position_edit.js binds
    # The candle chart marks the entry and the SL/TP of the open position.
    expect(page.get_by_test_id("candles-canvas")).to_have_attribute(
        "aria-label",
        re.compile(
            rf"^{SYMBOL} candles: [1-9]\d* candles .* [1-9]\d* entries, \d+ exits, "
            r"1 stop-loss lines, 1 take-profit lines\.$"
        ),
    )
    # Drawing the chart's axis leaves the symbol's digits alone (3 for the replayed gold).
    expect(row.get_by_test_id("pos-open")).to_have_text(re.compile(r"^\d+\.\d{3}$"))
    shoot(page, "1-open-position")
    # Closing by hand takes two clicks; the answer is the REST contract's 202 (stubbed in the
    # browser, so the position stays open for the breach below).
    page.route(
        re.compile(r".*/api/v1/positions/[^/]+/close$"),
        lambda route: route.fulfill(status=202, json={}),
    )
    close = row.get_by_test_id("pos-close")
    close.click()
    expect(close).to_have_text("Confirm close")
    close.click()
    expect(row.get_by_test_id("pos-action-note")).to_have_text("Close requested")
    ticker = page.locator(f'[data-testid="price"][data-symbol="{SYMBOL}"]')
    expect(ticker.get_by_test_id("price-bid")).to_have_text(re.compile(r"^\d+\.\d+$"))
    device = page.locator(f'[data-testid="device-row"][data-device-id="{DEMO_DEVICE}"]')
    expect(device).to_have_attribute("data-connected", "true")
    balance = page.get_by_test_id("account-balance")
    expect(balance).to_have_text(re.compile(r"\d"))
    seen["balance_before"] = balance.text_content()
    # Whatever the signals API answers, the panel must say something definite.
    expect(page.get_by_test_id("signals-status")).not_to_have_text("Loading…")

    # Dropped as a slow client: the page says so, backs off, reconnects, and is live again
    # (the log keeps every status shown, however briefly).
    status = page.get_by_test_id("connection-status")
    page.evaluate(
        """() => {
          window.statusLog = [];
          const pill = document.querySelector('[data-testid="connection-status"]');
          new MutationObserver(() => window.statusLog.push(pill.textContent))
            .observe(pill, { childList: true, characterData: true, subtree: true });
        }"""
    )
    engine_side["drop"]()
    # The pill still says Live until the close reaches the page: wait for the reconnect first.
    page.wait_for_function(
        "() => window.statusLog.some(text => text.startsWith('Reconnecting'))", timeout=STEP_MS
    )
    expect(status).to_have_text("Live")
    seen["status_log"] = page.evaluate("() => window.statusLog")
    expect(page.get_by_test_id("stale-banner")).to_be_hidden()
    expect(row.get_by_test_id("pos-state")).to_have_text("OPEN")

    engine_side["breach"]()
    closed = page.locator(f'[data-testid="closed-row"][data-position-id="{position_id}"]')
    expect(closed.get_by_test_id("pos-state")).to_have_text("CLOSED")
    expect(closed.get_by_test_id("pos-reason")).not_to_have_text("—")
    expect(row).to_have_count(0)
    seen["reason"] = closed.get_by_test_id("pos-reason").text_content()
    seen["closed_pl"] = closed.get_by_test_id("pos-pl").text_content()
    # The realised loss reaches the account card from the stream, without a reload (the
    # device's next account report).
    expect(balance).not_to_have_text(seen["balance_before"] or "")
    # The card follows the engine's balance, which may still move (the paper terminal charges
    # commission on each deal, the overridden approval's open included): the card must come
    # to show the engine's balance of the moment.
    for _ in range(10):
        live = engine_side["balance"]()
        try:
            expect(balance).to_contain_text(f"{live:,.2f}", timeout=STEP_MS // 5)
        except AssertionError:
            continue
        break
    seen["balance_engine"] = live
    seen["balance_after"] = balance.text_content()
    seen["balance_asof"] = page.get_by_test_id("account-asof").text_content()
    shoot(page, "2-closed-account-live")
    _history_and_export(page, expect, position_id, seen)
    expect(page.get_by_test_id("positions-empty")).to_be_visible()
    # The close reaches the server's equity curve, which the page asks for again after a close
    # and draws; its drawdown reads with the guard's sign.
    expect(page.get_by_test_id("equity-canvas")).to_have_attribute(
        "aria-label", re.compile(r"curve: from .* \d+ points")
    )
    expect(page.get_by_test_id("equity-source")).to_have_text(
        "Equity from the server's analytics: the balance after each closed trade."
    )
    expect(page.get_by_test_id("analytics-drawdown")).to_have_text(re.compile(r"^\d+\.\d\d %$"))


def _history_and_export(page: Any, expect: Any, position_id: str, seen: dict[str, Any]) -> None:
    """The history filtered by symbol and date, and exported as CSV."""
    closed = page.locator(f'[data-testid="closed-row"][data-position-id="{position_id}"]')
    page.get_by_test_id("history-symbol").fill("EURUSD")
    page.get_by_test_id("history-apply").click()
    expect(closed).to_have_count(0)
    expect(page.get_by_test_id("closed-empty")).to_be_visible()
    page.get_by_test_id("history-symbol").fill(SYMBOL)
    page.get_by_test_id("history-from").fill("2000-01-01")
    page.get_by_test_id("history-to").fill("2000-01-02")
    page.get_by_test_id("history-apply").click()
    expect(closed).to_have_count(0)  # closed today, not in 2000
    page.get_by_test_id("history-to").fill("")
    page.get_by_test_id("history-apply").click()
    expect(closed).to_have_count(1)
    shoot(page, "3-history-filtered")
    with page.expect_download(timeout=STEP_MS) as download:
        page.get_by_test_id("history-export").click()
    seen["csv_name"] = download.value.suggested_filename
    seen["csv"] = Path(download.value.path()).read_text(encoding="utf-8")
    expect(page.get_by_test_id("history-status")).to_contain_text("Exported")
    page.get_by_test_id("history-clear").click()


def _narrow(page: Any, expect: Any, seen: dict[str, Any]) -> None:
    """At 390 px (a phone): the open positions' P&L and Close are on screen, the page does not
    scroll sideways."""
    page.set_viewport_size({"width": 390, "height": 844})
    row = page.get_by_test_id("position-row").first
    expect(row).to_be_visible()
    for testid in ("pos-pl", "pos-close", "pos-symbol"):
        part = row.get_by_test_id(testid)
        part.scroll_into_view_if_needed()
        expect(part).to_be_visible()
        box = part.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, (testid, box)
    seen["narrow_scroll_width"] = page.evaluate("() => document.documentElement.scrollWidth")
    shoot(page, "5-narrow-390")
    page.set_viewport_size({"width": 1400, "height": 1100})


def _signals_and_logout(
    page: Any,
    expect: Any,
    position_id: str,
    engine_side: dict[str, Callable[[], None]],
    seen: dict[str, Any],
) -> None:
    """Two real signals, pending for the demo user: one approved from the page (a real position
    opens), one refused by the engine (its entry is too far from the market); then a reload
    and a log-out."""
    engine_side["signals"]()
    page.reload()  # the session survives a reload (sessionStorage), the stream reconnects
    expect(page.get_by_test_id("connection-status")).to_have_text("Live")
    expect(
        page.locator(f'[data-testid="closed-row"][data-position-id="{position_id}"]')
    ).to_be_visible()
    rows = page.get_by_test_id("signal-row")
    expect(rows).to_have_count(2)
    refused = page.locator('[data-testid="signal-row"][data-signal-key="e2e/sig-refused/1"]')
    expect(refused.get_by_test_id("sig-comment")).to_have_text("<b>not bold</b>")  # as text
    refused.get_by_test_id("signal-approve").click()
    message = page.get_by_test_id("signals-message")
    expect(message).to_contain_text("price_deviation")
    expect(message).to_have_attribute("data-kind", "bad")
    ok = page.locator('[data-testid="signal-row"][data-signal-key="e2e/sig-ok/1"]')
    # A lot size off the instrument's step is refused and nothing is recorded ...
    ok.get_by_test_id("sig-volume").fill("0.375")
    ok.get_by_test_id("signal-approve").click()
    expect(message).to_contain_text("sizing_refused")
    expect(message).to_contain_text("in steps of 0.01")
    # ... and the approval goes through with a valid one.
    ok.get_by_test_id("sig-volume").fill(str(OVERRIDE_LOTS))
    shoot(page, "4-approval-lot-override")
    ok.get_by_test_id("signal-approve").click()
    expect(message).to_contain_text(re.compile(r"position \S+ is opening"))
    seen["approved_message"] = message.text_content()
    expect(rows).to_have_count(1)
    opened = page.get_by_test_id("position-row")
    expect(opened).to_have_count(1)
    expect(opened.get_by_test_id("pos-volume")).to_have_text(str(OVERRIDE_LOTS))
    expect(opened.get_by_test_id("pos-state")).to_have_text("OPEN")
    _narrow(page, expect, seen)

    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("login-form")).to_be_visible()
    expect(page.get_by_test_id("connection-status")).to_have_text("Offline")
    seen["token_left"] = page.evaluate("() => sessionStorage.length")


def _refused_token(page: Any, expect: Any) -> None:
    """A token the server no longer accepts (here: tampered with) sends the page back to the
    login form instead of reconnecting forever."""
    page.get_by_label("Username").fill(DEMO_USER)
    page.get_by_label("Password").fill(DEMO_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_test_id("connection-status")).to_have_text("Live")
    page.evaluate(
        """() => {
          const session = JSON.parse(sessionStorage.getItem("tripwire.session"));
          session.token = session.token.slice(0, -4) + "AAAA";
          sessionStorage.setItem("tripwire.session", JSON.stringify(session));
        }"""
    )
    page.reload()
    expect(page.get_by_test_id("login-form")).to_be_visible()
    expect(page.get_by_test_id("login-message")).to_contain_text("Log in again")
    expect(page.get_by_test_id("connection-status")).to_have_text("Offline")


async def post_signals(engine: Engine, user_id: str, sl: float) -> None:
    """The two signals the page decides on, recorded as the signals endpoint records them, at
    the market of this moment: one the engine accepts, one 10 dollars away (the demo user may
    deviate 30 pips, 3 dollars of gold: refused with ``price_deviation``)."""
    with trio.fail_after(30):  # the replayed market, not the breach quote of a moment ago
        _, ask, _ = await wait_until(
            lambda: (q := engine.node.prices.get(SYMBOL)) and q[0] > sl and q
        )
    now = engine.node.clock.now_ms()
    for signal_id, entry, comment in (
        ("sig-ok", ask, "approve me"),
        ("sig-refused", round(ask + 10.0, 2), "<b>not bold</b>"),
    ):
        signal = Signal(
            strategy_id="e2e",
            signal_id=signal_id,
            version=1,
            audience=[user_id],
            symbol=SYMBOL,
            side=Side.BUY,
            entry=entry,
            sl=round(entry - SL_DISTANCE, 2),
            tp=round(entry + 2 * SL_DISTANCE, 2),
            volume=0.1,
            created_at_ms=now,
            expires_at_ms=now + 15 * 60_000,
            comment=comment,
        )
        await accept_signal(engine.ctx, signal)


async def test_dashboard_shows_a_breach_closing_the_position(
    chromium: Path, demo_engine: Engine, tmp_path: Path
) -> None:
    engine = demo_engine
    user_id = engine.ctx.registry.by_name[DEMO_USER]
    position_id, sl = await open_position(engine, user_id)

    engine_side = {
        "drop": lambda: trio.from_thread.run(drop_clients, engine, user_id),
        "breach": lambda: trio.from_thread.run(breach, engine, sl),
        "signals": lambda: trio.from_thread.run(post_signals, engine, user_id, sl),
        "balance": lambda: trio.from_thread.run_sync(
            lambda: engine.node.users[user_id].core.balance
        ),
    }
    SHOTS.mkdir(exist_ok=True)
    seen = await trio.to_thread.run_sync(
        drive_dashboard, engine.base_url, chromium, position_id, engine_side, tmp_path
    )

    closed = engine.node.users[user_id].core.recent_closed[position_id]
    assert closed.state is PositionState.CLOSED
    assert seen["reason"] == closed.close_reason and closed.close_reason
    assert any(text.startswith("Reconnecting") for text in seen["status_log"]), seen
    assert seen["page_errors"] == [] and seen["csp"] == []
    assert seen["token_left"] == 0
    # The approval the page made is the engine's: recorded, and its position is on its way.
    core = engine.node.users[user_id].core
    approved = core.approvals[decision_key(signal_key("e2e", "sig-ok", 1))]
    assert approved.position_id and approved.position_id in seen["approved_message"]
    assert decision_key(signal_key("e2e", "sig-refused", 1)) not in core.approvals
    # The lot typed at approval is the position's.
    assert core.positions[approved.position_id].volume == OVERRIDE_LOTS
    # The account card showed the engine's balance after the close (not the login snapshot's).
    assert seen["balance_before"] != seen["balance_after"]
    engine_balance = seen["balance_engine"]
    assert engine_balance is not None and f"{engine_balance:,.2f}" in seen["balance_after"]
    # The CSV is the history, filtered by the page's symbol.
    (header, *lines) = seen["csv"].splitlines()
    assert header.startswith("id,symbol,side,volume,state")
    assert any(line.startswith(f"{position_id},{SYMBOL},buy,") for line in lines), seen["csv"]
    assert seen["csv_name"].startswith("positions-") and seen["csv_name"].endswith(".csv")
    assert seen["narrow_scroll_width"] <= 390
    assert sorted(p.name for p in SHOTS.glob("[0-9]-*.png")) == [
        "1-open-position.png",
        "2-closed-account-live.png",
        "3-history-filtered.png",
        "4-approval-lot-override.png",
        "5-narrow-390.png",
    ]


def run_module_checks(base_url: str, chromium: Path) -> list[str]:
    from playwright.sync_api import sync_playwright

    script = (Path(__file__).parent / "dashboard_units.js").read_text(encoding="utf-8")
    with sync_playwright() as pw:
        browser = launch(pw, chromium)
        try:
            page = browser.new_page()
            page.set_default_timeout(STEP_MS)
            page.goto(base_url + "/")
            failed: list[str] = page.evaluate(script)
        finally:
            browser.close()
    return failed


async def test_the_page_modules_hold_up_against_malformed_messages(
    chromium: Path, static_site: str
) -> None:
    """The page's modules, unit by unit, in the browser (dashboard_units.js)."""
    failed = await trio.to_thread.run_sync(run_module_checks, static_site, chromium)
    assert failed == []


FIRE_SPEED = 5.0
"""The replay's speed in the first-minute test: five times real time, so the first minute of
replayed market is twelve seconds of the test's."""
FIRST_MINUTE_S = 60.0
FIRED_REASON = re.compile(r"^(broker_)?(sl|tp)$")


@pytest.fixture
async def make_run_engine(nursery: trio.Nursery, pg_dsn: str, tmp_path: Path) -> Callable[[], Any]:
    """Starts the engine as ``make run`` does (demo user, paper device, demo strategy, the
    replay from its default start) when called, with the replay at :data:`FIRE_SPEED`; returns
    ``(engine, the engine clock's ms at its start)``. The test opens its browser first, so the
    replayed minute is not spent launching Chromium."""
    settings = engine_settings(
        tmp_path,
        pg_dsn,
        feed="replay",
        replay_speed=FIRE_SPEED,
        paper_device=True,
        demo_strategy=True,
    )

    async def start() -> tuple[Engine, int]:
        ctx = (await nursery.start(run, settings)).gateway
        engine = Engine(ctx, f"http://127.0.0.1:{settings.port}", "")
        return engine, ctx.clock.now_ms()

    return start


def watch_first_minute(chromium: Path, start: Callable[[], tuple[str, float]]) -> dict[str, Any]:
    """The browser side: Chromium up first, then the engine; log in through the form, see the
    demo's position open, then closed by its SL or TP, all before the replayed minute is out
    (each wait bounded by what is left of :data:`FIRST_MINUTE_S` at the replay's speed)."""
    from playwright.sync_api import expect, sync_playwright

    seen: dict[str, Any] = {"page_errors": []}
    with sync_playwright() as pw:
        browser = launch(pw, chromium)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.on("pageerror", lambda error: seen["page_errors"].append(str(error)))
            base_url, started = start()
            deadline = started + FIRST_MINUTE_S / FIRE_SPEED

            def left_ms() -> float:
                return max(1.0, (deadline - time.monotonic()) * 1000)

            try:
                page.goto(base_url + "/", timeout=left_ms())
                page.get_by_label("Username").fill(DEMO_USER, timeout=left_ms())
                page.get_by_label("Password").fill(DEMO_PASSWORD, timeout=left_ms())
                page.get_by_role("button", name="Log in").click(timeout=left_ms())
                expect(page.get_by_test_id("connection-status")).to_have_text(
                    "Live", timeout=left_ms()
                )
                row = page.get_by_test_id("position-row").first
                expect(row.get_by_test_id("pos-state")).to_have_text("OPEN", timeout=left_ms())
                seen["position_id"] = row.get_attribute("data-position-id", timeout=left_ms())
                shoot(page, "fire-1-demo-position-open")
                closed = page.locator(
                    f'[data-testid="closed-row"][data-position-id="{seen["position_id"]}"]'
                )
                expect(closed.get_by_test_id("pos-reason")).to_have_text(
                    FIRED_REASON, timeout=left_ms()
                )
                expect(closed.get_by_test_id("pos-state")).to_have_text("CLOSED")
                seen["reason"] = closed.get_by_test_id("pos-reason").text_content()
                seen["pl"] = closed.get_by_test_id("pos-pl").text_content()
                seen["seen_closed_in_s"] = time.monotonic() - started
                shoot(page, "fire-2-demo-position-fired")
            except Exception:
                shoot(page, "fire-failure")
                raise
        finally:
            browser.close()
    return seen


async def test_dashboard_shows_the_demo_fire_within_the_first_minute(
    chromium: Path, make_run_engine: Callable[[], Any]
) -> None:
    """A newcomer's first minute of ``make run``, in Chromium: the demo's own position opens,
    and its SL or TP fires on the replayed payrolls move, inside the first minute of replayed
    market (here twelve seconds at five times real speed)."""
    started: dict[str, Any] = {}

    async def start() -> tuple[str, float]:
        engine, clock_ms = await make_run_engine()
        started.update(engine=engine, clock_ms=clock_ms)
        return engine.base_url, time.monotonic()  # the browser thread's clock

    SHOTS.mkdir(exist_ok=True)
    seen = await trio.to_thread.run_sync(
        watch_first_minute, chromium, lambda: trio.from_thread.run(start)
    )
    engine: Engine = started["engine"]
    user_id = engine.ctx.registry.by_name[DEMO_USER]
    position = engine.node.users[user_id].core.recent_closed[seen["position_id"]]
    assert position.state is PositionState.CLOSED and position.close_reason == seen["reason"]
    assert position.close_time_ms is not None and position.open_time_ms is not None
    # In replayed time: the close came within the first minute of the replay.
    replayed_ms = (position.close_time_ms - started["clock_ms"]) * FIRE_SPEED
    assert 0 < replayed_ms <= FIRST_MINUTE_S * 1000, replayed_ms
    assert seen["page_errors"] == []
    assert (SHOTS / "fire-1-demo-position-open.png").exists()
    assert (SHOTS / "fire-2-demo-position-fired.png").exists()

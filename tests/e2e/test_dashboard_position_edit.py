"""The dashboard's "Edit" form of an open position, in headless Chromium against the engine.

The positions table (render.js) puts an "Edit" button with class ``edit-position`` and
``data-position-id`` on each open row; position_edit.js listens for those clicks on the page.
This test clicks such a button (the row's own when it is there, else one added with the same
contract), sees the form filled from the server, is refused a stop on the wrong side with the
server's message, then saves a new SL and a trailing stop: the PATCH reaches the engine, which
holds the new levels and rule. Browser driving as in ``test_dashboard`` (sync Playwright in a
worker thread, a bounded timeout per step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from engine.positions import TrailingRule
from tests.e2e.helpers import GOLD_ASK, decision_url, make_signal, paper_device, post_signal, quote
from tests.e2e.test_dashboard import STEP_MS, chromium, launch  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PASSWORD = "password-0123"


def _drive(base_url: str, chromium_path: Path, position_id: str, shots: Path) -> dict[str, Any]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=STEP_MS)
    seen: dict[str, Any] = {"page_errors": [], "patches": []}
    with sync_playwright() as pw:
        browser = launch(pw, chromium_path)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(STEP_MS)
            page.on("pageerror", lambda error: seen["page_errors"].append(str(error)))
            page.on(
                "request",
                lambda r: r.method == "PATCH" and seen["patches"].append(r.post_data_json),
            )
            try:
                page.goto(base_url + "/")
                page.get_by_label("Username").fill("alice")
                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_role("button", name="Log in").click()
                expect(page.get_by_test_id("connection-status")).to_have_text("Live")
                selector = f'.edit-position[data-position-id="{position_id}"]'
                if page.locator(selector).count() == 0:  # a table without the button yet
                    page.evaluate(
                        """id => { const b = document.createElement("button");
                        b.type = "button"; b.className = "edit-position";
                        b.dataset.positionId = id; b.textContent = "Edit";
                        document.querySelector("main").append(b); }""",
                        position_id,
                    )
                page.locator(selector).first.click()
                dialog = page.get_by_test_id("position-edit")
                expect(dialog).to_be_visible()
                sl = page.get_by_test_id("position-edit-sl")
                expect(sl).to_have_value(str(GOLD_ASK - 5))
                expect(page.get_by_test_id("position-edit-tp")).to_have_value(str(GOLD_ASK + 10))

                sl.fill(str(GOLD_ASK + 50))  # above a buy's price: refused by the server
                page.get_by_test_id("position-edit-save").click()
                message = page.get_by_test_id("position-edit-message")
                expect(message).to_contain_text("wrong side")
                expect(dialog).to_be_visible()

                sl.fill(str(GOLD_ASK - 3))
                page.get_by_test_id("position-edit-trailing-distance").fill("2.5")
                page.get_by_test_id("position-edit-trailing-step").fill("0.5")
                page.get_by_test_id("position-edit-save").click()
                expect(dialog).to_be_hidden()
                page.screenshot(path=str(shots / "position-edit.png"), full_page=True)
            except Exception:
                page.screenshot(path=str(shots / "position-edit-failure.png"), full_page=True)
                raise
        finally:
            browser.close()
    return seen


async def test_the_edit_form_changes_sl_and_trailing(
    engine,
    nursery: trio.Nursery,
    chromium: Path,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    alice, token = await engine.user("alice", PASSWORD)
    await paper_device(engine, nursery, alice)
    quote(engine)
    signal = make_signal([alice], signal_id="edit-1")
    async with engine.client() as strategy:
        assert (await post_signal(strategy, signal)).status_code == 201
    async with engine.client(token) as http:
        decided = await http.post(decision_url(signal), json={"decision": "approve"})
        assert decided.status_code == 201, decided.text
    position_id = decided.json()["approval"]["position_id"]
    core = engine.node.users[alice].core
    with trio.fail_after(10):
        while core.positions[position_id].state.value != "open":
            await trio.sleep(0.05)

    seen = await trio.to_thread.run_sync(_drive, engine.base_url, chromium, position_id, tmp_path)
    assert seen["page_errors"] == []
    # Only what changed was sent: the refused SL, then the SL and the trailing stop.
    assert seen["patches"] == [
        {"sl": GOLD_ASK + 50},
        {"sl": GOLD_ASK - 3, "trailing": {"distance": 2.5, "step": 0.5}},
    ]
    p = core.positions[position_id]
    instrument = engine.node.instruments["XAUUSD"]
    assert p.sl == instrument.to_points(GOLD_ASK - 3)
    assert p.trailing == TrailingRule(
        distance=instrument.to_points(2.5), step=instrument.to_points(0.5)
    )

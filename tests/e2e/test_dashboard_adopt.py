"""The dashboard's "Adopt" button of a position found on the terminal, in headless Chromium
against the engine.

A trade made by hand in the paper terminal is listed read-only: its row offers neither Close
nor Edit, only Adopt. A click adopts it over REST; the row then offers Close and Edit, and the
engine watches its SL/TP. Browser driving as in ``test_dashboard``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from protocol.common import Side
from tests.e2e.helpers import GOLD_BID, paper_device, quote, wait_for
from tests.e2e.test_dashboard import STEP_MS, chromium, launch  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PASSWORD = "password-0123"


def _drive(base_url: str, chromium_path: Path, position_id: str, shots: Path) -> dict[str, Any]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=STEP_MS)
    seen: dict[str, Any] = {"page_errors": [], "adopts": 0}

    def count(request: Any) -> None:
        if request.method == "POST" and request.url.endswith("/adopt"):
            seen["adopts"] += 1

    with sync_playwright() as pw:
        browser = launch(pw, chromium_path)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(STEP_MS)
            page.on("pageerror", lambda error: seen["page_errors"].append(str(error)))
            page.on("request", count)
            try:
                page.goto(base_url + "/")
                page.get_by_label("Username").fill("alice")
                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_role("button", name="Log in").click()
                expect(page.get_by_test_id("connection-status")).to_have_text("Live")
                row = page.locator(
                    f'[data-testid="position-row"][data-position-id="{position_id}"]'
                )
                expect(row).to_have_attribute("data-adopted", "false")
                expect(row.get_by_test_id("pos-reason")).to_contain_text("not adopted")
                expect(row.get_by_test_id("pos-close")).to_be_hidden()
                expect(row.get_by_test_id("pos-edit")).to_be_hidden()
                adopt = row.get_by_test_id("pos-adopt")
                expect(adopt).to_be_visible()
                adopt.click()
                expect(row).to_have_attribute("data-adopted", "true")
                expect(adopt).to_be_hidden()
                expect(row.get_by_test_id("pos-close")).to_be_visible()
                expect(row.get_by_test_id("pos-edit")).to_be_visible()
                page.screenshot(path=str(shots / "position-adopted.png"), full_page=True)
            except Exception:
                page.screenshot(path=str(shots / "position-adopt-failure.png"), full_page=True)
                raise
        finally:
            browser.close()
    return seen


async def test_the_adopt_button_adopts_an_external_position(
    engine,
    nursery: trio.Nursery,
    chromium: Path,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    alice, _ = await engine.user("alice", PASSWORD)
    _, terminal = await paper_device(engine, nursery, alice)
    quote(engine)
    await wait_for(lambda: engine.node.prices.get("XAUUSD"))
    held = terminal.open_by_hand("XAUUSD", Side.BUY, 0.1, sl=GOLD_BID - 5)
    actor = engine.node.users[alice]
    [found] = await wait_for(actor.live_positions)
    assert found.ticket == held.ticket and not found.adopted

    seen = await trio.to_thread.run_sync(_drive, engine.base_url, chromium, found.id, tmp_path)
    assert seen["page_errors"] == [] and seen["adopts"] == 1
    [adopted] = actor.live_positions()
    assert adopted.id == found.id and adopted.adopted
    await wait_for(lambda: len(engine.node.symbols["XAUUSD"].core) == 1)  # now watched

"""What the trader tables read: the lot override on an approval, the history filtered by
symbol and date, the CSV export (streamed through the history's cursor paging), and the
commission and swap a terminal reports over ``/ws/device``, shown by REST, ``/ws/client`` and
the export."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url

from gateway.rest import exports
from gateway.runtime import run
from protocol.client import PositionDelta, PositionView, Snapshot, Subscribe
from protocol.codec import client_client_codec
from protocol.common import Side
from sim.ea import SimulatedEA
from sim.paper_terminal import PaperConfig, PaperTerminal
from tests.e2e.conftest import Engine, engine_settings
from tests.e2e.helpers import (
    GOLD_ASK,
    decision_url,
    make_signal,
    paper_device,
    post_signal,
    quote,
    wait_for,
)

EUR_BID, EUR_ASK = 1.1, 1.1002
CLIENT = client_client_codec("json")


async def _engine(nursery: trio.Nursery, pg_dsn: str, tmp_path: Path, **overrides: Any) -> Engine:
    settings = engine_settings(tmp_path, pg_dsn, **overrides)
    ctx = (await nursery.start(run, settings)).gateway
    return Engine(ctx, f"http://127.0.0.1:{settings.port}", f"ws://127.0.0.1:{settings.port}")


def _quotes(engine: Engine) -> None:
    quote(engine)
    quote(engine, bid=EUR_BID, ask=EUR_ASK, symbol="EURUSD")


async def test_an_approval_may_override_the_lot_size(
    nursery: trio.Nursery, pg_dsn: str, tmp_path: Path
) -> None:
    engine = await _engine(nursery, pg_dsn, tmp_path)
    alice, token = await engine.user("alice")
    await paper_device(engine, nursery, alice)
    _quotes(engine)
    signal = make_signal([alice], volume=0.1)
    async with engine.client() as strategy:
        assert (await post_signal(strategy, signal)).status_code == 201
    async with engine.client(token) as http:
        url = decision_url(signal)
        for volume, code in [(0.375, "sizing_refused"), (100.01, "sizing_refused")]:
            refused = await http.post(url, json={"decision": "approve", "volume": volume})
            assert refused.status_code == 422, refused.text
            body = refused.json()
            assert body["code"] == code
            assert body["details"]["step"] == 0.01 and body["details"]["max"] == 100.0
        for bad in [0, -1, "lots"]:
            malformed = await http.post(url, json={"decision": "approve", "volume": bad})
            assert malformed.status_code == 400, (bad, malformed.text)
        rejecting = await http.post(url, json={"decision": "reject", "volume": 0.2})
        assert rejecting.status_code == 400 and rejecting.json()["code"] == "malformed"
        # Nothing was recorded by the refusals: the approval goes through with a valid lot.
        approved = await http.post(url, json={"decision": "approve", "volume": 0.37})
        assert approved.status_code == 201, approved.text
        position_id = approved.json()["approval"]["position_id"]

        async def opened() -> dict[str, Any] | None:
            answer = await http.get(f"/api/v1/positions/{position_id}")
            view = answer.json()
            return view if view["state"] == "open" else None

        view = await wait_for(opened)
    assert view["volume"] == 0.37  # not the signal's 0.1, not what sizing would give
    audit = await engine.ctx.db.fetchval(
        "SELECT detail->>'volume' FROM audit_log WHERE action = 'approval.approve'"
        " AND outcome = '201'"
    )
    assert audit == "0.37"


async def _open_and_close(http: Any, engine: Engine, alice: str, n: int, **signal: Any) -> str:
    made = make_signal([alice], signal_id=f"sig-{n}", **signal)
    async with engine.client() as strategy:
        assert (await post_signal(strategy, made)).status_code == 201
    approved = await http.post(decision_url(made), json={"decision": "approve"})
    assert approved.status_code == 201, approved.text
    position_id: str = approved.json()["approval"]["position_id"]

    async def state() -> str:
        return str((await http.get(f"/api/v1/positions/{position_id}")).json()["state"])

    await wait_for(lambda: _is(state(), "open"))
    assert (await http.post(f"/api/v1/positions/{position_id}/close")).status_code == 202
    await wait_for(lambda: _is(state(), "closed"))
    return position_id


async def _is(value: Any, expected: str) -> bool:
    return bool(await value == expected)


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


async def test_history_filters_and_csv_export(
    nursery: trio.Nursery, pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = await _engine(nursery, pg_dsn, tmp_path, csv_export_max_rows=3)
    alice, token = await engine.user("alice")
    _, bob_token = await engine.user("bob")
    await paper_device(engine, nursery, alice)
    _quotes(engine)
    eur = dict(symbol="EURUSD", entry=EUR_ASK, sl=EUR_ASK - 0.005, tp=EUR_ASK + 0.01)
    async with engine.client(token) as http:
        ids = [
            await _open_and_close(http, engine, alice, 1),
            await _open_and_close(http, engine, alice, 2, **eur),
            await _open_and_close(http, engine, alice, 3, side=Side.BUY, entry=GOLD_ASK),
            await _open_and_close(http, engine, alice, 4),
        ]

        async def history(**params: Any) -> list[dict[str, Any]]:
            answer = await http.get("/api/v1/positions", params={"state": "closed", **params})
            assert answer.status_code == 200, answer.text
            return list(answer.json()["positions"])

        everything = await wait_for(lambda: _count(history(), 4))
        assert [p["id"] for p in everything] == ids[::-1]  # newest first
        ends = [p["close_time_ms"] for p in everything]
        assert [p["id"] for p in await history(symbol="EURUSD")] == [ids[1]]
        since = await history(from_ms=ends[1])  # the two newest
        assert [p["id"] for p in since] == ids[:1:-1]
        window = await history(from_ms=ends[2], to_ms=ends[0])  # to_ms is exclusive
        assert [p["id"] for p in window] == [ids[2], ids[1]]

        async def export(client: Any = http, **params: Any) -> Any:
            return await client.get("/api/v1/positions.csv", params=params)

        monkeypatch.setattr(exports, "PAGE", 1)  # every history page one row: the cursor works
        xau = await export(symbol="XAUUSD")
        assert xau.status_code == 200 and xau.headers["content-type"].startswith("text/csv")
        assert "attachment" in xau.headers["content-disposition"]
        assert xau.text.splitlines()[0] == ",".join(exports.COLUMNS)
        rows = _rows(xau.text)
        assert [r["id"] for r in rows] == [ids[3], ids[2], ids[0]]
        assert all(r["state"] == "closed" and r["close_time"].endswith("+00:00") for r in rows)
        by_id = {p["id"]: p for p in everything}
        for row in rows:
            p = by_id[row["id"]]
            assert float(row["pl"]) == p["pl"] and int(row["ticket"]) == p["ticket"]
            assert float(row["volume"]) == p["volume"] and row["close_reason"] == "manual"
            # The paper account's commission (7.00 a lot round turn, each half rounded to the
            # cent on its deal) is in the history too.
            assert p["commission"] == -2 * round(3.5 * p["volume"], 2) and p["swap"] == 0.0
            assert float(row["commission"]) == p["commission"] and float(row["swap"]) == 0.0
            assert float(row["net_pl"]) == p["net_pl"] == round(p["pl"] + p["commission"], 2)
        windowed = _rows((await export(from_ms=ends[2], to_ms=ends[0])).text)
        assert [r["id"] for r in windowed] == [ids[2], ids[1]]

        # Past csv_export_max_rows (3 here) the export says it was cut, as its last line.
        cut = (await export()).text.splitlines()
        assert len(cut) == 1 + 3 + 1 and cut[-1].startswith("# truncated at 3 rows")
        assert [line.split(",")[0] for line in cut[1:4]] == ids[:0:-1]

        assert (await export(from_ms=-1)).status_code == 400
        assert (await export(user_id="u-nobody")).status_code == 403
    async with engine.client(bob_token) as as_bob:
        assert _rows((await export(as_bob)).text) == []  # nobody else's positions
    async with engine.client() as anonymous:
        assert (await export(anonymous)).status_code == 401


async def _count(value: Any, n: int) -> Any:
    found = await value
    return found if len(found) == n else None


def test_csv_cells_are_never_formulas() -> None:
    view = PositionView(
        id="p1",
        symbol="XAUUSD",
        side=Side.SELL,
        volume=0.1,
        state="closed",
        close_reason="=HYPERLINK(1)",
        signal_id="@SUM(1)/x/1",
        pl=-6.87,
    )
    (row,) = exports.csv_rows([view])
    named = dict(zip(exports.COLUMNS, row, strict=True))
    assert named["close_reason"] == "'=HYPERLINK(1)" and named["signal_id"] == "'@SUM(1)/x/1"
    assert named["pl"] == "-6.87" and named["side"] == "sell"
    assert named["commission"] == named["swap"] == named["net_pl"] == ""  # not reported


async def _view_where(ws: Any, position_id: str, check: Any) -> PositionView:
    """The next ``/ws/client`` view of ``position_id`` passing ``check`` (others skipped)."""
    while True:
        message = CLIENT.decode(await ws.get_message())
        if isinstance(message, PositionDelta) and message.position.id == position_id:
            if check(message.position):
                return message.position
        elif isinstance(message, Snapshot):
            for view in message.positions:
                if view.id == position_id and check(view):
                    return view


async def test_commission_and_swap_reported_by_the_ea_reach_rest_the_stream_and_the_export(
    nursery: trio.Nursery, pg_dsn: str, tmp_path: Path
) -> None:
    """A simulated EA over a real socket charges the paper account's commission at the open
    (its ack carries it) and a swap each period held (here 2 s, not a day): its positions
    snapshot at the rollover carries the swap. REST, the client stream and the CSV show both,
    and the close's totals stay on the closed position, with ``net_pl`` beside ``pl``."""
    engine = await _engine(nursery, pg_dsn, tmp_path, device_heartbeat_s=1)
    alice, token = await engine.user("alice")
    record, secret = await engine.ctx.registry.register_device(alice, "MT5 demo")

    def price(symbol: str) -> tuple[float, float] | None:
        q = engine.node.prices.get(symbol)
        return None if q is None else (q[0], q[1])

    config = PaperConfig(latency_ms=1, broker_stops=False, swap_period_ms=2_000)
    terminal = PaperTerminal(engine.node.instruments, price, config)
    ea = SimulatedEA(engine.ws_url + "/ws/device", record.id, secret, terminal, encoding="json")
    await nursery.start(ea.run)
    assert ea.welcome is not None, ea.errors
    await wait_for(lambda: engine.node.users[alice].core.devices.get(record.id))
    _quotes(engine)
    signal = make_signal([alice], volume=0.2)
    url = f"{engine.ws_url}/ws/client?token={token}"
    async with (
        open_websocket_url(url, subprotocols=["tripwire.v1.json"]) as ws,
        engine.client(token) as http,
    ):
        await ws.send_message(CLIENT.encode(Subscribe(channels=["positions"])))
        async with engine.client() as strategy:
            assert (await post_signal(strategy, signal)).status_code == 201
        approved = await http.post(decision_url(signal), json={"decision": "approve"})
        assert approved.status_code == 201, approved.text
        position_id = approved.json()["approval"]["position_id"]
        with trio.fail_after(20):
            opened = await _view_where(ws, position_id, lambda v: v.state == "open")
            volume = opened.volume
            entry = -round(3.5 * volume, 2)  # half of 7.00 a lot, charged at the open
            assert (opened.commission, opened.swap) == (entry, 0.0)
            # A period later the terminal charges a day's swap (-6.00 a lot for a buy) and
            # reports its positions: the stream shows the swap without any trade.
            swapped = await _view_where(ws, position_id, lambda v: (v.swap or 0.0) < 0)
        day = -6.0 * volume
        assert swapped.commission == entry and swapped.state == "open"
        assert swapped.swap is not None and round(swapped.swap / day) * day == pytest.approx(
            swapped.swap
        )
        (held,) = terminal.positions.values()

        async def rest_view() -> dict[str, Any]:
            answer = await http.get(f"/api/v1/positions/{position_id}")
            assert answer.status_code == 200, answer.text
            return dict(answer.json())

        # REST reads the engine's figures: the terminal's (a later rollover may move both).
        async def rest_agrees() -> dict[str, Any] | None:
            view = await rest_view()
            (now_held,) = terminal.positions.values()
            return view if view["swap"] == now_held.swap and view["swap"] < 0 else None

        view = await wait_for(rest_agrees)
        assert view["commission"] == entry == held.commission
        assert view["net_pl"] == round(view["pl"] + view["commission"] + view["swap"], 2)
        live_csv = _rows((await http.get("/api/v1/positions.csv", params={"state": "open"})).text)
        assert [r["id"] for r in live_csv] == [position_id]
        assert float(live_csv[0]["commission"]) == entry and float(live_csv[0]["swap"]) < 0

        closing = await http.post(f"/api/v1/positions/{position_id}/close")
        assert closing.status_code == 202, closing.text
        with trio.fail_after(20):
            closed = await _view_where(ws, position_id, lambda v: v.state == "closed")
    # The close's ack carried the totals: both commission halves and all the swap accrued.
    assert closed.commission == round(2 * entry, 2)
    assert closed.swap is not None and closed.swap < 0
    assert closed.pl is not None
    assert closed.net_pl == round(closed.pl + closed.commission + closed.swap, 2)
    final = await wait_for(
        lambda: _closed_in_history(http_view=engine, token=token, position_id=position_id)
    )
    assert (final["commission"], final["swap"], final["net_pl"]) == (
        closed.commission,
        closed.swap,
        closed.net_pl,
    )
    assert final["pl"] == closed.pl  # the price P&L, unchanged by the costs


async def _closed_in_history(http_view: Engine, token: str, position_id: str) -> Any:
    """The closed position as the history (Postgres) has it, once it is there."""
    async with http_view.client(token) as http:
        answer = await http.get("/api/v1/positions", params={"state": "closed"})
    found = [p for p in answer.json()["positions"] if p["id"] == position_id]
    return found[0] if found else None

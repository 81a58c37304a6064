"""Fills are never lost, never invented, and opens reach a terminal that can trade (issue 20).

Over real /ws/device sockets with the simulated EA (``sim.ea``), the real runtime and a
real Postgres:

* a close the terminal executed whose ack was lost (the EA dies between ``order_send`` and the
  ack), the engine stopped and started again on the same database: the reconnect snapshot
  closes the position with its fill pending (no P&L), the EA's ``deals`` give it its fill,
  exactly once however often they are repeated;
* an ack reporting a close done without ``fill_price`` is refused with the documented error
  frame and close 1002; the position goes UNKNOWN, and the next session settles it;
* an approval with no connected device that offers the symbol answers 422 and records nothing;
  with one, the open goes to that device and no other.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import msgspec
import trio
from trio_websocket import ConnectionClosed, HandshakeError

from engine.instruments import DEFAULT_INSTRUMENTS
from gateway.runtime import run
from protocol.codec import device_client_codec
from protocol.device import Ack, CloseCommand, DeviceError, OpenCommand
from sim.ea import SimulatedEA
from sim.paper_terminal import PaperConfig, PaperTerminal
from tests.e2e.conftest import Engine, engine_settings
from tests.e2e.helpers import GOLD_ASK, GOLD_BID, decision_url, make_signal, post_signal, wait_for

DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()


class World:
    """The broker's side, which outlives every engine and EA session."""

    def __init__(self, symbols: tuple[str, ...] = ("XAUUSD",)) -> None:
        self.prices: dict[str, tuple[float, float]] = {"XAUUSD": (GOLD_BID, GOLD_ASK)}
        instruments = {s: DEFAULT_INSTRUMENTS[s] for s in symbols}
        self.terminal = PaperTerminal(
            instruments, self.prices.get, PaperConfig(broker_stops=False, suffix="m")
        )


async def _run(ea: SimulatedEA) -> None:
    with contextlib.suppress(ConnectionClosed, HandshakeError, OSError, trio.BrokenResourceError):
        await ea.run()


async def connect(
    engine: Engine,
    nursery: trio.Nursery,
    device_id: str,
    secret: str,
    terminal: PaperTerminal,
    user_id: str,
    **options: Any,
) -> SimulatedEA:
    """A simulated EA connected on a real socket, its session known to the user's actor."""
    ea = SimulatedEA(f"{engine.ws_url}/ws/device", device_id, secret, terminal, **options)
    nursery.start_soon(_run, ea)
    with trio.fail_after(15):
        await ea.connected.wait()

    def known() -> bool:
        actor = engine.node.users.get(user_id)
        info = actor.core.devices.get(device_id) if actor else None
        return bool(info and info.connected and engine.node.devices[device_id].core.ready)

    await wait_for(known)
    return ea


def quote(engine: Engine, bid: float) -> None:
    from protocol.feed import Quote

    engine.node.offer_quotes(
        [Quote(symbol="XAUUSD", bid=bid, ask=bid + 0.5, time_ms=engine.ctx.clock.now_ms())]
    )


async def open_position(
    engine: Engine, token: str, user_id: str, signal_id: str = "sig-1"
) -> tuple[int, str]:
    """Approve a gold signal: ``(HTTP status, position id or the error text)``."""
    signal = make_signal([user_id], signal_id=signal_id)
    async with engine.client() as strategy:
        assert (await post_signal(strategy, signal)).status_code == 201
    async with engine.client(token) as http:
        response = await http.post(decision_url(signal), json={"decision": "approve"})
    if response.status_code != 201:
        return response.status_code, response.text
    return 201, str(response.json()["approval"]["position_id"])


async def position(engine: Engine, token: str, pid: str) -> dict[str, Any]:
    async with engine.client(token) as http:
        response = await http.get(f"/api/v1/positions/{pid}")
    assert response.status_code == 200, response.text
    return dict(response.json())


async def realized(engine: Engine, token: str) -> float:
    async with engine.client(token) as http:
        response = await http.get("/api/v1/analytics")
    assert response.status_code == 200, response.text
    return float(response.json()["pl"]["realized"])


async def opened_and_fired(
    engine: Engine, token: str, user_id: str, world: World, ea: SimulatedEA
) -> str:
    """An approved open, filled; then a quote through its SL: the close goes out."""
    quote(engine, GOLD_BID)
    status, pid = await open_position(engine, token, user_id)
    assert status == 201, pid
    await wait_for(lambda: world.terminal.positions)
    await wait_for(lambda: engine.node.users[user_id].core.positions[pid].state.value == "open")
    world.prices["XAUUSD"] = (GOLD_BID - 6, GOLD_ASK - 6)
    quote(engine, GOLD_BID - 6)  # through the SL (5 below the entry)
    await wait_for(lambda: any(isinstance(c, CloseCommand) for c in ea.commands))
    return pid


async def test_a_fill_lost_in_a_crash_comes_back_with_the_deals_exactly_once(
    pg_dsn: str, tmp_path: Path
) -> None:
    world = World()
    async with trio.open_nursery() as outer:
        # -- the first engine: open, fire, the EA executes the close and dies before its ack.
        async with trio.open_nursery() as first:
            settings = engine_settings(tmp_path, pg_dsn)
            ctx = (await first.start(run, settings)).gateway
            engine = Engine(
                ctx, f"http://127.0.0.1:{settings.port}", f"ws://127.0.0.1:{settings.port}"
            )
            user_id, token = await engine.user("alice")
            device, secret = await ctx.registry.register_device(user_id, "mt5")
            ea = await connect(
                engine,
                outer,
                device.id,
                secret,
                world.terminal,
                user_id,
                crash_before_ack=lambda c: isinstance(c, CloseCommand),
            )
            pid = await opened_and_fired(engine, token, user_id, world, ea)
            await wait_for(lambda: ea.crashed)
            assert world.terminal.positions == {}  # the broker closed it: the ack is lost
            [fill] = world.terminal.history.values()
            # The close is durable before the engine goes (the journal's projection has it).
            db = ctx.db

            async def close_durable() -> bool:
                state = await db.fetchval("SELECT state FROM positions WHERE id = $1", pid)
                return state in ("closing", "unknown")

            await wait_for(close_durable)
            first.cancel_scope.cancel()  # the engine stops

        # -- the second engine, on the same database and state directory.
        async with trio.open_nursery() as second:
            settings = engine_settings(tmp_path, pg_dsn)
            ctx = (await second.start(run, settings)).gateway
            engine = Engine(
                ctx, f"http://127.0.0.1:{settings.port}", f"ws://127.0.0.1:{settings.port}"
            )
            token = await engine.login("alice", "password-0123")

            # An EA that sends no deals (an older one): closed, fill pending, no P&L.
            await connect(
                engine, outer, device.id, secret, world.terminal, user_id, send_deals=False
            )
            pending = await wait_for(
                lambda: (
                    (p := engine.node.users[user_id].core.recent_closed.get(pid))
                    and p.fill_pending
                    and p
                )
            )
            assert pending.state.value == "closed" and pending.realized_pl is None
            view = await position(engine, token, pid)
            assert view["state"] == "closed" and view["fill_pending"] is True
            assert view["pl"] is None and view["net_pl"] is None and view["close_price"] is None
            assert await realized(engine, token) == 0.0  # never a trade at P&L 0

            # The EA reconnects and reports its deals: the position takes its fill.
            await connect(engine, outer, device.id, secret, world.terminal, user_id)
            filled = await wait_for(
                lambda: (
                    (p := engine.node.users[user_id].core.recent_closed.get(pid))
                    and not p.fill_pending
                    and p
                )
            )
            assert filled.realized_pl == fill.profit
            assert (filled.commission, filled.swap) == (fill.commission, fill.swap)
            view = await position(engine, token, pid)
            assert view["fill_pending"] is False and view["close_price"] == fill.price
            assert view["pl"] == fill.profit and view["close_time_ms"] == fill.time_ms
            net = round(fill.profit + fill.commission + fill.swap, 2)
            await wait_for(
                lambda: ctx.db.fetchval(
                    "SELECT pl FROM positions WHERE id = $1 AND state = 'closed'", pid
                )
            )
            assert await realized(engine, token) == net

            # Every later reconnect repeats the deals: nothing changes, nothing is counted twice.
            await connect(engine, outer, device.id, secret, world.terminal, user_id)
            await trio.sleep(0.3)  # a window for the repeated deals to change something, were it to
            again = engine.node.users[user_id].core.recent_closed[pid]
            assert again == filled
            assert await realized(engine, token) == net
            await wait_for(
                lambda: ctx.db.fetchval(
                    "SELECT count(*) FROM reconciliation WHERE kind = 'fill_recovered'"
                )
            )
            assert (
                await ctx.db.fetchval(
                    "SELECT count(*) FROM reconciliation WHERE position_id = $1"
                    " AND kind = 'fill_recovered'",
                    pid,
                )
                == 1
            )
            assert world.terminal.executions == 2  # one open, one close: nothing twice
            second.cancel_scope.cancel()
        outer.cancel_scope.cancel()


class NoFillTerminal(PaperTerminal):
    """A terminal whose EA acks a done close without its fill (the bug the server refuses)."""

    strip = True

    def handle(self, message: Any, now_ms: int) -> list[Any]:
        replies = super().handle(message, now_ms)
        if self.strip and isinstance(message, CloseCommand):
            return [
                msgspec.structs.replace(r, fill_price=None) if isinstance(r, Ack) else r
                for r in replies
            ]
        return replies


def _doc_block(marker: str) -> str:
    match = re.search(r"```json \w+ " + marker + r"\n(.*?)\n```", DOC, re.DOTALL)
    assert match, marker
    return match.group(1)


async def test_a_close_acked_without_a_fill_is_refused_and_settled_by_the_next_session(
    engine: Engine, nursery: trio.Nursery
) -> None:
    user_id, token = await engine.user("bob")
    device, secret = await engine.ctx.registry.register_device(user_id, "mt5")
    prices: dict[str, tuple[float, float]] = {"XAUUSD": (GOLD_BID, GOLD_ASK)}
    terminal = NoFillTerminal(
        {"XAUUSD": DEFAULT_INSTRUMENTS["XAUUSD"]}, prices.get, PaperConfig(broker_stops=False)
    )
    world = World()
    world.prices, world.terminal = prices, terminal
    ea = await connect(engine, nursery, device.id, secret, terminal, user_id, encoding="json")
    pid = await opened_and_fired(engine, token, user_id, world, ea)
    await wait_for(lambda: ea.closed is not None)
    [error] = ea.errors
    assert isinstance(error, DeviceError)
    assert ea.closed[0] == 1002 and ea.closed[1] == "malformed"
    cid = f"{pid}.close.1"
    # The frame is the documented one, with this command's id.
    documented = device_client_codec("json").decode(
        _doc_block("fill-missing-error").replace("P7Kx2.close.1", cid)
    )
    assert error == documented
    core = engine.node.users[user_id].core
    await wait_for(lambda: core.positions.get(pid) and core.positions[pid].state.value == "unknown")
    assert (await position(engine, token, pid))["close_price"] is None

    # The next session: the snapshot proves it closed, the deals bring the fill.
    terminal.strip = False
    await connect(engine, nursery, device.id, secret, terminal, user_id)
    filled = await wait_for(lambda: (p := core.recent_closed.get(pid)) and not p.fill_pending and p)
    [fill] = terminal.history.values()
    assert filled.close_price == DEFAULT_INSTRUMENTS["XAUUSD"].to_points(fill.price)
    assert filled.realized_pl == fill.profit


async def test_opens_go_to_a_device_that_offers_the_symbol_or_are_refused(
    engine: Engine, nursery: trio.Nursery
) -> None:
    user_id, token = await engine.user("carol")
    fx, fx_secret = await engine.ctx.registry.register_device(user_id, "fx-only")
    fx_world = World(symbols=("EURUSD",))
    fx_ea = await connect(engine, nursery, fx.id, fx_secret, fx_world.terminal, user_id)
    quote(engine, GOLD_BID)
    status, text = await open_position(engine, token, user_id, "gold-1")
    assert status == 422, text
    assert "no connected device can trade XAUUSD" in text and '"refused"' in text
    # Nothing recorded: no approval, no position, no command reached any EA.
    assert await engine.ctx.db.fetchval("SELECT count(*) FROM approvals") == 0
    assert engine.node.users[user_id].core.positions == {}
    assert fx_ea.commands == []

    gold, gold_secret = await engine.ctx.registry.register_device(user_id, "gold")
    gold_world = World()
    gold_ea = await connect(engine, nursery, gold.id, gold_secret, gold_world.terminal, user_id)
    quote(engine, GOLD_BID)
    # The same decision again (nothing was recorded, so the user may decide again).
    signal = make_signal([user_id], signal_id="gold-1")
    async with engine.client(token) as http:
        response = await http.post(decision_url(signal), json={"decision": "approve"})
    assert response.status_code == 201, response.text
    await wait_for(lambda: gold_ea.commands)
    [command] = gold_ea.commands
    assert isinstance(command, OpenCommand) and command.symbol == "XAUUSDm"
    assert fx_ea.commands == []

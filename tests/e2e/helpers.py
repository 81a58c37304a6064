"""What the REST end-to-end tests share: signed signals, quotes, a paper device, waiting."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import trio

from actors.messages import AccountReport
from protocol.codec import encode_signal
from protocol.common import Side
from protocol.device import AccountState
from protocol.feed import Quote
from protocol.signals import Signal
from protocol.signing import sign_signal_header
from sim.paper_terminal import PaperConfig, PaperTerminal, run_paper_device
from tests.e2e.conftest import STRATEGY_ID, STRATEGY_SECRET, Engine

GOLD_BID, GOLD_ASK = 2000.0, 2000.5


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def make_signal(audience: list[str], signal_id: str = "sig-1", **changes: Any) -> Signal:
    """A buy of gold near :data:`GOLD_ASK`, SL 5 below and TP 10 above, valid 15 minutes."""
    created = now_ms()
    values: dict[str, Any] = dict(
        strategy_id=STRATEGY_ID,
        signal_id=signal_id,
        audience=audience,
        symbol="XAUUSD",
        side=Side.BUY,
        entry=GOLD_ASK,
        sl=GOLD_ASK - 5,
        tp=GOLD_ASK + 10,
        volume=0.1,
        created_at_ms=created,
        expires_at_ms=created + 15 * 60_000,
    )
    values.update(changes)
    return Signal(**values)


def signed_headers(
    body: bytes,
    strategy_id: str = STRATEGY_ID,
    secret: bytes = STRATEGY_SECRET,
    ts_ms: int | None = None,
) -> dict[str, str]:
    return {
        "X-Strategy-Id": strategy_id,
        "X-Signature": sign_signal_header(
            body, strategy_id, secret, now_ms() if ts_ms is None else ts_ms
        ),
        "Content-Type": "application/json",
    }


async def post_signal(http: httpx.AsyncClient, signal: Signal, **sign: Any) -> httpx.Response:
    body = encode_signal(signal)
    return await http.post("/api/v1/signals", content=body, headers=signed_headers(body, **sign))


def decision_url(signal: Signal) -> str:
    return f"/api/v1/signals/{signal.strategy_id}/{signal.signal_id}/{signal.version}/decision"


def quote(
    engine: Engine, bid: float = GOLD_BID, ask: float = GOLD_ASK, symbol: str = "XAUUSD"
) -> None:
    engine.node.offer_quotes(
        [Quote(symbol=symbol, bid=bid, ask=ask, time_ms=engine.ctx.clock.now_ms())]
    )


def report_equity(engine: Engine, user_id: str, peak: float, equity: float) -> None:
    """Two account reports reach the user's actor, as from a device: the first at ``peak``,
    the second at ``equity`` (the guard judges the fall between them)."""
    actor = engine.node.user(user_id)
    now = engine.ctx.clock.now_ms()
    for value in (peak, equity):
        state = AccountState(balance=peak, equity=value, currency="USD", time_ms=now)
        actor.deliver(AccountReport("test-reports", state))


async def wait_for(
    check: Callable[[], Awaitable[Any]] | Callable[[], Any], timeout: float = 10.0
) -> Any:
    """Poll ``check`` until it returns something truthy (awaiting it if it is async)."""
    with trio.fail_after(timeout):
        while True:
            value = check()
            if isinstance(value, Awaitable):
                value = await value
            if value:
                return value
            await trio.sleep(0.02)


async def paper_device(
    engine: Engine, nursery: trio.Nursery, user_id: str, name: str = "paper"
) -> tuple[str, PaperTerminal]:
    """A registered device of ``user_id`` with an in-process paper terminal connected to it."""
    record, _ = await engine.ctx.registry.register_device(user_id, name)
    terminal = await nursery.start(
        run_paper_device, engine.node, record.id, PaperConfig(latency_ms=1)
    )
    await wait_for(lambda: engine.node.devices[record.id].core.ready)

    def known_to_user() -> bool:
        actor = engine.node.users.get(user_id)
        device = actor.core.devices.get(record.id) if actor else None
        return bool(device and device.connected)

    await wait_for(known_to_user)
    return record.id, terminal

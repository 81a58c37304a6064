"""The demo set-up of ``make run``: a demo user, its paper device, and a demo strategy.

On first start the demo user (``TRIPWIRE_DEMO_USER`` / ``TRIPWIRE_DEMO_PASSWORD``) is created
with the paper device ``paper-1``, and an admin if ``TRIPWIRE_ADMIN_PASSWORD`` is set; later
starts find them in Postgres. The demo strategy posts a signal for the demo user every
``interval_s`` (XAUUSD, SL and TP a few dollars from the market, valid for fifteen minutes)
through the same path as a signed ``POST /api/v1/signals``, so a newcomer can approve one on
the dashboard and watch the replayed market close it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import structlog
import trio

from engine.sizing import UserSettings
from gateway.services import accept_signal
from protocol.common import Side
from protocol.signals import Signal

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.context import GatewayContext
    from gateway.registry import Registry

__all__ = ["DEMO_DEVICE", "DEMO_STRATEGY", "Demo", "ensure_demo", "run_demo_strategy"]

DEMO_DEVICE = "paper-1"
DEMO_STRATEGY = "demo"


class Demo(NamedTuple):
    user_id: str
    device_id: str


async def ensure_demo(registry: Registry, settings: Settings) -> Demo | None:
    """Create the demo user, its paper device and the admin if they do not exist yet."""
    if settings.admin_password and settings.admin_user.lower() not in registry.by_name:
        await registry.create_user(settings.admin_user, settings.admin_password, role="admin")
    if not (settings.paper_device or settings.demo_strategy):
        return None
    user_id = registry.by_name.get(settings.demo_user.lower())
    if user_id is None:
        user = await registry.create_user(
            settings.demo_user, settings.demo_password, settings=UserSettings(fixed_volume=0.1)
        )
        user_id = user.id
    if DEMO_DEVICE not in registry.devices:
        await registry.register_device(
            user_id,
            "Paper terminal",
            account_login="1000001",
            broker="Tripwire Paper",
            device_id=DEMO_DEVICE,
        )
    return Demo(user_id, DEMO_DEVICE)


async def run_demo_strategy(
    ctx: GatewayContext,
    demo: Demo,
    interval_s: float = 45.0,
    symbol: str = "XAUUSD",
    distance: float = 1.5,
) -> None:
    """Post a demo signal every ``interval_s`` once prices flow."""
    log = structlog.get_logger().bind(component="demo-strategy", user_id=demo.user_id)
    count = 0
    while True:
        quote = ctx.node.prices.get(symbol)
        if quote is None:
            await trio.sleep(1)
            continue
        count += 1
        side = Side.BUY if count % 2 else Side.SELL
        bid, ask, _ = quote
        entry = ask if side is Side.BUY else bid
        now = ctx.clock.now_ms()
        signal = Signal(
            strategy_id=DEMO_STRATEGY,
            signal_id=f"demo-{now}",
            version=1,
            audience=[demo.user_id],
            symbol=symbol,
            side=side,
            entry=entry,
            sl=round(entry - side.sign * distance, 3),
            tp=round(entry + side.sign * distance * 1.5, 3),
            volume=0.1,
            created_at_ms=now,
            expires_at_ms=now + 15 * 60_000,
            comment="demo strategy: approve it on the dashboard",
        )
        try:
            await accept_signal(ctx, signal)
            log.info("demo signal posted", signal_id=signal.signal_id, side=side.value)
        except Exception as exc:  # the demo must never take the engine down
            log.warning("demo signal not posted", error=str(exc))
        await trio.sleep(interval_s)

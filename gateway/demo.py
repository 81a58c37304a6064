"""The demo set-up of ``make run``: a demo user, its paper device, and a demo strategy.

On first start the demo user (``TRIPWIRE_DEMO_USER`` / ``TRIPWIRE_DEMO_PASSWORD``) is created
with the paper device ``paper-1``, and an admin if ``TRIPWIRE_ADMIN_PASSWORD`` is set; later
starts find them in Postgres. The demo strategy posts a signal for the demo user every
``interval_s`` (XAUUSD, SL a dollar and TP a dollar and a half from the market) through the
same path as a signed ``POST /api/v1/signals``, so a newcomer can approve one on the dashboard
and watch the replayed market close it.

A newcomer must see the key moment at once, so the strategy approves its first signal itself
(through the user's actor, as ``POST .../decision`` does, audited as the demo's): a position
opens within seconds of ``make run``, and the replay starts just before the 2014-05-02 payrolls
release (``replay_start_s``), when gold moves dollars a minute, so its SL or TP fires within
the first minute. The later signals wait for the user. Each one expires when the next is
posted, so at most one demo signal is ever pending; the demo user is created with
``auto_close_on_expiry`` off, so a position the user approved lives until its SL or TP.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, NamedTuple

import structlog
import trio

from actors.messages import DecideSignal, Reply
from engine.records import Approval
from engine.sizing import UserSettings
from gateway.services import accept_signal, audit
from protocol.common import Side
from protocol.errors import Conflict, Refused
from protocol.signals import Signal

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.context import GatewayContext
    from gateway.registry import Registry

__all__ = [
    "DEMO_DEVICE",
    "DEMO_STRATEGY",
    "Demo",
    "approve_for_demo",
    "ensure_demo",
    "run_demo_strategy",
]

DEMO_DEVICE = "paper-1"
DEMO_STRATEGY = "demo"
_AGENT = "tripwire demo strategy"


class Demo(NamedTuple):
    user_id: str
    device_id: str


async def ensure_demo(registry: Registry, settings: Settings) -> Demo | None:
    """Create the demo user, its paper device and the admin if they do not exist yet.

    Several nodes of a cluster start at once: one that finds a name or id just taken by
    another reloads the registry and takes what the other created.
    """
    try:
        return await _ensure_demo(registry, settings)
    except Conflict:
        await registry.load()
        return await _ensure_demo(registry, settings)


async def _ensure_demo(registry: Registry, settings: Settings) -> Demo | None:
    if settings.admin_password and settings.admin_user.lower() not in registry.by_name:
        await registry.create_user(settings.admin_user, settings.admin_password, role="admin")
    if not (settings.paper_device or settings.demo_strategy):
        return None
    user_id = registry.by_name.get(settings.demo_user.lower())
    if user_id is None:
        user = await registry.create_user(
            settings.demo_user,
            settings.demo_password,
            settings=UserSettings(fixed_volume=0.1, auto_close_on_expiry=False),
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


async def approve_for_demo(
    ctx: GatewayContext, demo: Demo, signal: Signal, attempts: int = 20
) -> Approval | None:
    """Approve ``signal`` for the demo user; retried while the core refuses it for a passing
    reason (the paper device not connected yet, the market moved), until it expires."""
    log = structlog.get_logger().bind(component="demo-strategy", user_id=demo.user_id)
    for _ in range(attempts):
        try:
            # Judged inside the user's actor at this moment's price, as the REST decision is.
            decided: Reply[Approval] = Reply()
            ctx.node.user(demo.user_id).deliver(
                DecideSignal(signal, "approve", f"demo-{uuid.uuid4()}", "", _AGENT, None, decided)
            )
            approval = await decided.wait()
        except Refused as exc:
            if signal.expires_at_ms is not None and ctx.clock.now_ms() >= signal.expires_at_ms:
                break
            log.debug("demo approval refused; trying again", code=exc.code, error=exc.message)
            await trio.sleep(1)
            continue
        await audit(
            ctx,
            actor_id=demo.user_id,
            action="approval.approve",
            target_type="signal",
            target_id=approval.signal,
            outcome="201",
            user_agent=_AGENT,
            approval_id=approval.id,
            position_id=approval.position_id,
        )
        return approval
    log.warning("the demo could not approve its first signal", signal_id=signal.signal_id)
    return None


async def run_demo_strategy(
    ctx: GatewayContext,
    demo: Demo,
    interval_s: float = 45.0,
    symbol: str = "XAUUSD",
    distance: float = 1.0,
    auto_approve: int = 1,
) -> None:
    """Post a demo signal every ``interval_s`` once prices flow; approve the first
    ``auto_approve`` of them on the demo user's behalf (see the module doc)."""
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
            # Superseded by the next one: at most one demo signal is pending at a time.
            expires_at_ms=now + round(interval_s * 1000),
            comment="demo strategy: approve it on the dashboard",
        )
        try:
            await accept_signal(ctx, signal)
            log.info("demo signal posted", signal_id=signal.signal_id, side=side.value)
            if count <= auto_approve:
                approval = await approve_for_demo(ctx, demo, signal)
                if approval is not None:
                    log.info(
                        "demo signal approved by the demo itself",
                        signal_id=signal.signal_id,
                        position_id=approval.position_id,
                    )
        except Exception as exc:  # the demo must never take the engine down
            log.warning("demo signal not posted", error=str(exc))
        await trio.sleep(interval_s)

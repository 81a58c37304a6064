"""Operations views: reconciliation, guards, alerts, and the audit log.

* Reconciliation: each of the caller's devices as its actor sees it now (connected, stale,
  healthy, commands awaiting an ACK), plus the recent differences the engine found between its
  books and the terminals' (the ``reconciliation`` projection, through the read cache).
* Guards: the caller's drawdown guard as the user actor holds it, and every symbol's market
  guard. Both are in-memory reads cheaper than any cache lookup, so they are read directly.
* Alerts: the caller's own and the market-wide ones (no user), newest first, cached briefly.
* Audit: who did what from where (admins only).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta
from quart import Blueprint
from quart_schema import document_response, validate_querystring

from engine.guards import DrawdownLimits, GuardLevel
from gateway.auth import require_role
from gateway.context import GatewayContext
from gateway.rest.common import Label, ctx, identity, require_token, scope_user
from gateway.rest.devices import devices_in_scope
from gateway.rest.docs import bearer, errors, json_response, raw_json
from gateway.rest.placement import serve_here
from gateway.rest.reads import read_through
from persistence import projection_reads
from persistence.projection_reads import AlertRow, AuditRow, ReconciliationRow
from protocol.types import Id

__all__ = ["blueprint"]

blueprint = Blueprint("ops", __name__, url_prefix="/api/v1")
require_token(blueprint)

_ENCODER = msgspec.json.Encoder()


class DeviceState(msgspec.Struct, frozen=True, kw_only=True):
    device_id: str
    connected: bool
    stale: bool
    healthy: bool
    last_seen_ms: int | None
    outstanding_commands: int
    """Commands sent or queued for the device and not yet acknowledged."""


class Reconciliation(msgspec.Struct, frozen=True, kw_only=True):
    devices: list[DeviceState]
    entries: list[ReconciliationRow]


class DrawdownOut(msgspec.Struct, frozen=True, kw_only=True):
    level: Literal["normal", "warning", "critical"]
    drawdown: float
    """``(peak - equity) / peak`` at the last account report."""
    peak: float | None
    opens_blocked: bool
    limits: DrawdownLimits
    equity: float | None = None
    balance: float | None = None


class MarketGuardOut(msgspec.Struct, frozen=True, kw_only=True):
    symbol: str
    median_spread: float | None
    alerting: list[str]
    """Conditions being alerted on now: ``spread``, ``feed_silent``."""
    last_quote_ms: int | None = None


class Guards(msgspec.Struct, frozen=True, kw_only=True):
    drawdown: DrawdownOut
    market: list[MarketGuardOut]


class AlertList(msgspec.Struct, frozen=True, kw_only=True):
    alerts: list[AlertRow]


class AuditList(msgspec.Struct, frozen=True, kw_only=True):
    entries: list[AuditRow]


class LimitQuery(msgspec.Struct, frozen=True, kw_only=True):
    limit: Annotated[int, Meta(ge=1, le=500)] = 50
    user_id: Id | None = None
    """Admins: another user's view."""


class AuditQuery(msgspec.Struct, frozen=True, kw_only=True):
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100
    before_id: Annotated[int, Meta(ge=1, le=2**62)] | None = None
    """Entries older than this one (paging back)."""
    actor_id: Label | None = None
    action: Label | None = None
    target_id: Label | None = None


class GuardsQuery(msgspec.Struct, frozen=True, kw_only=True):
    user_id: Id | None = None
    """Admins: another user's drawdown guard (default: the caller's)."""


def _drawdown(context: GatewayContext, user_id: str) -> DrawdownOut:
    """The user actor's guard; without an actor, the last saved guard and the settings."""
    actor = context.node.users.get(user_id)
    if actor is not None:
        guard = actor.drawdown()
        return DrawdownOut(
            level=guard.level.name.lower(),  # type: ignore[arg-type]
            drawdown=guard.drawdown,
            peak=guard.peak,
            opens_blocked=guard.opens_blocked,
            limits=guard.limits,
            equity=guard.equity,
            balance=guard.balance,
        )
    saved = context.node.state.guards.get(user_id)
    limits = context.registry.user_settings(user_id).drawdown
    if saved is None:
        return DrawdownOut(
            level="normal", drawdown=0.0, peak=None, opens_blocked=False, limits=limits
        )
    peak, equity = saved.peak, saved.equity
    drawdown = (peak - equity) / peak if peak and equity is not None and peak > 0 else 0.0
    return DrawdownOut(
        level=GuardLevel(saved.level).name.lower(),  # type: ignore[arg-type]
        drawdown=drawdown,
        peak=peak,
        opens_blocked=saved.opens_blocked,
        limits=limits,
        equity=equity,
        balance=saved.balance,
    )


@blueprint.get("/reconciliation")
@bearer
@validate_querystring(LimitQuery)
@document_response(Reconciliation, 200)
@errors(400, 401, 403)
async def reconciliation(query_args: LimitQuery) -> Any:
    """The caller's devices as the engine sees them now, and recent reconciliation entries."""
    context = ctx()
    user_id = scope_user(query_args.user_id)
    serve_here(user_id)  # the device actors' live state
    records = devices_in_scope(context, user_id)
    devices = []
    for record in records:
        actor = context.node.devices.get(record.id)
        live = actor.view() if actor is not None else None
        devices.append(
            DeviceState(
                device_id=record.id,
                connected=bool(live and live.connected),
                stale=bool(live and live.stale),
                healthy=live.healthy if live else True,
                last_seen_ms=live.last_seen_ms if live else None,
                outstanding_commands=actor.outstanding_commands if actor is not None else 0,
            )
        )
    device_ids = [r.id for r in records]

    async def load() -> bytes:
        return _ENCODER.encode(
            await projection_reads.reconciliation(context.database, device_ids, query_args.limit)
        )

    entries = await read_through(
        context, f"reconciliation:{user_id or '*'}:{query_args.limit}", load
    )
    return raw_json(b'{"devices":' + _ENCODER.encode(devices) + b',"entries":' + entries + b"}")


@blueprint.get("/guards")
@bearer
@validate_querystring(GuardsQuery)
@document_response(Guards, 200)
@errors(400, 401, 403)
async def guards(query_args: GuardsQuery) -> Any:
    """The caller's drawdown guard and every symbol's market guard."""
    context = ctx()
    user_id = scope_user(query_args.user_id, everyone=False)
    assert user_id is not None
    serve_here(user_id)  # the user actor's drawdown guard
    market = [
        MarketGuardOut(
            symbol=symbol,
            median_spread=guard.median_spread,
            alerting=sorted(guard.alerting),
            last_quote_ms=guard.last_quote_ms,
        )
        for symbol, actor in sorted(context.node.symbols.items())
        if (guard := actor.market_guard())
    ]
    return json_response(Guards(drawdown=_drawdown(context, user_id), market=market))


@blueprint.get("/alerts")
@bearer
@validate_querystring(LimitQuery)
@document_response(AlertList, 200)
@errors(400, 401, 403)
async def alerts(query_args: LimitQuery) -> Any:
    """The caller's alerts and the market-wide ones, newest first (admins: every alert)."""
    context = ctx()
    user_id = scope_user(query_args.user_id)

    async def load() -> bytes:
        rows = await projection_reads.alerts(context.database, user_id, query_args.limit)
        return _ENCODER.encode(AlertList(alerts=rows))

    key = f"alerts:{user_id or '*'}:{query_args.limit}"
    return raw_json(await read_through(context, key, load))


@blueprint.get("/audit")
@bearer
@validate_querystring(AuditQuery)
@document_response(AuditList, 200)
@errors(400, 401, 403)
async def audit_log(query_args: AuditQuery) -> Any:
    """The audit log, newest first (admins only)."""
    require_role(identity(), "admin")
    q = query_args
    entries = await projection_reads.audit_entries(
        ctx().database,
        actor_id=q.actor_id,
        action=q.action,
        target_id=q.target_id,
        before_id=q.before_id,
        limit=q.limit,
    )
    return json_response(AuditList(entries=entries))

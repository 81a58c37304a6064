"""The projections read back: the queries behind the REST API's history views.

:mod:`persistence.projections` writes these tables in each journal batch's transaction; this
module holds the SQL that reads them, and maps each row to a typed value. The rows are the
API's answers as they are (msgspec Structs, documented in the OpenAPI schema by their names);
the handlers in ``gateway.rest`` decide who may see what and cache the answers.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any, Literal, NamedTuple, Protocol

import msgspec

from engine.records import signal_key

__all__ = [
    "AlertRow",
    "ApprovalRow",
    "AuditRow",
    "HistoryPage",
    "Queries",
    "ReconciliationRow",
    "alerts",
    "approvals",
    "audit_entries",
    "position_document",
    "position_history",
    "reconciliation",
    "trades_json",
]


class Queries(Protocol):
    """Where the reads run: a :class:`~persistence.db.Database` (or one asyncpg connection)."""

    async def fetch(self, query: str, *args: Any) -> Any: ...

    async def fetchrow(self, query: str, *args: Any) -> Any: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...


class ApprovalRow(msgspec.Struct, frozen=True, kw_only=True):
    """One recorded decision (from the durable history)."""

    id: str
    user_id: str
    signal: str
    strategy_id: str
    signal_id: str
    signal_version: int
    decision: Literal["approve", "reject"]
    decided_ms: int
    expires_at_ms: int | None
    position_id: str | None
    ip: str | None
    user_agent: str | None


class ReconciliationRow(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    device_id: str
    position_id: str | None
    kind: str
    """``external_found`` (a position on the terminal the engine did not open: listed, not
    adopted), ``adopt`` (its user adopted it), ``closed_while_away`` (missing on the terminal),
    ``open_not_found``, ``open_confirmed``, ``resend_close``, ``resend_partial_close``,
    ``volume_mismatch``, ``levels_mismatch`` (the broker holds a stop tighter than the
    engine's), ``fill_recovered``, ``unknown_ack``, ``unmapped_symbol``"""
    detail: str
    ticket: int | None
    time_ms: int


class AlertRow(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    time_ms: int
    kind: str
    level: Literal["info", "warning", "critical"]
    user_id: str | None
    device_id: str | None
    symbol: str | None
    position_id: str | None
    message: str
    value: float | None
    threshold: float | None


class AuditRow(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    time_ms: int
    actor_id: str | None
    action: str
    target_type: str | None
    target_id: str | None
    ip: str | None
    user_agent: str | None
    outcome: str
    detail: dict[str, Any]


# -- approvals ---------------------------------------------------------------------------------

_APPROVALS = """
SELECT a.id, a.user_id, a.strategy_id, a.signal_id, a.signal_version, a.decision,
       (extract(epoch FROM a.decided_at) * 1000)::bigint AS decided_ms,
       (extract(epoch FROM a.expires_at) * 1000)::bigint AS expires_at_ms,
       host(a.ip) AS ip, a.user_agent, p.id AS position_id
FROM approvals a
LEFT JOIN positions p ON p.approval_id = a.id AND p.user_id = a.user_id
WHERE ($1::text IS NULL OR a.user_id = $1)
  AND ($2::timestamptz IS NULL OR a.decided_at < $2)
ORDER BY a.decided_at DESC, a.id
LIMIT $3"""


async def approvals(
    db: Queries, user_id: str | None, before: datetime | None, limit: int
) -> list[ApprovalRow]:
    """Decisions newest first (``user_id`` None: everyone's), taken before ``before``."""
    rows = await db.fetch(_APPROVALS, user_id, before, limit)
    return [
        ApprovalRow(
            id=r["id"],
            user_id=r["user_id"],
            signal=signal_key(r["strategy_id"], r["signal_id"], r["signal_version"]),
            strategy_id=r["strategy_id"],
            signal_id=r["signal_id"],
            signal_version=r["signal_version"],
            decision=r["decision"],
            decided_ms=r["decided_ms"],
            expires_at_ms=r["expires_at_ms"],
            position_id=r["position_id"],
            ip=r["ip"],
            user_agent=r["user_agent"],
        )
        for r in rows
    ]


# -- reconciliation, alerts, audit -------------------------------------------------------------

_RECONCILIATION = """
SELECT id, device_id, position_id, kind, detail,
       (extract(epoch FROM created_at) * 1000)::bigint AS time_ms
FROM reconciliation
WHERE device_id = ANY($1::text[])
ORDER BY created_at DESC, id DESC
LIMIT $2"""

_ALERTS = """
SELECT id, (extract(epoch FROM at) * 1000)::bigint AS time_ms, kind, level, user_id, device_id,
       symbol, position_id, message, detail
FROM alerts
WHERE ($1::boolean OR user_id = $2 OR user_id IS NULL)
ORDER BY at DESC, id DESC
LIMIT $3"""

_AUDIT = """
SELECT id, (extract(epoch FROM at) * 1000)::bigint AS time_ms, actor_id, action, target_type,
       target_id, host(ip) AS ip, user_agent, outcome, detail
FROM audit_log
WHERE ($1::text IS NULL OR actor_id = $1)
  AND ($2::text IS NULL OR action = $2)
  AND ($3::text IS NULL OR target_id = $3)
  AND ($4::bigint IS NULL OR id < $4)
ORDER BY id DESC
LIMIT $5"""


async def reconciliation(db: Queries, device_ids: list[str], limit: int) -> list[ReconciliationRow]:
    """The newest differences found between the books and these devices' terminals."""
    rows = await db.fetch(_RECONCILIATION, device_ids, limit)
    return [
        ReconciliationRow(
            id=r["id"],
            device_id=r["device_id"],
            position_id=r["position_id"],
            kind=r["kind"],
            detail=str((r["detail"] or {}).get("detail") or ""),
            ticket=(r["detail"] or {}).get("ticket"),
            time_ms=r["time_ms"],
        )
        for r in rows
    ]


async def alerts(db: Queries, user_id: str | None, limit: int) -> list[AlertRow]:
    """Alerts newest first: ``user_id``'s and the market-wide ones (None: every alert)."""
    rows = await db.fetch(_ALERTS, user_id is None, user_id, limit)
    return [
        AlertRow(
            id=r["id"],
            time_ms=r["time_ms"],
            kind=r["kind"],
            level=r["level"],
            user_id=r["user_id"],
            device_id=r["device_id"],
            symbol=r["symbol"],
            position_id=r["position_id"],
            message=r["message"],
            value=(r["detail"] or {}).get("value"),
            threshold=(r["detail"] or {}).get("threshold"),
        )
        for r in rows
    ]


async def audit_entries(
    db: Queries,
    *,
    actor_id: str | None,
    action: str | None,
    target_id: str | None,
    before_id: int | None,
    limit: int,
) -> list[AuditRow]:
    """The audit log newest first, filtered by whichever of the arguments are not None."""
    rows = await db.fetch(_AUDIT, actor_id, action, target_id, before_id, limit)
    return [
        AuditRow(
            id=r["id"],
            time_ms=r["time_ms"],
            actor_id=r["actor_id"],
            action=r["action"],
            target_type=r["target_type"],
            target_id=r["target_id"],
            ip=r["ip"],
            user_agent=r["user_agent"],
            outcome=r["outcome"],
            detail=r["detail"] or {},
        )
        for r in rows
    ]


# -- positions ---------------------------------------------------------------------------------

_NET = "(pl + coalesce((doc->>'commission')::float8, 0) + coalesce((doc->>'swap')::float8, 0))"
"""What a closed trade did to the balance: its price P&L plus commission and swap, as the
terminal charges them (``engine.views.net_pl``; a document without costs counts them as 0)."""

_TRADES = f"""
SELECT json_build_object(
    'realized', (SELECT coalesce(sum({_NET}), 0)::float8 FROM positions
                 WHERE user_id = $1 AND state = 'closed' AND pl IS NOT NULL),
    'trades', coalesce(json_agg(json_build_array(t.closed_ms, t.net, t.opened_ms, t.id)
                       ORDER BY t.closed_ms, t.id), '[]'::json)
)::text
FROM (
    SELECT id, {_NET} AS net,
           (extract(epoch FROM coalesce(closed_at, updated_at)) * 1000)::bigint AS closed_ms,
           (extract(epoch FROM opened_at) * 1000)::bigint AS opened_ms
    FROM positions
    WHERE user_id = $1 AND state = 'closed' AND pl IS NOT NULL
    ORDER BY coalesce(closed_at, updated_at) DESC, id
    LIMIT $2
) AS t"""


async def trades_json(db: Queries, user_id: str, limit: int) -> str:
    """``{"realized": <net P&L of every closed trade>, "trades": [[closed ms, net P&L,
    opened ms, id], ...]}`` as JSON text: the latest ``limit`` closed trades, oldest first."""
    text: str = await db.fetchval(_TRADES, user_id, limit)
    return text


async def position_document(db: Queries, position_id: str) -> str | None:
    """The stored document (JSON text) of position ``position_id``, or None."""
    text: str | None = await db.fetchval(
        "SELECT doc::text FROM positions WHERE id = $1", position_id
    )
    return text


# The page's documents newest first, how many, and its last (end time in µs, id): the cursor.
_HISTORY = """
SELECT coalesce(json_agg(h.doc ORDER BY h.at DESC, h.id DESC), '[]')::text,
       count(*)::int,
       (extract(epoch FROM min(h.at)) * 1000000)::bigint,
       (array_agg(h.id ORDER BY h.at, h.id))[1]
FROM (
    SELECT id, doc, coalesce(closed_at, updated_at) AS at
    FROM positions
    WHERE state IN ('closed', 'rejected'){filters}
    ORDER BY at DESC, id DESC
    LIMIT $1
) AS h"""
_FILTERS = {
    "user": "user_id = ${}",
    "symbol": "symbol = ${}",
    "before": "coalesce(closed_at, updated_at) < ${}",
    "since": "coalesce(closed_at, updated_at) >= ${}",
    "after": "(coalesce(closed_at, updated_at), id) < (${}, ${})",
}


class HistoryPage(NamedTuple):
    documents: str
    """The positions' documents as a JSON array text, newest first."""
    size: int
    """How many documents the page holds."""
    last_us: int | None
    """The last document's end time (µs since the epoch); None for an empty page."""
    last_id: str | None


@functools.cache
def _history_sql(filters: tuple[str, ...]) -> str:
    """The history query with ``filters`` (names of :data:`_FILTERS`), parameters from $2."""
    clauses, n = [], 2
    for name in filters:
        template = _FILTERS[name]
        count = template.count("{}")
        clauses.append(template.format(*range(n, n + count)))
        n += count
    return _HISTORY.format(filters="".join(f"\n      AND {c}" for c in clauses))


async def position_history(
    db: Queries,
    *,
    limit: int,
    user_id: str | None = None,
    symbol: str | None = None,
    before: datetime | None = None,
    since: datetime | None = None,
    after: tuple[datetime, str] | None = None,
) -> HistoryPage:
    """Closed and rejected positions newest first: ``user_id``'s (None: everyone's), of
    ``symbol``, ended before ``before`` and at or after ``since``, and after the
    ``(end time, id)`` of ``after`` (the previous page's last) in that order."""
    filters: list[str] = []
    args: list[object] = [limit]
    if user_id is not None:
        filters.append("user")
        args.append(user_id)
    if symbol is not None:
        filters.append("symbol")
        args.append(symbol)
    if before is not None:
        filters.append("before")
        args.append(before)
    if since is not None:
        filters.append("since")
        args.append(since)
    if after is not None:
        filters.append("after")
        args.extend(after)
    row = await db.fetchrow(_history_sql(tuple(filters)), *args)
    return HistoryPage(row[0], row[1], row[2], row[3])

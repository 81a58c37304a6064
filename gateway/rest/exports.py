"""Exports: a user's positions as CSV, streamed page by page.

``GET /api/v1/positions.csv`` takes the filters of ``GET /api/v1/positions`` (``state``,
``symbol``, ``from_ms``, ``to_ms``, admins' ``user_id``) and streams one row per position,
newest first: live ones from the cores, then the history through the same cursor paging
(:func:`~gateway.rest.positions.history_page`), one page in memory at a time, so an export
costs the server a page whatever its length. The query is checked before the first byte
(400, 401, 403 as for the JSON list); past ``csv_export_max_rows`` rows the export ends with
a ``# truncated`` comment line, since a status can no longer be sent by then.

Cells that a spreadsheet would run as a formula (text starting ``=``, ``+``, ``-``, ``@``) are
prefixed with a quote: a close reason or a signal id is data, never a formula.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
from quart import Blueprint, Response
from quart_schema import validate_querystring

from engine.positions import decode_position_documents
from gateway.context import GatewayContext
from gateway.rest.common import Before, ctx, require_token, scope_user
from gateway.rest.docs import bearer, binary, errors
from gateway.rest.placement import serve_here
from gateway.rest.positions import history_page, live_positions, view_of
from protocol.client import PositionView
from protocol.types import Id, Symbol

__all__ = ["COLUMNS", "blueprint", "csv_rows"]

blueprint = Blueprint("exports", __name__, url_prefix="/api/v1")
require_token(blueprint)

PAGE = 500
"""History positions read per query while streaming."""

COLUMNS = (
    "id",
    "symbol",
    "side",
    "volume",
    "state",
    "origin",
    "ticket",
    "open_time",
    "open_price",
    "sl",
    "tp",
    "close_time",
    "close_price",
    "pl",
    "close_reason",
    "signal_id",
    "device_id",
    "commission",
    "swap",
    "net_pl",
)
"""The export's columns, in order (times are ISO 8601 UTC with milliseconds). ``pl`` is the price
P&L, without ``commission`` and ``swap`` (MT5's profit); ``net_pl`` is the three together.
Columns are only ever added at the end, so a spreadsheet reading them by position keeps working."""

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class ExportQuery(msgspec.Struct, frozen=True, kw_only=True):
    state: Literal["open", "closed", "all"] = "closed"
    """``closed`` (default): the history; ``open``: live positions; ``all``: both."""
    symbol: Symbol | None = None
    from_ms: Before | None = None
    """History only: positions that ended at or after this time."""
    to_ms: Before | None = None
    """History only: positions that ended before this time."""
    user_id: Id | None = None
    """Admins: one user's positions (by default an admin exports everyone's)."""


def _when(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _text(value: str | None) -> str:
    if not value:
        return ""
    return "'" + value if value.startswith(_FORMULA_START) else value


def _number(value: float | int | None) -> str:
    return "" if value is None else repr(value)


def csv_rows(views: Iterable[PositionView]) -> list[list[str]]:
    """The export's rows of ``views``, in :data:`COLUMNS` order."""
    return [
        [
            _text(v.id),
            _text(v.symbol),
            v.side.value,
            _number(v.volume),
            _text(v.state),
            v.origin.value,
            _number(v.ticket),
            _when(v.open_time_ms),
            _number(v.open_price),
            _number(v.sl),
            _number(v.tp),
            _when(v.close_time_ms),
            _number(v.close_price),
            _number(v.pl),
            _text(v.close_reason),
            _text(v.signal_id),
            _text(v.device_id),
            _number(v.commission),
            _number(v.swap),
            _number(v.net_pl),
        ]
        for v in views
    ]


def _encode(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue().encode()


def _truncated(context: GatewayContext) -> bytes:
    limit = context.settings.csv_export_max_rows
    return f"# truncated at {limit} rows: narrow the export by date or symbol\r\n".encode()


async def _stream(
    context: GatewayContext, q: ExportQuery, user_id: str | None
) -> AsyncIterator[bytes]:
    """The CSV, a chunk per page: header, live positions, then the history's pages."""
    budget = context.settings.csv_export_max_rows
    yield _encode([list(COLUMNS)])
    if q.state in ("open", "all"):
        views = [view_of(context, p) for p in live_positions(context, user_id, q.symbol)]
        rows = csv_rows(v for v in views if v is not None)
        yield _encode(rows[:budget])
        if len(rows) > budget:
            yield _truncated(context)
            return
        budget -= len(rows)
    if q.state not in ("closed", "all"):
        return
    cursor: str | None = None
    while True:
        docs, cursor = await history_page(
            context.database,
            user_id=user_id,
            symbol=q.symbol,
            before_ms=q.to_ms,
            from_ms=q.from_ms,
            cursor=cursor,
            limit=min(PAGE, budget + 1),
        )
        views = [view_of(context, p) for p in decode_position_documents(docs)]
        rows = csv_rows(v for v in views if v is not None)
        yield _encode(rows[:budget])
        if len(rows) > budget:
            yield _truncated(context)
            return
        budget -= len(rows)
        if cursor is None:
            return


@blueprint.get("/positions.csv")
@bearer
@validate_querystring(ExportQuery)
@binary("text/csv", description="Positions as CSV, newest first (columns: see COLUMNS)")
@errors(400, 401, 403)
async def export_positions(query_args: ExportQuery) -> Any:
    """The caller's positions as CSV (admins: everyone's, or one user's), streamed."""
    context = ctx()
    user_id = scope_user(query_args.user_id)
    if query_args.state != "closed":  # the live part is the user actor's
        serve_here(user_id)
    stamp = datetime.fromtimestamp(context.clock.now_ms() / 1000, UTC).strftime("%Y%m%d-%H%M%S")
    headers = {
        "Content-Disposition": f'attachment; filename="positions-{stamp}.csv"',
        "Cache-Control": "no-store",
    }
    return Response(
        _stream(context, query_args, user_id),
        content_type="text/csv; charset=utf-8",
        headers=headers,
    )

"""Positions: the live ones from memory, the history from Postgres, and closing by hand.

Open (every position not yet final: pending, open, closing, unknown, close failed) is read
from the user actors' cores, valued at the price board's current quote; nothing waits. The
history (closed and rejected positions) is the ``positions`` projection, newest first,
through the short-TTL read cache: Postgres aggregates a page into one JSON text, decoded in
one call into the engine's own :class:`~engine.positions.Position` (the ``doc`` column), so
a live and a historical position are shown by the same :func:`~engine.views.position_view`.

A manual close is a call into the owner's actor (``UserCore.close_position``), answered 202
with the id of the close command that went to the device: the close itself completes when the
device acknowledges it, visible here and on ``/ws/client``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import trio
from msgspec import Meta
from quart import Blueprint
from quart_schema import document_response, validate_querystring

from actors.clock import Clock
from engine.effects import Effects
from engine.instruments import Instrument
from engine.lifecycle import FINAL_STATES
from engine.positions import Position, decode_position_document, decode_position_documents
from engine.user import UserCore
from engine.views import position_view
from gateway.context import GatewayContext
from gateway.rest.common import Before, audited, ctx, identity, require_token, scope_user
from gateway.rest.docs import bearer, errors, json_response, raw_json
from gateway.rest.reads import read_through
from persistence.projections import to_time
from protocol.client import PositionView
from protocol.errors import Conflict, NotFound
from protocol.types import Id, Symbol

__all__ = [
    "blueprint",
    "encode_views",
    "find_position",
    "history_views",
    "live_positions",
    "view_of",
]

blueprint = Blueprint("positions", __name__, url_prefix="/api/v1")
require_token(blueprint)

_ENCODER = msgspec.json.Encoder()
_THREAD_ABOVE_BYTES = 64 * 1024
"""Histories bigger than this are decoded and re-encoded in a worker thread."""

_HISTORY = """
SELECT coalesce(json_agg(h.doc ORDER BY h.at DESC, h.id), '[]')::text
FROM (
    SELECT id, doc, coalesce(closed_at, updated_at) AS at
    FROM positions
    WHERE state IN ('closed', 'rejected')
      AND ($1::text IS NULL OR user_id = $1)
      AND ($2::text IS NULL OR symbol = $2)
      AND ($3::timestamptz IS NULL OR coalesce(closed_at, updated_at) < $3)
    ORDER BY at DESC, id
    LIMIT $4
) AS h"""


class PositionsQuery(msgspec.Struct, frozen=True, kw_only=True):
    state: Literal["open", "closed", "all"] = "open"
    """``open``: every live position (from memory); ``closed``: the history (closed and
    rejected, newest first); ``all``: both."""
    symbol: Symbol | None = None
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100
    """At most this many positions of the history."""
    before_ms: Before | None = None
    """History only: positions that ended before this time (paging back)."""
    user_id: Id | None = None
    """Admins: one user's positions (by default an admin sees everyone's)."""


class PositionList(msgspec.Struct, frozen=True, kw_only=True):
    positions: list[PositionView]


class CloseOut(msgspec.Struct, frozen=True, kw_only=True):
    position_id: str
    command_id: str | None
    """The close command sent to the device (its ACK completes the close)."""


def _instrument(context: GatewayContext, p: Position) -> Instrument | None:
    """The node's instrument, or one the owner's device taught its core (broker specs)."""
    instrument = context.node.instruments.get(p.symbol)
    if instrument is None:
        actor = context.node.users.get(p.user_id)
        instrument = actor.core.instruments.get(p.symbol) if actor else None
    return instrument


def view_of(context: GatewayContext, p: Position) -> PositionView | None:
    """``p`` as a client sees it: live ones at the current quote, final ones as they ended
    (None for a symbol nobody knows the digits of)."""
    instrument = _instrument(context, p)
    if instrument is None:
        return None
    if p.state in FINAL_STATES:
        return position_view(instrument, p)
    bid, ask = context.node.prices.points(p.symbol, instrument.scale)
    return position_view(instrument, p, bid, ask)


def live_positions(
    context: GatewayContext, user_id: str | None, symbol: str | None = None
) -> list[Position]:
    """Live positions of ``user_id`` (None: everyone), newest first, read from the cores."""
    users = context.node.users
    actors = users.values() if user_id is None else [a for a in [users.get(user_id)] if a]
    found = [
        p
        for actor in actors
        for p in actor.core.positions.values()
        if symbol is None or p.symbol == symbol
    ]
    found.sort(key=lambda p: (p.open_time_ms or p.updated_ms, p.id), reverse=True)
    return found


def encode_views(context: GatewayContext, positions: list[Position]) -> bytes:
    """An encoded JSON array of the views of ``positions``.

    The same as ``view_of`` for each, with the instrument and quote looked up once per
    (user, symbol) instead of once per position: a user's page is mostly a few symbols.
    """
    views = []
    known: dict[tuple[str, str], tuple[Instrument | None, int | None, int | None]] = {}
    for p in positions:
        key = (p.user_id, p.symbol)
        found = known.get(key)
        if found is None:
            instrument = _instrument(context, p)
            bid = ask = None
            if instrument is not None:
                bid, ask = context.node.prices.points(p.symbol, instrument.scale)
            found = known[key] = (instrument, bid, ask)
        instrument, bid, ask = found
        if instrument is None:
            continue
        if p.state in FINAL_STATES:
            views.append(position_view(instrument, p))
        else:
            views.append(position_view(instrument, p, bid, ask))
    return _ENCODER.encode(views)


def _decode_encode(context: GatewayContext, text: str) -> bytes:
    return encode_views(context, decode_position_documents(text))


async def history_views(
    context: GatewayContext,
    user_id: str | None,
    symbol: str | None = None,
    before_ms: int | None = None,
    limit: int = 100,
) -> bytes:
    """The history page as an encoded JSON array of :class:`PositionView` (cached briefly)."""

    async def load() -> bytes:
        text = await context.db.fetchval(_HISTORY, user_id, symbol, to_time(before_ms), limit)
        if len(text) > _THREAD_ABOVE_BYTES:
            return await trio.to_thread.run_sync(_decode_encode, context, text)
        return _decode_encode(context, text)

    key = f"positions:{user_id or '*'}:{symbol or '*'}:{before_ms}:{limit}"
    return await read_through(context, key, load)


async def find_position(context: GatewayContext, position_id: str) -> Position | None:
    """The position ``position_id``, live or historical (None if there is none)."""
    try:
        msgspec.convert(position_id, Id)
    except msgspec.ValidationError:  # no position has that id: not worth a query (or a NUL)
        return None
    p = context.node.state.positions.get(position_id)
    if p is not None:
        return p
    for actor in context.node.users.values():  # closed a moment ago: not yet in Postgres
        recent = actor.core.recent_closed.get(position_id)
        if recent is not None:
            return recent
    text = await context.db.fetchval("SELECT doc::text FROM positions WHERE id = $1", position_id)
    return None if text is None else decode_position_document(text)


def _close(core: UserCore, position_id: str, clock: Clock) -> tuple[str | None, Effects]:
    """Inside the owner's actor: close by hand; the value is the close command's id."""
    effects = core.close_position(position_id, "manual", clock.now_ms())
    closing = core.positions.get(position_id)
    return (closing.command_id if closing else None), effects


@blueprint.get("/positions")
@bearer
@validate_querystring(PositionsQuery)
@document_response(PositionList, 200)
@errors(400, 401, 403)
async def list_positions(query_args: PositionsQuery) -> Any:
    """Positions: live ones with their current P&L, and/or the history, newest first."""
    q = query_args
    context = ctx()
    user_id = scope_user(q.user_id)
    parts: list[bytes] = []
    if q.state in ("open", "all"):
        parts.append(encode_views(context, live_positions(context, user_id, q.symbol)))
    if q.state in ("closed", "all"):
        parts.append(await history_views(context, user_id, q.symbol, q.before_ms, q.limit))
    items = b",".join(part[1:-1] for part in parts if part != b"[]")
    return raw_json(b'{"positions":[' + items + b"]}")


@blueprint.get("/positions/<position_id>")
@bearer
@document_response(PositionView, 200)
@errors(401, 404)
async def get_position(position_id: str) -> Any:
    """One position of the caller's (admins: anyone's); 404 for anyone else's."""
    who = identity()
    context = ctx()
    p = await find_position(context, position_id)
    view = None if p is None or not who.may_act_for(p.user_id) else view_of(context, p)
    if view is None:
        raise NotFound("no such position")
    return json_response(view)


@blueprint.post("/positions/<position_id>/close")
@bearer
@document_response(CloseOut, 202)
@errors(401, 404, 409)
async def close_position(position_id: str) -> Any:
    """Close an open (or close-failed) position by hand: 202 once the close command is out."""
    who = identity()
    context = ctx()
    async with audited("position.close", "position", position_id, "202") as note:
        p = await find_position(context, position_id)
        if p is None or not who.may_act_for(p.user_id):  # another's: as if there were none
            raise NotFound("no such position")
        if p.state in FINAL_STATES:
            raise Conflict(f"position is {p.state.value}", state=p.state.value)
        command_id = await context.node.user(p.user_id).call(_close, position_id, context.clock)
        note.detail["command_id"] = command_id
    return json_response(CloseOut(position_id=position_id, command_id=command_id), 202)

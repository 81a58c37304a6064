"""Positions: the live ones from memory, the history from Postgres, and closing by hand.

Open (every position not yet final: pending, open, closing, unknown, close failed) is read
from the user actors' views (``UserActor.live_positions``), valued at the price board's
current quote; nothing waits. The history (closed and rejected positions) is the
``positions`` projection, newest first,
through the short-TTL read cache: Postgres aggregates a page into one JSON text, decoded in
one call into the engine's own :class:`~engine.positions.Position` (the ``doc`` column), so
a live and a historical position are shown by the same :func:`~engine.views.position_view`.

The history is paged by a cursor: the page's last (end time, id), opaque to the caller, and
the next page starts strictly after it in the order ``end time DESC, id DESC``. The old
``before_ms`` bound still works but skips the rest of the positions that ended in the same
millisecond as a page's last one (thousands, when a stop-out closes a book at once); the
cursor reaches every position exactly once. Each combination of filters is its own SQL text,
so every one has a plan that walks the ``positions_history_*`` indexes (migration 0004).

A change of an open position's SL/TP, trailing stop or break-even move
(``PATCH /positions/{id}``) is a :class:`~actors.messages.ModifyPosition` request to the owner's
actor (``UserCore.modify_position``): validated there against the instrument and the current
quote, journaled, re-armed, and sent to the device as a ``modify`` when a level changed;
answered with the position as it now is.

A manual close is a :class:`~actors.messages.ClosePosition` request to the owner's actor
(``UserCore.close_position``), answered 202 with the id of the close command that went to
the device: the close itself completes when the device acknowledges it, visible here and on
``/ws/client``.

A position found on a terminal that the engine did not open (``origin`` ``external``) is
listed read-only (``adopted: false``) until its owner adopts it (``POST
/positions/{id}/adopt``, an :class:`~actors.messages.AdoptPosition` request): from then on
it is armed at its SL/TP and takes closes and changes like any other. Until then both answer
409.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
import trio
from msgspec import Meta
from quart import Blueprint
from quart_schema import document_response, validate_querystring, validate_request

from actors.messages import AdoptPosition, ClosePosition, ModifyPosition, Reply
from engine.instruments import Instrument
from engine.lifecycle import FINAL_STATES
from engine.positions import Position, decode_position_document, decode_position_documents
from engine.stoprules import LevelChanges
from engine.views import position_view
from gateway.context import GatewayContext
from gateway.rest.common import Before, audited, ctx, identity, require_token, scope_user
from gateway.rest.docs import bearer, errors, json_response, raw_json
from gateway.rest.placement import serve_here
from gateway.rest.reads import read_through
from persistence import projection_reads
from persistence.projections import to_time
from protocol.client import PositionView
from protocol.errors import Conflict, DecodeError, Forbidden, NotFound
from protocol.types import Id, Symbol

__all__ = [
    "blueprint",
    "encode_views",
    "find_position",
    "history_page",
    "history_views",
    "live_positions",
    "view_of",
]

blueprint = Blueprint("positions", __name__, url_prefix="/api/v1")
require_token(blueprint)

_ENCODER = msgspec.json.Encoder()
_THREAD_ABOVE_BYTES = 64 * 1024
"""Histories bigger than this are decoded and re-encoded in a worker thread."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_US = 253_402_300_799_999_999
"""The last microsecond a timestamp can hold (year 9999)."""
_CURSOR = msgspec.json.Decoder(tuple[Annotated[int, Meta(ge=0, le=_MAX_US)], Id])


def encode_cursor(at_us: int, position_id: str) -> str:
    """The opaque cursor of a page ending at (``at_us``, ``position_id``)."""
    raw = msgspec.json.encode((at_us, position_id))
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (end time, id) a cursor of :func:`encode_cursor` names.

    Raises:
        DecodeError: it is not such a cursor.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at_us, position_id = _CURSOR.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise DecodeError("cursor is not a cursor this API returned") from None
    return _EPOCH + timedelta(microseconds=at_us), position_id


async def history_page(
    db: projection_reads.Queries,
    *,
    user_id: str | None,
    symbol: str | None = None,
    before_ms: int | None = None,
    cursor: str | None = None,
    limit: int = 100,
    from_ms: int | None = None,
) -> tuple[str, str | None]:
    """A page of the history: its position documents as a JSON array text, newest first,
    and the cursor of the next page (None when this page is the last).

    Raises:
        DecodeError: ``cursor`` is not a cursor this API returned.
    """
    page = await projection_reads.position_history(
        db,
        limit=limit,
        user_id=user_id,
        symbol=symbol,
        before=to_time(before_ms),
        since=to_time(from_ms),
        after=decode_cursor(cursor) if cursor is not None else None,
    )
    # A full page may be followed by more; a short one is the end.
    if page.size == limit and page.last_us is not None and page.last_id is not None:
        return page.documents, encode_cursor(page.last_us, page.last_id)
    return page.documents, None


class PositionsQuery(msgspec.Struct, frozen=True, kw_only=True):
    state: Literal["open", "closed", "all"] = "open"
    """``open``: every live position (from memory); ``closed``: the history (closed and
    rejected, newest first); ``all``: both."""
    symbol: Symbol | None = None
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100
    """At most this many positions of the history."""
    cursor: Annotated[str, Meta(max_length=256, pattern="^[A-Za-z0-9_-]+$")] | None = None
    """History only: the ``next_cursor`` of the previous page; the next page starts right
    after that page's last position. This is how to page through the history."""
    before_ms: Before | None = None
    """History only: positions that ended before this time. Deprecated for paging: positions
    that ended in the same millisecond as a page's last one would be skipped; use ``cursor``."""
    from_ms: Before | None = None
    """History only: positions that ended at or after this time (ms since the epoch)."""
    to_ms: Before | None = None
    """History only: positions that ended before this time (with ``before_ms`` too: the
    earlier of the two)."""
    user_id: Id | None = None
    """Admins: one user's positions (by default an admin sees everyone's)."""

    def history_before(self) -> int | None:
        """The history's upper bound: the earlier of ``to_ms`` and ``before_ms``."""
        bounds = [b for b in (self.to_ms, self.before_ms) if b is not None]
        return min(bounds) if bounds else None


class PositionList(msgspec.Struct, frozen=True, kw_only=True):
    positions: list[PositionView]
    next_cursor: str | None = None
    """Pass as ``cursor`` for the next page of the history; null when there is no more (and
    for ``state=open``)."""


class CloseOut(msgspec.Struct, frozen=True, kw_only=True):
    position_id: str
    command_id: str | None
    """The close command sent to the device (its ACK completes the close)."""


def _instrument(context: GatewayContext, p: Position) -> Instrument | None:
    """The node's instrument, or one the owner's device taught its core (broker specs)."""
    instrument = context.node.instruments.get(p.symbol)
    if instrument is None:
        actor = context.node.users.get(p.user_id)
        instrument = actor.instrument(p.symbol) if actor else None
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
    """Live positions of ``user_id`` (None: everyone), newest first, read from the actors."""
    users = context.node.users
    actors = users.values() if user_id is None else [a for a in [users.get(user_id)] if a]
    found = [
        p
        for actor in actors
        for p in actor.live_positions()
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


_PAGE = msgspec.msgpack.Decoder(tuple[bytes, str | None])


async def history_views(
    context: GatewayContext,
    user_id: str | None,
    symbol: str | None = None,
    before_ms: int | None = None,
    limit: int = 100,
    cursor: str | None = None,
    from_ms: int | None = None,
) -> tuple[bytes, str | None]:
    """The history page as an encoded JSON array of :class:`PositionView` and the next
    page's cursor (cached briefly).

    Raises:
        DecodeError: ``cursor`` is not a cursor this API returned.
    """
    if cursor is not None:
        decode_cursor(cursor)  # a bad cursor is the caller's 400 before anything is cached

    async def load() -> bytes:
        text, next_cursor = await history_page(
            context.database,
            user_id=user_id,
            symbol=symbol,
            before_ms=before_ms,
            cursor=cursor,
            limit=limit,
            from_ms=from_ms,
        )
        if len(text) > _THREAD_ABOVE_BYTES:
            views = await trio.to_thread.run_sync(_decode_encode, context, text)
        else:
            views = _decode_encode(context, text)
        return msgspec.msgpack.encode((views, next_cursor))

    key = f"positions:{user_id or '*'}:{symbol or '*'}:{before_ms}:{from_ms}:{cursor}:{limit}"
    return _PAGE.decode(await read_through(context, key, load))


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
        recent = actor.recently_closed(position_id)
        if recent is not None:
            return recent
    text = await projection_reads.position_document(context.database, position_id)
    return None if text is None else decode_position_document(text)


@blueprint.get("/positions")
@bearer
@validate_querystring(PositionsQuery)
@document_response(PositionList, 200)
@errors(400, 401, 403)
async def list_positions(query_args: PositionsQuery) -> Any:
    """Positions: live ones with their current P&L, and/or the history, newest first.

    Page through the history with ``cursor``: each answer's ``next_cursor`` until it is null.
    """
    q = query_args
    context = ctx()
    user_id = scope_user(q.user_id)
    if q.state != "closed":  # the live part is the user actor's
        serve_here(user_id)
    parts: list[bytes] = []
    next_cursor: str | None = None
    if q.state in ("open", "all"):
        parts.append(encode_views(context, live_positions(context, user_id, q.symbol)))
    if q.state in ("closed", "all"):
        history, next_cursor = await history_views(
            context, user_id, q.symbol, q.history_before(), q.limit, q.cursor, q.from_ms
        )
        parts.append(history)
    items = b",".join(part[1:-1] for part in parts if part != b"[]")
    tail = b',"next_cursor":' + _ENCODER.encode(next_cursor)
    return raw_json(b'{"positions":[' + items + b"]" + tail + b"}")


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
        serve_here(p.user_id)
        closed: Reply[str | None] = Reply()
        context.node.user(p.user_id).deliver(ClosePosition(position_id, closed))
        command_id = await closed.wait()
        note.detail["command_id"] = command_id
    return json_response(CloseOut(position_id=position_id, command_id=command_id), 202)


@blueprint.patch("/positions/<position_id>")
@bearer
@validate_request(LevelChanges)
@document_response(PositionView, 200)
@errors(400, 401, 404, 409, 413, 422)
async def modify_position(position_id: str, data: LevelChanges) -> Any:
    """Change an open position's SL/TP, trailing stop or break-even move (price units).

    Fields left out keep their value; ``null`` removes one. A changed SL or TP is sent to the
    device as a ``modify``. 404 for a position that is not the caller's, 409 if it is not open,
    422 if a level or rule does not suit the instrument or the current price.
    """
    who = identity()
    context = ctx()
    async with audited("position.modify", "position", position_id, "200") as note:
        p = await find_position(context, position_id)
        if p is None or not who.may_act_for(p.user_id):  # another's: as if there were none
            raise NotFound("no such position")
        if p.state in FINAL_STATES:
            raise Conflict(f"position is {p.state.value}", state=p.state.value)
        serve_here(p.user_id)
        for name, value in data.given().items():
            note.detail[name] = msgspec.json.encode(value).decode()
        modified: Reply[Position | None] = Reply()
        context.node.user(p.user_id).deliver(ModifyPosition(position_id, data, modified))
        updated = await modified.wait()
    view = None if updated is None else view_of(context, updated)
    if view is None:
        raise NotFound("no such position")
    return json_response(view)


@blueprint.post("/positions/<position_id>/adopt")
@bearer
@document_response(PositionView, 200)
@errors(401, 403, 404, 409)
async def adopt_position(position_id: str) -> Any:
    """Adopt an external position (one found on the terminal, ``adopted: false``): from now on
    its SL/TP are watched and it can be closed and changed like any other.

    Only its owner adopts it (an admin gets 403). Adopting one adopted already answers 200
    with it, unchanged; 409 for one that is closed; 404 for one that is not the caller's.
    """
    who = identity()
    context = ctx()
    async with audited("position.adopt", "position", position_id, "200") as note:
        p = await find_position(context, position_id)
        if p is None or not who.may_act_for(p.user_id):  # another's: as if there were none
            raise NotFound("no such position")
        if who.user_id != p.user_id:
            raise Forbidden("only its owner may adopt a position")
        if p.state in FINAL_STATES:
            raise Conflict(f"position is {p.state.value}", state=p.state.value)
        serve_here(p.user_id)
        adopted: Reply[Position] = Reply()
        context.node.user(p.user_id).deliver(AdoptPosition(position_id, adopted))
        updated = await adopted.wait()
        note.detail["ticket"] = updated.ticket
    view = view_of(context, updated)
    if view is None:
        raise NotFound("no such position")
    return json_response(view)

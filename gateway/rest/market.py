"""The market as the engine sees it: the latest quotes and candles from the candle book.

Prices are the price board (the last accepted quote of each symbol). Candles come from the
:class:`~gateway.rest.candlebook.CandleBook` the app samples once a second; see there for what
they can and cannot show.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta
from quart import Blueprint
from quart_schema import document_response, validate_querystring

from gateway.context import GatewayContext
from gateway.rest.candlebook import CandleBook
from gateway.rest.common import ctx, require_token
from gateway.rest.docs import bearer, errors, json_response
from protocol.errors import NotFound

__all__ = ["CandleQuery", "blueprint", "candle_book", "known_symbol"]

blueprint = Blueprint("market", __name__, url_prefix="/api/v1/market")
require_token(blueprint)


class PriceOut(msgspec.Struct, frozen=True, kw_only=True):
    symbol: str
    bid: float
    ask: float
    time_ms: int


class PriceList(msgspec.Struct, frozen=True, kw_only=True):
    prices: list[PriceOut]


class CandleOut(msgspec.Struct, frozen=True, kw_only=True):
    t: int
    """Start of the candle, ms since the epoch."""
    o: float
    h: float
    l: float  # noqa: E741 - the conventional OHLC name
    c: float


class CandleList(msgspec.Struct, frozen=True, kw_only=True):
    symbol: str
    interval_s: int
    candles: list[CandleOut]
    """Oldest first."""


class CandleQuery(msgspec.Struct, frozen=True, kw_only=True):
    interval_s: Annotated[int, Meta(ge=1, le=86_400)] = 60
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100


def candle_book(context: GatewayContext) -> CandleBook:
    """The app's candle book (an empty one if sampling has not started)."""
    book = context.candles
    if book is None:
        book = context.candles = CandleBook()
    return book


def known_symbol(context: GatewayContext, symbol: str) -> str:
    """``symbol`` if the engine trades it.

    Raises:
        NotFound: it does not.
    """
    if symbol not in context.node.instruments:
        raise NotFound("no such symbol")
    return symbol


@blueprint.get("/prices")
@bearer
@document_response(PriceList, 200)
@errors(401)
async def prices() -> Any:
    """The latest accepted quote of every symbol."""
    board = ctx().node.prices.all()
    return json_response(
        PriceList(
            prices=[
                PriceOut(symbol=symbol, bid=bid, ask=ask, time_ms=time_ms)
                for symbol, (bid, ask, time_ms) in sorted(board.items())
            ]
        )
    )


@blueprint.get("/<symbol>/candles")
@bearer
@validate_querystring(CandleQuery)
@document_response(CandleList, 200)
@errors(400, 401, 404)
async def candles(symbol: str, query_args: CandleQuery) -> Any:
    """OHLC candles of a symbol's bid, sampled once a second, oldest first."""
    context = ctx()
    known_symbol(context, symbol)
    found = candle_book(context).candles(symbol, query_args.interval_s, query_args.limit)
    return json_response(
        CandleList(
            symbol=symbol,
            interval_s=query_args.interval_s,
            candles=[CandleOut(t=c.t, o=c.o, h=c.h, l=c.l, c=c.c) for c in found],
        )
    )

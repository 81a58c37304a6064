"""The old Flask app's routes: redirected to their new home, or gone, by one flag.

While ``legacy_redirects`` is on (``TRIPWIRE_LEGACY_REDIRECTS``), each old route answers
``301`` with ``Location`` at its ``/api/v1`` replacement and the query string kept as it came
(so ``/api/trades?symbol=XAUUSD`` lands on ``/api/v1/positions?state=closed&symbol=XAUUSD``);
once clients have moved, turning it off makes them ``410 {"code": "gone"}``. Every call is
counted by route (``tripwire_legacy_calls_total{route}`` on ``/metrics``), which is how to know when
turning it off is safe.

These routes are not in the OpenAPI document: they are not part of the API, only a way out
of the old one.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from quart import Blueprint, Response, request
from quart_schema import hide

from gateway.context import GatewayContext
from gateway.errors import error_response
from gateway.rest.common import ctx
from protocol.errors import NotFound

__all__ = ["LEGACY_ROUTES", "blueprint", "new_home"]

blueprint = Blueprint("legacy", __name__)

DEFAULT_SYMBOL = "XAUUSD"
"""The old app's only symbol: what ``/api/historical`` meant without one."""

LEGACY_ROUTES: dict[str, tuple[str, dict[str, str]]] = {
    "/api/price": ("/api/v1/market/prices", {}),
    "/api/trades": ("/api/v1/positions", {"state": "closed"}),
    "/api/positions": ("/api/v1/positions", {}),
    "/api/images": ("/api/v1/charts/equity.png", {}),
    "/api/metrics": ("/api/v1/analytics", {}),
    "/api/indicators": ("/api/v1/analytics", {}),
    "/api/historical": ("/api/v1/market/{symbol}/candles", {}),
}
"""Old route -> (its new home, query parameters the new home needs unless given)."""


def _with_query(path: str, defaults: dict[str, str], raw_query: str) -> str:
    """``path`` with the request's query string as it came, after any missing defaults."""
    given = {key for key, _ in parse_qsl(raw_query, keep_blank_values=True)}
    missing = urlencode({k: v for k, v in defaults.items() if k not in given})
    query = "&".join(part for part in (missing, raw_query) if part)
    return f"{path}?{query}" if query else path


def _image_home(context: GatewayContext, name: str) -> str:
    """Where an old ``/images/<name>`` chart lives now (equity, or a symbol's candles)."""
    stem = name.rsplit(".", 1)[0]
    if stem.lower().startswith("equity"):
        return "/api/v1/charts/equity.png"
    for part in stem.replace("-", "_").split("_"):
        if part.upper() in context.node.instruments:
            return f"/api/v1/charts/candles/{part.upper()}.png"
    raise NotFound("no such image")


def new_home(context: GatewayContext, route: str, name: str = "") -> str:
    """The new URL (path and query) for a call to the old ``route``."""
    raw_query = request.query_string.decode("latin-1")
    if route == "/images/<name>":
        return _with_query(_image_home(context, name), {}, raw_query)
    path, defaults = LEGACY_ROUTES[route]
    if "{symbol}" in path:
        symbol = request.args.get("symbol") or DEFAULT_SYMBOL
        path = path.replace("{symbol}", quote(symbol, safe=""))
    return _with_query(path, defaults, raw_query)


def _answer(route: str, name: str = "") -> Any:
    context = ctx()
    context.counters.legacy_calls[route] += 1
    if not context.settings.legacy_redirects:
        return error_response("gone", f"{request.path} was removed; use /api/v1", 410)
    location = new_home(context, route, name)
    response = Response(
        b'{"code":"moved","message":"this route moved permanently"}',
        status=301,
        content_type="application/json",
    )
    response.headers["Location"] = location
    return response


def _legacy_view(route: str) -> Any:
    async def view() -> Any:
        return _answer(route)

    view.__name__ = "legacy_" + route.rsplit("/", 1)[-1]
    return hide(view)


for _route in LEGACY_ROUTES:
    blueprint.add_url_rule(_route, view_func=_legacy_view(_route), methods=["GET"])


@blueprint.get("/images/<path:name>")
@hide
async def legacy_image(name: str) -> Any:
    return _answer("/images/<name>", name)

"""The Quart-Trio application: routes, schema, errors, static dashboard.

:func:`create_app` builds the app around a :class:`~gateway.context.GatewayContext`. The REST
API lives under ``/api/v1`` (``gateway.rest``), the WebSockets at ``/ws/device``, ``/ws/client``
and ``/ws/feed``, the dashboard at ``/``, probes at ``/healthz`` and ``/readyz``, metrics at
``/metrics`` and the OpenAPI document at ``/openapi.json`` (a docs page at ``/docs``). In front
of it all, :class:`~gateway.edge.EdgeGuard` limits connections per client address.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from quart import Response, g, request, send_from_directory
from quart_schema import QuartSchema
from quart_schema.extension import hide
from quart_trio import QuartTrio

from gateway.context import GatewayContext
from gateway.edge import EdgeGuard
from gateway.errors import error_response, install_error_handlers
from gateway.routing import MemoMap
from gateway.ws_client import serve_client
from gateway.ws_device import serve_device
from gateway.ws_feed import serve_feed

__all__ = ["STATIC_DIR", "TripwireApp", "create_app"]

STATIC_DIR = Path(__file__).resolve().parent / "static"


class TripwireApp(QuartTrio):
    """QuartTrio whose URL matching leaves no garbage cycles (see ``gateway.routing``)."""

    url_map_class = MemoMap
    edge: EdgeGuard
    """Per-address connection limits in front of the app (``create_app`` installs it)."""


def create_app(ctx: GatewayContext) -> TripwireApp:
    app = TripwireApp("tripwire", static_folder=str(STATIC_DIR), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = ctx.settings.max_body_bytes
    app.config["QUART_SCHEMA_CONVERT_CASING"] = False
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = 5
    app.extensions["tripwire"] = ctx
    metrics = ctx.metrics
    metrics.collect_from(ctx)
    QuartSchema(
        app,
        openapi_path="/openapi.json",
        swagger_ui_path="/docs",
        redoc_ui_path=None,
        scalar_ui_path=None,
        info={
            "title": "Tripwire",
            "version": "1",
            "description": "REST API of the Tripwire trading engine.",
        },
        security_schemes={"bearer": {"type": "http", "scheme": "bearer", "bearer_format": "JWT"}},
    )
    install_error_handlers(app)

    @app.before_request
    async def _started() -> None:
        g.started = time.perf_counter()

    @app.after_request
    async def _timed(response: Response) -> Response:
        rule = request.url_rule.rule if request.url_rule else "unmatched"
        started = g.get("started", time.perf_counter())
        metrics.observe_http(
            rule, request.method, response.status_code, time.perf_counter() - started
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.websocket("/ws/device")
    async def ws_device() -> None:
        await serve_device(ctx)

    @app.websocket("/ws/client")
    async def ws_client() -> None:
        await serve_client(ctx)

    @app.websocket("/ws/feed")
    async def ws_feed() -> None:
        await serve_feed(ctx)

    @app.get("/healthz")
    @hide
    async def healthz() -> Any:
        """Alive: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    @hide
    async def readyz() -> Any:
        """Ready: the database answers and the actors run."""
        db_ok = ctx.db is None or await ctx.db.is_alive()
        actors_ok = ctx.ready and bool(ctx.node.symbols)
        if db_ok and actors_ok:
            return {"status": "ready", "database": True, "actors": True}
        response = error_response(
            "not_ready", "not ready", 503, {"database": db_ok, "actors": actors_ok}
        )
        return response

    @app.get("/metrics")
    @hide
    async def prometheus() -> Any:
        return Response(metrics.render(), content_type="text/plain; version=0.0.4")

    @app.get("/")
    @hide
    async def dashboard() -> Any:
        return await send_from_directory(str(STATIC_DIR), "index.html")

    from gateway.rest import register

    register(app)
    # Quart's documented middleware hook is replacing ``asgi_app``. It declares Hypercorn's
    # TypedDict scopes and events; EdgeGuard, a plain ASGI middleware, the generic mappings.
    edge = EdgeGuard(
        app.asgi_app,  # type: ignore[arg-type]
        max_http=ctx.settings.max_http_per_address,
        max_ws=ctx.settings.max_ws_per_address,
    )
    app.asgi_app = edge  # type: ignore[method-assign, assignment]
    ctx.edge = app.edge = edge
    return app

"""The REST API under ``/api/v1``: one blueprint per resource, registered by :func:`register`.

=================  ==========================================================================
``auth``           log in (JWT), who am I
``users``          the caller's trading settings; users created by an admin
``notifications``  the caller's notifications: events, webhook (signed), Telegram bot
``signals``        signed strategy signals in (deduplicated); the caller's signals out
``approvals``      decide on a signal (open a position), the history of decisions
``positions``      live positions and the history; close by hand
``exports``        the positions as CSV (streamed)
``devices``        register (secret shown once), list, rotate, revoke
``ops``            reconciliation, guards, alerts, the audit log
``market``         latest prices, candles from the candle book
``analytics``      P&L, Sharpe ratio, drawdown, equity curve, RSI
``charts``         equity and candle PNGs, rendered off the event loop
``legacy``         the old Flask routes: 301 to their new home, or 410
=================  ==========================================================================

:func:`register` also makes a JSON body that is not UTF-8 a 400 (``JsonRequest``), makes
``/openapi.json`` a complete document (components, examples, binary responses) and ``/docs``
work offline (``gateway.rest.docs``), starts the candle book's
sampler with the app (and stops it with it), adds the API's counters to ``/metrics``, and
answers a request for a user another node serves with 307 (``gateway.rest.placement``).
"""

from __future__ import annotations

from quart_trio import QuartTrio

from gateway.context import GatewayContext
from gateway.rest import (
    analytics,
    approvals,
    auth,
    charts,
    devices,
    exports,
    legacy,
    market,
    notifications,
    ops,
    positions,
    signals,
    users,
)
from gateway.rest.common import JsonRequest
from gateway.rest.docs import install_openapi
from gateway.rest.examples import EXAMPLES
from gateway.rest.market import candle_book
from gateway.rest.metrics import RestCollector
from gateway.rest.placement import install_redirects

__all__ = ["BLUEPRINTS", "register"]

BLUEPRINTS = (
    auth.blueprint,
    users.blueprint,
    notifications.blueprint,
    signals.blueprint,
    approvals.blueprint,
    positions.blueprint,
    exports.blueprint,
    devices.blueprint,
    ops.blueprint,
    market.blueprint,
    analytics.blueprint,
    charts.blueprint,
    legacy.blueprint,
)


def register(app: QuartTrio) -> None:
    app.request_class = JsonRequest
    install_redirects(app)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    install_openapi(app, EXAMPLES)
    context: GatewayContext = app.extensions["tripwire"]
    context.metrics.registry.register(RestCollector(context))
    book = candle_book(context)

    @app.before_serving
    async def _start_candles() -> None:
        app.nursery.start_soon(book.run, context.node.prices, context.clock)

    @app.after_serving
    async def _stop_candles() -> None:
        book.stop()

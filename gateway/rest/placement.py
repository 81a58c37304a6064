"""Which REST routes a node answers only for the users it serves, and the redirect it sends.

In cluster mode a user's actors (its user actor, its device actors, its live positions and
guards) run on the one node that owns the user's partition (``gateway.placement``). A route
that asks one of those actors to do something, or answers from their memory, is served by that
node only: any other node answers ``307 Temporary Redirect`` with ``Location`` = the owner's
base URL + the same path and query, and a JSON body ``{"code": "moved", "details":
{"partition", "epoch"}}``; while nobody owns the partition, ``503`` with ``Retry-After``
(``"code": "unowned"``). 307 (not 301/302) keeps the method and the body. The check runs
after authentication and after the route's own permission check, so a caller learns nothing
about placement it could not learn by asking for itself.

Redirected, by whose actor they reach:

=========================================================  ====================================
``POST /signals/{s}/{id}/{v}/decision``                    the caller's user actor decides
``PUT /me/settings``                                       applied to the caller's user actor
``GET``, ``PUT /me/notifications``                         the owner's notifier holds them
``POST /positions/{id}/close``                             the position owner's user actor
``PATCH /positions/{id}``                                  the position owner's user actor
``POST /positions/{id}/adopt``                             the position owner's user actor
``GET /positions?state=open|all`` (one user)               live positions: the user actor
``GET /positions.csv?state=open|all`` (one user)           live positions: the user actor
``GET /guards``                                            the user actor's drawdown guard
``GET /analytics``, ``GET /charts/equity.png``             the user actor's ledger, positions
``GET /reconciliation`` (one user)                         the device actors' live state
``GET /devices`` (one user), ``GET /devices/{id}``         the device actors' live state
``POST /devices/{id}/revoke``                              ends the device actor's session
``GET /signals``, ``GET /signals/{s}/{id}/{v}``            the caller's decisions (its state)
``POST /users/{id}/disable`` (admins)                      ends that user's streams, sessions
=========================================================  ====================================

Served by any node: what Postgres (the projections and the registry, shared by every node)
answers: the history (``GET /positions?state=closed``, the default CSV export), one position
(``GET /positions/{id}``: the projection off the owner), approvals, alerts, the audit log,
``/auth/*``, ``GET /me/settings``, ``POST /devices`` and ``rotate`` (the registry), ``POST
/users``, ``POST /signals`` (a strategy's signal is for every audience), market data and candle
charts. An admin's read of everyone (no ``user_id``) is served where it lands: its live part
covers the users of that node.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from quart import Quart, jsonify, request

from gateway.placement import ServedElsewhere, redirect_response, require_local
from gateway.rest.common import ctx

__all__ = ["install_redirects", "serve_here"]


def serve_here(user_id: str | None) -> None:
    """Go on if this node serves ``user_id`` (None: a read of everyone, served anywhere).

    Raises:
        ServedElsewhere: another node serves the user, or nobody does right now (the app
            answers 307 or 503).
    """
    if user_id is not None:
        require_local(ctx().ownership, user_id)


def _path_and_query() -> str:
    """The request's path and query as the client sent them (still percent-encoded)."""
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if raw else quote(request.path)
    query = request.query_string.decode("latin-1")
    return f"{path}?{query}" if query else path


def install_redirects(app: Quart) -> None:
    """Answer :class:`ServedElsewhere` with its 307 or 503."""

    @app.errorhandler(ServedElsewhere)
    async def on_served_elsewhere(exc: ServedElsewhere) -> Any:
        status, headers, body = redirect_response(exc.placement, _path_and_query())
        response = jsonify(body)
        response.status_code = status
        response.headers.update(headers)
        return response

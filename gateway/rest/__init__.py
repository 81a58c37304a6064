"""The REST API under ``/api/v1``: one blueprint per resource, registered by :func:`register`."""

from __future__ import annotations

from quart import Quart

from gateway.rest import auth

__all__ = ["register"]

BLUEPRINTS = (auth.blueprint,)


def register(app: Quart) -> None:
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)

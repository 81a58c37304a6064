"""How the REST handlers describe themselves in ``/openapi.json``, and how they answer.

Every handler documents each status it can answer with (``quart_schema.document_response`` for
its own model, :func:`errors` for the JSON error shape), so schemathesis can hold the server to
the document: an undocumented status or a body off its schema is a failure in the suite.

Handlers answer with :func:`json_response`: the msgspec Struct the route documents, encoded
once by msgspec (the Struct's types are the schema, so what is sent matches what is
documented). Images are documented with :func:`binary`, which the provider below turns into a
``format: binary`` response of the right media type (quart-schema only knows JSON models).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from quart import Quart, Response
from quart_schema import document_response, security_scheme
from quart_schema.openapi import DataSource, OpenAPIProvider
from werkzeug.routing import Rule

__all__ = [
    "ErrorOut",
    "TripwireOpenAPI",
    "bearer",
    "binary",
    "errors",
    "install_openapi",
    "json_response",
    "raw_json",
]

F = TypeVar("F", bound=Callable[..., Any])

_MEDIA_ATTRIBUTE = "_tripwire_media"
_ENCODER = msgspec.json.Encoder()


class ErrorOut(msgspec.Struct, frozen=True, kw_only=True):
    """Every error: a stable machine-readable ``code``, a message, and sometimes details."""

    code: str
    message: str
    details: dict[str, Any] | None = None


def errors(*statuses: int) -> Callable[[F], F]:
    """Document the JSON error body for each of ``statuses``."""

    def decorator(func: F) -> F:
        for status in statuses:
            func = document_response(ErrorOut, status)(func)
        return func

    return decorator


bearer = security_scheme([{"bearer": []}])
"""Marks a route as needing ``Authorization: Bearer <JWT>``."""


def binary(content_type: str, status: int = 200, description: str = "") -> Callable[[F], F]:
    """Document a non-JSON body (``image/png``) answered with ``status``."""

    def decorator(func: F) -> F:
        media: dict[int, tuple[str, str]] = dict(getattr(func, _MEDIA_ATTRIBUTE, {}))
        media[status] = (content_type, description)
        setattr(func, _MEDIA_ATTRIBUTE, media)
        return func

    return decorator


def json_response(value: Any, status: int = 200) -> Response:
    """``value`` (a Struct, or builtins) encoded by msgspec as the response body."""
    return raw_json(_ENCODER.encode(value), status)


def raw_json(body: bytes, status: int = 200) -> Response:
    """An already encoded JSON body (from the read cache, or spliced from cached parts)."""
    return Response(body, status=status, content_type="application/json")


class TripwireOpenAPI(OpenAPIProvider):
    """quart-schema's provider, plus the binary responses declared with :func:`binary`, and
    request bodies marked ``required`` (every documented body is: a route that reads one
    answers 400 without it, and OpenAPI's default is optional)."""

    def build_request_body(
        self, model: type[Any], source: DataSource
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        body, definitions = super().build_request_body(model, source)
        return {**body, "required": True}, definitions

    def build_paths(self, rule: Rule) -> tuple[dict[str, Any], dict[str, Any]]:
        paths, components = super().build_paths(rule)
        func = self._app.view_functions[rule.endpoint]
        media: dict[int, tuple[str, str]] = getattr(func, _MEDIA_ATTRIBUTE, {})
        if media:
            for operations in paths.values():
                for operation in operations.values():
                    responses = dict(operation["responses"])
                    for status, (content_type, description) in media.items():
                        responses[status] = {
                            "description": description,
                            "content": {
                                content_type: {"schema": {"type": "string", "format": "binary"}}
                            },
                        }
                    operation["responses"] = responses
        return paths, components


def install_openapi(app: Quart) -> None:
    """Use :class:`TripwireOpenAPI` for the app's ``/openapi.json`` (QuartSchema is set up)."""
    extension = app.extensions["QUART_SCHEMA"]
    extension.openapi_provider = TripwireOpenAPI(app, extension)

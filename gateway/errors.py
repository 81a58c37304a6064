"""Every error the REST API returns: JSON ``{"code", "message", "details"?}``, never a trace.

The HTTP status follows the project's exception hierarchy (``protocol.errors``); the ``code``
is the error's stable code. Framework errors (unknown route, wrong method, a body over the size
limit, a schema violation) get the same shape. Anything unexpected is logged with its stack and
answered ``500 {"code": "internal"}``.
"""

from __future__ import annotations

from typing import Any

import structlog
from quart import Quart, jsonify
from quart_schema import RequestSchemaValidationError
from werkzeug.exceptions import HTTPException

from protocol.errors import (
    AuthError,
    Conflict,
    Forbidden,
    FrameTooLarge,
    NotFound,
    PeerError,
    ProtocolError,
    RateLimited,
    Refused,
    StorageError,
    TripwireError,
)
from protocol.redaction import peer_error

__all__ = ["error_response", "install_error_handlers", "status_of"]

_STATUS: tuple[tuple[type[TripwireError], int], ...] = (
    (AuthError, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (Conflict, 409),
    (RateLimited, 429),
    (FrameTooLarge, 413),
    (ProtocolError, 400),
    (PeerError, 400),
    (Refused, 422),
    (StorageError, 503),
)

_HTTP_CODES = {
    400: "malformed",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def status_of(exc: TripwireError) -> int:
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def error_response(
    code: str, message: str, status: int, details: dict[str, Any] | None = None
) -> Any:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    response = jsonify(body)
    response.status_code = status
    return response


def install_error_handlers(app: Quart) -> None:
    log = structlog.get_logger().bind(component="rest")

    @app.errorhandler(TripwireError)
    async def on_tripwire_error(exc: TripwireError) -> Any:
        status = status_of(exc)
        code, message, details = (
            peer_error(exc) if status < 500 else ("internal", "internal error", None)
        )
        if status >= 500 and isinstance(exc, StorageError):
            code, message = exc.code, "the durable store is unavailable; try again shortly"
        response = error_response(code, message, status, details)
        if isinstance(exc, RateLimited) and "retry_after_s" in exc.details:
            response.headers["Retry-After"] = str(int(exc.details["retry_after_s"]) + 1)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="tripwire"'
        if status >= 500:
            log.error("request failed", code=exc.code, error=exc.message)
        return response

    @app.errorhandler(RequestSchemaValidationError)
    async def on_schema_error(exc: RequestSchemaValidationError) -> Any:
        return error_response(
            "malformed", f"the request does not match its schema: {exc.validation_error}", 400
        )

    @app.errorhandler(HTTPException)
    async def on_http_error(exc: HTTPException) -> Any:
        status = exc.code or 500
        response = error_response(
            _HTTP_CODES.get(status, "http_error"), exc.description or exc.name, status
        )
        # The exception's own headers: a 405 must say which methods are allowed (RFC 9110).
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    async def on_unexpected(exc: Exception) -> Any:
        log.error("unexpected error", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        return error_response("internal", "internal error", 500)

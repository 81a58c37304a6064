"""What the REST handlers share: the caller's identity, address and agent, JSON bodies."""

from __future__ import annotations

from typing import Any

import msgspec
from quart import request

from gateway.auth import Identity
from gateway.context import GatewayContext, current_context
from protocol.errors import DecodeError

__all__ = ["caller", "client_address", "ctx", "decode_body", "identity", "user_agent"]


def ctx() -> GatewayContext:
    return current_context()


def identity() -> Identity:
    """The verified identity of the request's bearer token (raises AuthError -> 401)."""
    return ctx().tokens.verify_header(request.headers.get("Authorization"))


def client_address() -> str:
    return request.remote_addr or ""


def user_agent() -> str:
    return (request.headers.get("User-Agent") or "")[:512]


def caller() -> tuple[Identity, str, str]:
    """``(identity, address, user agent)`` of the request."""
    return identity(), client_address(), user_agent()


async def decode_body(kind: type[Any]) -> Any:
    """The JSON body as ``kind`` (a msgspec Struct); malformed bodies are a 400."""
    raw = await request.get_data()
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.DecodeError as exc:
        raise DecodeError(f"the request body is not valid: {exc}") from None

"""What the REST handlers share: the caller's identity, address and agent, JSON bodies, and
the audit trail of what they did."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import msgspec
from msgspec import Meta
from quart import Blueprint, g, request
from quart_trio.wrappers import TrioRequest

from gateway.auth import Identity
from gateway.context import GatewayContext, current_context
from gateway.errors import status_of
from gateway.rest.metrics import count_action
from gateway.services import audit
from protocol.errors import AuthError, DecodeError, Forbidden, StorageError, TripwireError

__all__ = [
    "AuditNote",
    "Before",
    "JsonRequest",
    "Label",
    "audited",
    "caller",
    "client_address",
    "ctx",
    "decode_body",
    "identity",
    "require_token",
    "scope_user",
    "user_agent",
]


Before = Annotated[int, Meta(ge=0, le=253_402_300_799_999)]
"""A paging bound in ms since the epoch: up to the last millisecond of year 9999, the last a
timestamp can hold (a wire ``TimeMs`` goes to 2**53, which no date can be)."""


Label = Annotated[str, Meta(max_length=64, pattern="^[^\\x00-\\x1f\\x7f\\ud800-\\udfff]*$")]
"""Free text a user names things with: no control characters and no lone surrogates (Postgres
stores neither a NUL nor a surrogate)."""


class JsonRequest(TrioRequest):
    """The app's request: a JSON body that is not UTF-8, or nested too deeply to parse, is
    malformed (400), like bad JSON.

    Quart decodes the body as text before its JSON error handling, so invalid UTF-8 would
    otherwise escape as an unexpected error (a 500); the standard parser gives up on deep
    nesting (``[[[[...``) with a ``RecursionError``, which is no ``ValueError`` either.
    """

    async def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        try:
            return await super().get_json(force, silent, cache)
        except UnicodeDecodeError as error:
            return None if silent else self.on_json_loading_failed(error)
        except RecursionError:
            if silent:
                return None
            raise DecodeError("the JSON body is nested too deeply") from None


def ctx() -> GatewayContext:
    return current_context()


def identity() -> Identity:
    """The verified identity of the request's bearer token, of a user who is still active
    (raises AuthError -> 401).

    A token outlives what it stands for: a user disabled after login still holds a valid
    signature until ``exp``. So every request also asks the registry, whose in-memory users are
    the cache (no SQL per request) and which the disable route updates before it answers.
    Verified once per request and kept in ``g``.
    """
    verified: Identity | None = g.get("identity")
    if verified is None:
        context = ctx()
        verified = context.tokens.verify_header(request.headers.get("Authorization"))
        if not context.registry.is_active(verified.user_id):
            raise AuthError("the account is disabled")
        g.identity = verified
    return verified


def require_token(blueprint: Blueprint, *, exempt: tuple[str, ...] = ()) -> None:
    """Authenticate every request of ``blueprint`` before its body or query is looked at, so
    a caller without a valid token learns nothing but 401.

    ``exempt`` names endpoints (``"signals.post_signal"``) that authenticate otherwise.
    """

    @blueprint.before_request
    async def _authenticate() -> None:
        if request.endpoint not in exempt:
            identity()


def scope_user(requested: str | None, *, everyone: bool = True) -> str | None:
    """Whose data a read covers: the caller's own, or (admins only) ``requested``'s.

    An admin who names nobody reads everyone's (``None``) when ``everyone``, else their own.

    Raises:
        Forbidden: a user who is not an admin names somebody else.
    """
    who = identity()
    if requested is None:
        return None if who.is_admin and everyone else who.user_id
    if requested != who.user_id and not who.is_admin:
        raise Forbidden("only admins may read another user's data")
    return requested


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


class AuditNote:
    """What an :func:`audited` block records: its outcome on success and extra detail."""

    def __init__(self, target_id: str, outcome: str) -> None:
        self.target_id = target_id
        self.outcome = outcome
        self.detail: dict[str, Any] = {}


@asynccontextmanager
async def audited(
    action: str, target_type: str, target_id: str, outcome: str
) -> AsyncIterator[AuditNote]:
    """Audit what the block does, as the caller, from their address and agent.

    On success the entry says ``outcome`` (a block may change it and add ``detail``); a
    :class:`TripwireError` is recorded as ``"<status>:<code>"`` (``"409:conflict"``) and
    re-raised. The entry is committed before the block's answer leaves: a 2xx is durable.
    """
    who, address, agent = caller()
    note = AuditNote(target_id, outcome)
    try:
        yield note
    except TripwireError as exc:
        failed = f"{status_of(exc)}:{exc.code}"
        count_action(ctx(), action, failed)
        if not isinstance(exc, StorageError):  # the audit could not be written either
            await audit(
                ctx(),
                actor_id=who.user_id,
                action=action,
                target_type=target_type,
                target_id=note.target_id[:200],
                outcome=failed,
                ip=address,
                user_agent=agent,
                **note.detail,
            )
        raise
    count_action(ctx(), action, note.outcome)
    await audit(
        ctx(),
        actor_id=who.user_id,
        action=action,
        target_type=target_type,
        target_id=note.target_id[:200],
        outcome=note.outcome,
        ip=address,
        user_agent=agent,
        **note.detail,
    )

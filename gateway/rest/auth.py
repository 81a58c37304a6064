"""Authentication endpoints: log in (JWT), who am I."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta
from quart import Blueprint
from quart_schema import validate_request, validate_response

from gateway.rest.common import caller, client_address, ctx, user_agent
from gateway.rest.docs import bearer, errors
from gateway.services import audit
from persistence.logs import get_logger
from protocol.errors import AuthError, RateLimited

__all__ = ["blueprint"]

blueprint = Blueprint("auth", __name__, url_prefix="/api/v1/auth")


class Login(msgspec.Struct, frozen=True, kw_only=True):
    username: Annotated[str, Meta(min_length=1, max_length=64)]
    password: Annotated[str, Meta(min_length=1, max_length=256)]


class UserOut(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    username: str
    role: Literal["user", "admin"]


class Token(msgspec.Struct, frozen=True, kw_only=True):
    access_token: str
    token_type: str = "bearer"
    expires_at: int
    """Unix seconds."""
    user: UserOut


@blueprint.post("/login")
@validate_request(Login)
@validate_response(Token, 200)
@errors(400, 401, 413, 429)
async def login(data: Login) -> Any:
    """Exchange a username and password for an access token (rate limited per user and
    address, and per address; a few password checks at once, the rest are answered 429)."""
    context = ctx()
    address = client_address()
    wait = context.limiter.check(data.username, address)
    if wait > 0:
        context.counters.logins["rate_limited"] += 1
        raise RateLimited("too many login attempts", retry_after_s=round(wait, 1))
    try:
        async with context.hashing.slot():
            found = await context.registry.authenticate(data.username, data.password)
    except RateLimited:
        context.counters.logins["busy"] += 1
        raise
    if found is None:
        context.counters.logins["failed"] += 1
        get_logger().info("login refused", username=data.username[:64], remote=address)
        await audit(
            context,
            actor_id=None,
            action="auth.login",
            target_type="user",
            target_id=data.username[:64],
            outcome="401",
            ip=address,
            user_agent=user_agent(),
        )
        raise AuthError("wrong username or password")
    token, expires = context.tokens.issue(found.user_id, found.role)
    user = context.registry.user(found.user_id)
    context.counters.logins["ok"] += 1
    get_logger(user_id=found.user_id).info("login", role=found.role, remote=address)
    await audit(
        context,
        actor_id=found.user_id,
        action="auth.login",
        target_type="user",
        target_id=found.user_id,
        outcome="200",
        ip=address,
        user_agent=user_agent(),
    )
    return Token(
        access_token=token,
        expires_at=expires,
        user=UserOut(id=user.id, username=user.username, role=user.role),
    )


@blueprint.get("/me")
@bearer
@validate_response(UserOut, 200)
@errors(401, 404)
async def me() -> Any:
    """The caller."""
    who, _, _ = caller()
    user = ctx().registry.user(who.user_id)
    return UserOut(id=user.id, username=user.username, role=user.role)

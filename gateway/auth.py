"""Authentication: passwords, JWTs, the login rate limit, and who may do what.

* Passwords are hashed with argon2id (``argon2-cffi``); verification runs in a worker thread
  because argon2 is deliberately slow (~50 ms) and must not stall the event loop.
* Access tokens are JWTs signed with HS256 under the node's secret, carrying ``sub`` (user id),
  ``role`` (``user`` or ``admin``), ``iat``, ``exp`` and ``jti``. Verification pins the
  algorithm, so ``alg: none`` and algorithm confusion are refused; an expired, tampered or
  malformed token is a 401 with a stable code.
* Logins are rate limited per (username, client address) with a token bucket: a burst of
  attempts, then one attempt per refill period; the 429 says when to come back.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from typing import Any, Literal

import jwt
import msgspec
import trio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from protocol.errors import AuthError, BadSignature, Forbidden, SignatureExpired

__all__ = [
    "Identity",
    "LoginLimiter",
    "Role",
    "TokenIssuer",
    "hash_password",
    "require_role",
    "verify_password",
]

Role = Literal["user", "admin"]
_HASHER = PasswordHasher()


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    """Who a request is from (a verified token)."""

    user_id: str
    role: Role
    token_id: str = ""
    expires_at: int = 0
    """When the token expires (Unix seconds; 0: not from a token). A stream that outlives a
    request (``/ws/client``) ends then."""

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_act_for(self, owner_id: str) -> bool:
        """Owners act on their own things; admins on anyone's."""
        return self.is_admin or self.user_id == owner_id


def hash_password(password: str) -> str:
    """An argon2id hash (slow on purpose: call from a worker thread in request paths)."""
    return _HASHER.hash(password)


async def verify_password(password_hash: str, password: str) -> bool:
    """True if ``password`` matches; runs argon2 off the event loop."""

    def check() -> bool:
        try:
            return _HASHER.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    return await trio.to_thread.run_sync(check)


def require_role(identity: Identity, role: Role) -> None:
    """Raises :class:`Forbidden` unless ``identity`` has ``role`` (admins have every role)."""
    if role == "admin" and not identity.is_admin:
        raise Forbidden("this needs the admin role")


class TokenIssuer:
    """Issues and verifies access tokens (HS256 only)."""

    ALGORITHM = "HS256"

    VERIFIED_CACHE = 10_000
    """Tokens whose signature was checked once: a dashboard polling the API presents the same
    token many times a second, and PyJWT's full check was ~5 % of a REST read (bench.rest)."""

    def __init__(self, secret: bytes, ttl_s: int = 3600, issuer: str = "tripwire") -> None:
        if len(secret) < 32:
            raise ValueError("the JWT secret must be at least 32 bytes")
        self._secret = secret
        self.ttl_s = ttl_s
        self.issuer = issuer
        # token -> (identity, exp): only tokens that passed the full check get here, and the
        # expiry is checked again on every use, so a hit can never accept what a miss refuses.
        self._verified: OrderedDict[str, tuple[Identity, int]] = OrderedDict()

    def issue(self, user_id: str, role: Role, now_s: float | None = None) -> tuple[str, int]:
        """A new token and its expiry (Unix seconds)."""
        now = int(time.time() if now_s is None else now_s)
        expires = now + self.ttl_s
        claims = {
            "sub": user_id,
            "role": role,
            "iat": now,
            "exp": expires,
            "iss": self.issuer,
            "jti": secrets.token_urlsafe(12),
        }
        return jwt.encode(claims, self._secret, algorithm=self.ALGORITHM), expires

    def verify(self, token: str) -> Identity:
        """The identity a token proves.

        Raises:
            SignatureExpired: the token has expired.
            BadSignature: the token is malformed, tampered, unsigned (``alg: none``) or signed
                with another algorithm or key.
        """
        hit = self._verified.get(token)
        if hit is not None:
            identity, expires = hit
            if expires <= time.time():  # PyJWT's rule: expired once exp <= now
                del self._verified[token]
                raise SignatureExpired("the access token has expired")
            return identity
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[self.ALGORITHM],
                issuer=self.issuer,
                options={"require": ["sub", "exp", "iat", "role"]},
                leeway=0,
            )
        except jwt.ExpiredSignatureError:
            raise SignatureExpired("the access token has expired") from None
        except jwt.PyJWTError:
            raise BadSignature("the access token is not valid") from None
        role = claims.get("role")
        if role not in ("user", "admin") or not isinstance(claims.get("sub"), str):
            raise BadSignature("the access token is not valid")
        expires = int(claims["exp"])
        identity = Identity(
            user_id=claims["sub"],
            role=role,
            token_id=str(claims.get("jti", "")),
            expires_at=expires,
        )
        self._verified[token] = (identity, expires)
        if len(self._verified) > self.VERIFIED_CACHE:
            self._verified.popitem(last=False)
        return identity

    def verify_header(self, header: str | None) -> Identity:
        """The identity of an ``Authorization: Bearer <token>`` header."""
        if not header or not header.startswith("Bearer "):
            raise AuthError("an Authorization: Bearer token is required")
        return self.verify(header[7:].strip())


class LoginLimiter:
    """A token bucket per (username, address): ``burst`` attempts, one more every ``refill_s``.

    Bounded: the oldest buckets are forgotten past ``max_keys`` (an attacker cycling names only
    forgets their own old buckets).
    """

    def __init__(self, burst: int = 5, refill_s: float = 12.0, max_keys: int = 100_000) -> None:
        self.burst = burst
        self.refill_s = refill_s
        self.max_keys = max_keys
        self._buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()

    def check(self, username: str, address: str, now: float | None = None) -> float:
        """Take one attempt; returns 0 if allowed, else the seconds to wait."""
        now = time.monotonic() if now is None else now
        key = (username.lower(), address)
        tokens, stamp = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - stamp) / self.refill_s)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) * self.refill_s
        self._buckets[key] = (tokens - 1.0, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return 0.0

"""Authentication: passwords, JWTs, the login rate limit, and who may do what.

* Passwords are hashed with argon2id (``argon2-cffi``); verification runs in a worker thread
  because argon2 is deliberately slow (~50 ms) and must not stall the event loop. Each check
  also takes 64 MiB, so a :class:`HashingGate` bounds how many run at once: a login flood gets
  fast 429s instead of the engine's memory. An unknown username is verified against a dummy
  hash with the same parameters, so it costs (and takes) what a wrong password does.
* Access tokens are JWTs signed with HS256 under the node's secret, carrying ``sub`` (user id),
  ``role`` (``user`` or ``admin``), ``iat``, ``exp`` and ``jti``. Verification pins the
  algorithm, so ``alg: none`` and algorithm confusion are refused; an expired, tampered or
  malformed token is a 401 with a stable code.
* Logins are rate limited per (username, client address) and per client address with token
  buckets: a burst of attempts, then one attempt per refill period; the 429 says when to come
  back. The per-address bucket slows one password tried across many usernames.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import jwt
import msgspec
import trio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from protocol.errors import AuthError, BadSignature, Forbidden, RateLimited, SignatureExpired

__all__ = [
    "ARGON2",
    "Argon2Stats",
    "HashingGate",
    "Identity",
    "LoginLimiter",
    "Role",
    "TokenIssuer",
    "bearer_token",
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


class Argon2Stats:
    """How many argon2 computations run now, the most that ever ran at once, and how many
    verifications were against the dummy hash (unknown users). Updated from worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.verifications = 0
        self.dummy_verifications = 0

    def enter(self, *, dummy: bool) -> None:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.verifications += 1
            self.dummy_verifications += dummy

    def leave(self) -> None:
        with self._lock:
            self.running -= 1


ARGON2 = Argon2Stats()
"""The process's argon2 verifications (exported for tests and metrics)."""

_dummy_hash: list[str] = []  # one hash, made on first use
_dummy_lock = threading.Lock()


def _the_dummy_hash() -> str:
    """A hash of a random password with the same parameters as every real one, made once (on
    the first unknown username, in a worker thread) and reused: verifying against it costs
    exactly one argon2 check, the same memory and time as a wrong password. Anything cheaper
    would tell an attacker by its timing that the name does not exist."""
    with _dummy_lock:
        if not _dummy_hash:
            _dummy_hash.append(_HASHER.hash(secrets.token_urlsafe(24)))
        return _dummy_hash[0]


def hash_password(password: str) -> str:
    """An argon2id hash (slow on purpose: call from a worker thread in request paths)."""
    return _HASHER.hash(password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    """True if ``password`` matches; runs argon2 off the event loop.

    ``None`` (no such user) verifies against the dummy hash and is always False.
    """

    def check() -> bool:
        dummy = password_hash is None
        stored = _the_dummy_hash() if password_hash is None else password_hash
        ARGON2.enter(dummy=dummy)
        try:
            return _HASHER.verify(stored, password) and not dummy
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        finally:
            ARGON2.leave()

    return await trio.to_thread.run_sync(check)


class HashingGate:
    """At most ``limit`` password checks at once; the rest are refused at once (429), never
    queued: a queue of waiting logins would hold their connections and memory just the same.

    Sized for the machine's cores (argon2 is CPU and memory bound: 64 MiB per check).
    """

    def __init__(self, limit: int = 2) -> None:
        self.limit = limit
        self._slots = trio.Semaphore(limit)
        self.refused = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the block.

        Raises:
            RateLimited: every slot is taken (answered with ``Retry-After: 1``).
        """
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            self.refused += 1
            raise RateLimited(
                "the server is busy checking other logins; try again shortly", retry_after_s=0
            ) from None
        try:
            yield
        finally:
            self._slots.release()


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
        token = bearer_token(header)
        if token is None:
            raise AuthError("an Authorization: Bearer token is required")
        return self.verify(token)


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None.

    The scheme name is case-insensitive (RFC 7235 section 2.1): ``bearer`` works too.
    """
    scheme, _, token = (header or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class LoginLimiter:
    """Token buckets per (username, address) and per address: ``burst`` attempts, one more
    every ``refill_s``; ``address_burst`` and ``address_refill_s`` for the address alone.

    The first bucket stops guessing one user's password; the second stops one address trying
    a password across many usernames (each new name would get a fresh first bucket). An
    attempt needs a token from both, and a refused attempt takes from neither.

    Bounded: the oldest buckets are forgotten past ``max_keys`` (an attacker cycling names only
    forgets their own old buckets).
    """

    def __init__(
        self,
        burst: int = 5,
        refill_s: float = 12.0,
        address_burst: int = 20,
        address_refill_s: float = 3.0,
        max_keys: int = 100_000,
    ) -> None:
        self.burst = burst
        self.refill_s = refill_s
        self.address_burst = address_burst
        self.address_refill_s = address_refill_s
        self.max_keys = max_keys
        self._buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()

    def _tokens(self, key: tuple[str, str], burst: int, refill_s: float, now: float) -> float:
        tokens, stamp = self._buckets.pop(key, (float(burst), now))
        return min(float(burst), tokens + (now - stamp) / refill_s)

    def check(self, username: str, address: str, now: float | None = None) -> float:
        """Take one attempt; returns 0 if allowed, else the seconds to wait."""
        now = time.monotonic() if now is None else now
        # A username is never empty (the login schema), so ("", address) is the address's own.
        user_key, address_key = (username.lower(), address), ("", address)
        user = self._tokens(user_key, self.burst, self.refill_s, now)
        by_address = self._tokens(address_key, self.address_burst, self.address_refill_s, now)
        wait = max(
            (1.0 - user) * self.refill_s if user < 1.0 else 0.0,
            (1.0 - by_address) * self.address_refill_s if by_address < 1.0 else 0.0,
        )
        if wait == 0.0:
            user, by_address = user - 1.0, by_address - 1.0
        self._buckets[user_key] = (user, now)
        self._buckets[address_key] = (by_address, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait

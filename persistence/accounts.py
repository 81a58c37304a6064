"""Users, their devices and the devices' secrets: the tables behind the gateway's registry.

Every read and write of ``users``, ``devices`` and ``device_secrets`` is here; the registry
(``gateway.registry``) keeps them in memory, generates the secrets and hashes the passwords,
and decides who may do what. A write that touches two tables (a device and its first secret,
a rotation) runs in one transaction, so a crash never leaves a device without a secret or a
rotation half done.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Literal, NamedTuple, Protocol

import asyncpg
import msgspec

from engine.sizing import UserSettings
from persistence.db import Database
from protocol.errors import Conflict

__all__ = [
    "CHANNEL",
    "Accounts",
    "DeviceRow",
    "Role",
    "SecretRow",
    "UserRow",
    "device",
    "devices",
    "insert_device",
    "insert_user",
    "revoke_device",
    "rotate_device_secret",
    "secrets",
    "set_user_disabled",
    "set_user_settings",
    "snapshot",
    "user",
    "users",
]

CHANNEL = "tripwire_registry"
"""The notification channel of every write to users, devices and device secrets."""


Role = Literal["user", "admin"]
"""What the ``users.role`` column's CHECK constraint allows (``gateway.auth`` decides on it)."""


class UserRow(NamedTuple):
    id: str
    username: str
    role: Role
    password_hash: str
    settings: UserSettings
    disabled: bool


class DeviceRow(NamedTuple):
    id: str
    user_id: str
    name: str
    account_login: str
    broker: str
    created_at: datetime
    revoked: bool


class SecretRow(NamedTuple):
    device_id: str
    secret: bytes
    expires_at: datetime | None
    """None: valid until a rotation gives it an end."""


class Accounts(NamedTuple):
    """Every user, device and secret, as of one moment (:func:`snapshot`)."""

    users: list[UserRow]
    devices: list[DeviceRow]
    secrets: list[SecretRow]


class _Fetch(Protocol):
    """``Database.fetch`` or ``asyncpg.Connection.fetch``: the reads run on either."""

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]: ...


_USERS = "SELECT id, username, role, password_hash, settings, disabled_at FROM users"
_DEVICES = "SELECT id, user_id, name, account_login, broker, created_at, revoked_at FROM devices"
_SECRETS = "SELECT device_id, secret, expires_at FROM device_secrets"


def _user(row: asyncpg.Record) -> UserRow:
    return UserRow(
        row["id"],
        row["username"],
        row["role"],
        row["password_hash"],
        msgspec.convert(row["settings"] or {}, UserSettings),
        row["disabled_at"] is not None,
    )


def _device(row: asyncpg.Record) -> DeviceRow:
    return DeviceRow(
        row["id"],
        row["user_id"],
        row["name"],
        row["account_login"],
        row["broker"],
        row["created_at"],
        row["revoked_at"] is not None,
    )


def _secret(row: asyncpg.Record) -> SecretRow:
    return SecretRow(row["device_id"], bytes(row["secret"]), row["expires_at"])


async def users(db: _Fetch) -> list[UserRow]:
    return [_user(row) for row in await db.fetch(_USERS)]


async def devices(db: _Fetch) -> list[DeviceRow]:
    return [_device(row) for row in await db.fetch(_DEVICES)]


async def secrets(db: _Fetch) -> list[SecretRow]:
    """Every device's secrets, oldest first (the order a rotation appended them in)."""
    return [_secret(row) for row in await db.fetch(_SECRETS + " ORDER BY created_at")]


async def snapshot(db: Database) -> Accounts:
    """Every user, device and secret, read in one repeatable-read transaction: no secret of a
    device the devices query missed, no device of a user the users query missed."""

    async def read(conn: asyncpg.Connection) -> Accounts:
        return Accounts(await users(conn), await devices(conn), await secrets(conn))

    return await db.run_in_transaction(read, isolation="repeatable_read")


async def user(db: Database, user_id: str) -> UserRow | None:
    """One user (None: no such user)."""
    row = await db.fetchrow(_USERS + " WHERE id = $1", user_id)
    return None if row is None else _user(row)


async def device(db: Database, device_id: str) -> tuple[DeviceRow, list[SecretRow]] | None:
    """One device and its secrets, oldest first, read together (None: no such device)."""

    async def read(conn: asyncpg.Connection) -> tuple[DeviceRow, list[SecretRow]] | None:
        row = await conn.fetchrow(_DEVICES + " WHERE id = $1", device_id)
        if row is None:
            return None
        found = await conn.fetch(_SECRETS + " WHERE device_id = $1 ORDER BY created_at", device_id)
        return _device(row), [_secret(s) for s in found]

    return await db.run_in_transaction(read, isolation="repeatable_read")


# A one-statement write announces the rows it changed from the same statement (one round trip,
# one transaction): the notification goes out if and only if the change commits.
_NOTIFY_CHANGED = "SELECT pg_notify('{channel}', '{kind}:' || id) FROM changed"


def _announced(kind: str, write: str) -> str:
    """``write`` (a statement ending in ``RETURNING id``), notifying each changed row."""
    return f"WITH changed AS ({write}) " + _NOTIFY_CHANGED.format(channel=CHANNEL, kind=kind)


async def _notify(conn: asyncpg.Connection, kind: str, key: str) -> None:
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, f"{kind}:{key}")


async def _unique(
    call: Callable[..., Awaitable[Any]], message: str, *args: Any, **details: Any
) -> None:
    """``await call(*args)``, a unique violation raised as a ``Conflict``: the row was written
    by another process this one has not heard of yet (or a taken name)."""
    try:
        await call(*args)
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(message, **details) from exc


_USERNAME_LOCK = 0x7477_7573  # "twus": the advisory-lock namespace of usernames


async def insert_user(db: Database, user: UserRow) -> None:
    """Raises :class:`~protocol.errors.Conflict` if the id, or the username in any case, is
    taken.

    Names are unique whatever their case (``Carol`` is ``carol``), but the column's UNIQUE
    constraint is case-sensitive, so two processes creating ``carol`` and ``Carol`` at once
    are kept apart by a transaction-scoped advisory lock on the lower-cased name, held while
    the name is checked and the row written.
    """

    async def insert(conn: asyncpg.Connection) -> None:
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext(lower($2)))", _USERNAME_LOCK, user.username
        )
        if await conn.fetchval(
            "SELECT 1 FROM users WHERE lower(username) = lower($1)", user.username
        ):
            raise Conflict("that username is taken", username=user.username)
        await conn.execute(
            "INSERT INTO users (id, username, role, password_hash, settings) "
            "VALUES ($1, $2, $3, $4, $5)",
            user.id,
            user.username,
            user.role,
            user.password_hash,
            msgspec.to_builtins(user.settings),
        )
        await _notify(conn, "user", user.id)

    await _unique(db.run_in_transaction, "that user id is taken", insert, user_id=user.id)


async def set_user_disabled(db: Database, user_id: str, disabled: bool) -> None:
    """Disable a user (keeping the first time it was disabled), or enable it again."""
    await db.execute(
        _announced(
            "user",
            "UPDATE users SET disabled_at = CASE WHEN $2 THEN coalesce(disabled_at, now()) "
            "END WHERE id = $1 RETURNING id",
        ),
        user_id,
        disabled,
    )


async def set_user_settings(db: Database, user_id: str, settings: UserSettings) -> None:
    await db.execute(
        _announced("user", "UPDATE users SET settings = $2 WHERE id = $1 RETURNING id"),
        user_id,
        msgspec.to_builtins(settings),
    )


async def insert_device(db: Database, device: DeviceRow, secret: bytes) -> None:
    """A new device with its first secret, both or neither.

    Raises :class:`~protocol.errors.Conflict` if the id is taken.
    """

    async def insert(conn: asyncpg.Connection) -> None:
        await conn.execute(
            "INSERT INTO devices (id, user_id, name, account_login, broker, created_at) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            device.id,
            device.user_id,
            device.name,
            device.account_login,
            device.broker,
            device.created_at,
        )
        await conn.execute(
            "INSERT INTO device_secrets (device_id, secret) VALUES ($1, $2)", device.id, secret
        )
        await _notify(conn, "device", device.id)

    await _unique(db.run_in_transaction, "that device id is taken", insert, device_id=device.id)


async def rotate_device_secret(
    db: Database, device_id: str, secret: bytes, now: datetime, until: datetime
) -> None:
    """Add ``secret`` (created ``now``) and end every other secret of the device at ``until``
    at the latest (one ending sooner keeps its end)."""

    async def rotate(conn: asyncpg.Connection) -> None:
        await conn.execute(
            "UPDATE device_secrets SET expires_at = $2 WHERE device_id = $1 "
            "AND (expires_at IS NULL OR expires_at > $2)",
            device_id,
            until,
        )
        await conn.execute(
            "INSERT INTO device_secrets (device_id, secret, created_at) VALUES ($1, $2, $3)",
            device_id,
            secret,
            now,
        )
        await _notify(conn, "device", device_id)

    await db.run_in_transaction(rotate)


async def revoke_device(db: Database, device_id: str) -> None:
    """Mark the device revoked (a second revocation keeps the first time)."""
    await db.execute(
        _announced(
            "device",
            "UPDATE devices SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL "
            "RETURNING id",
        ),
        device_id,
    )

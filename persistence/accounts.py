"""Users, their devices and the devices' secrets: the tables behind the gateway's registry.

Every read and write of ``users``, ``devices`` and ``device_secrets`` is here; the registry
(``gateway.registry``) keeps them in memory, generates the secrets and hashes the passwords,
and decides who may do what. A write that touches two tables (a device and its first secret,
a rotation) runs in one transaction, so a crash never leaves a device without a secret or a
rotation half done.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, NamedTuple

import asyncpg
import msgspec

from engine.sizing import UserSettings
from persistence.db import Database

__all__ = [
    "DeviceRow",
    "Role",
    "SecretRow",
    "UserRow",
    "devices",
    "insert_device",
    "insert_user",
    "revoke_device",
    "rotate_device_secret",
    "secrets",
    "set_user_disabled",
    "set_user_settings",
    "users",
]


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


async def users(db: Database) -> list[UserRow]:
    return [
        UserRow(
            row["id"],
            row["username"],
            row["role"],
            row["password_hash"],
            msgspec.convert(row["settings"] or {}, UserSettings),
            row["disabled_at"] is not None,
        )
        for row in await db.fetch(
            "SELECT id, username, role, password_hash, settings, disabled_at FROM users"
        )
    ]


async def devices(db: Database) -> list[DeviceRow]:
    return [
        DeviceRow(
            row["id"],
            row["user_id"],
            row["name"],
            row["account_login"],
            row["broker"],
            row["created_at"],
            row["revoked_at"] is not None,
        )
        for row in await db.fetch(
            "SELECT id, user_id, name, account_login, broker, created_at, revoked_at FROM devices"
        )
    ]


async def secrets(db: Database) -> list[SecretRow]:
    """Every device's secrets, oldest first (the order a rotation appended them in)."""
    return [
        SecretRow(row["device_id"], bytes(row["secret"]), row["expires_at"])
        for row in await db.fetch(
            "SELECT device_id, secret, expires_at FROM device_secrets ORDER BY created_at"
        )
    ]


async def insert_user(db: Database, user: UserRow) -> None:
    """Raises asyncpg's ``UniqueViolationError`` if the id or the username is taken."""
    await db.execute(
        "INSERT INTO users (id, username, role, password_hash, settings) "
        "VALUES ($1, $2, $3, $4, $5)",
        user.id,
        user.username,
        user.role,
        user.password_hash,
        msgspec.to_builtins(user.settings),
    )


async def set_user_disabled(db: Database, user_id: str, disabled: bool) -> None:
    """Disable a user (keeping the first time it was disabled), or enable it again."""
    await db.execute(
        "UPDATE users SET disabled_at = CASE WHEN $2 THEN coalesce(disabled_at, now()) "
        "END WHERE id = $1",
        user_id,
        disabled,
    )


async def set_user_settings(db: Database, user_id: str, settings: UserSettings) -> None:
    await db.execute(
        "UPDATE users SET settings = $2 WHERE id = $1", user_id, msgspec.to_builtins(settings)
    )


async def insert_device(db: Database, device: DeviceRow, secret: bytes) -> None:
    """A new device with its first secret, both or neither."""

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

    await db.run_in_transaction(insert)


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

    await db.run_in_transaction(rotate)


async def revoke_device(db: Database, device_id: str) -> None:
    """Mark the device revoked (a second revocation keeps the first time)."""
    await db.execute(
        "UPDATE devices SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", device_id
    )

"""Users and devices: the durable directory (Postgres), cached in memory for the hot paths.

The handshake needs a device's valid secrets, the node needs who owns a device and a user's
settings; both are answered from memory. Changes (a new user, a device registered, a secret
rotated, a device revoked) are written to Postgres first and then to the cache, so what was
acknowledged survives a restart. Without a database (tests, benchmarks) the registry lives in
memory only.

Other processes write the same tables: the other nodes of a cluster, and ``tripwire admin``.
Every write sends a notification in its own transaction (``persistence.accounts``), and
:meth:`Registry.follow` listens and re-reads what changed, so a device revoked or a user
disabled anywhere is refused here within moments (a full reload covers the notifications a
lost connection missed).

Device secrets are generated here (32 random bytes, URL-safe), shown to the owner once at
registration or rotation, and never returned or logged again. A rotation keeps the old secret
valid for a grace period so a terminal can be updated without downtime.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
import trio

from engine.sizing import UserSettings
from gateway.auth import Identity, Role, hash_password, verify_password
from persistence import accounts
from persistence.db import Database
from persistence.listener import listen
from protocol.errors import Conflict, NotFound, StorageError

__all__ = ["DeviceRecord", "Registry", "UserRecord"]

_log = structlog.get_logger(component="registry")

_DUMMY_HASH = None  # verify_password checks an unknown user against its dummy hash


@dataclass
class UserRecord:
    id: str
    username: str
    role: Role
    password_hash: str
    settings: UserSettings = field(default_factory=UserSettings)
    disabled: bool = False


AccessEnded = Callable[[str, str], Awaitable[None]]
"""``await handler(kind, id)``: ``("device", device_id)`` revoked or ``("user", user_id)``
disabled by a change this node read from Postgres (see :meth:`Registry.on_access_ended`)."""


@dataclass
class DeviceRecord:
    id: str
    user_id: str
    name: str
    account_login: str = ""
    broker: str = ""
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    revoked: bool = False
    secrets: list[tuple[bytes, datetime | None]] = field(default_factory=list)
    """(secret, expires_at) pairs; never leaves this object except to verify a handshake."""
    overrides: dict[str, str] = field(default_factory=dict)

    def view(self) -> dict[str, Any]:
        """What an owner may see (no secret)."""
        return {
            "id": self.id,
            "user_id": self.user_id,
            "name": self.name,
            "account_login": self.account_login,
            "broker": self.broker,
            "created_at": self.created_at.isoformat(),
            "revoked": self.revoked,
        }


def _user_record(row: accounts.UserRow) -> UserRecord:
    return UserRecord(row.id, row.username, row.role, row.password_hash, row.settings, row.disabled)


def _new_secret() -> str:
    return secrets.token_urlsafe(32)


class Registry:
    """Users and devices, from Postgres (``db``) or in memory (``db=None``)."""

    def __init__(self, db: Database | None = None) -> None:
        self.db = db
        self.users: dict[str, UserRecord] = {}
        self.by_name: dict[str, str] = {}
        self.devices: dict[str, DeviceRecord] = {}
        self.loads = 0
        """Full loads from Postgres so far (the first, and one per reconnection of ``follow``)."""
        self.refreshed = 0
        """Single rows re-read on a change notification so far."""
        self._access_ended: AccessEnded | None = None

    # -- loading -----------------------------------------------------------------------------

    async def load(self) -> None:
        """Fill the cache from Postgres (again: everything is re-read and replaced at once).

        The runtime-only part of a device (its ``overrides``) is kept.
        """
        if self.db is None:
            return
        found = await accounts.snapshot(self.db)
        users = {u.id: _user_record(u) for u in found.users}
        devices = {d.id: self._device_record(d, []) for d in found.devices}
        for secret in found.secrets:
            device = devices.get(secret.device_id)
            if device is not None:
                device.secrets.append((secret.secret, secret.expires_at))
        ended = [("user", u.id) for u in users.values() if u.disabled and self.is_active(u.id)]
        ended += [
            ("device", d.id)
            for d in devices.values()
            if d.revoked and d.id in self.devices and not self.devices[d.id].revoked
        ]
        self.users = users
        self.by_name = {u.username.lower(): u.id for u in users.values()}
        self.devices = devices
        self.loads += 1
        for kind, key in ended:
            await self._ended(kind, key)

    def on_access_ended(self, handler: AccessEnded) -> None:
        """Have ``await handler(kind, id)`` called when a change read from Postgres (a
        notification, or the full reload after a lost one) revokes a device (``"device"``) or
        disables a user (``"user"``) that this cache still had as usable: a change made by
        another node or by ``tripwire admin``, whose live sessions and streams on this node
        must close as the node's own REST call would close them."""
        self._access_ended = handler

    async def _ended(self, kind: str, key: str) -> None:
        if self._access_ended is not None:
            _log.info("access ended elsewhere: closing what is open here", kind=kind, id=key)
            await self._access_ended(kind, key)

    async def refresh(self, change: str) -> None:
        """Re-read the one row a notification names (``user:<id>`` or ``device:<id>``) into
        the cache; anything else is logged and ignored.

        Raises:
            StorageError: Postgres cannot answer (the change is not applied).
        """
        kind, _, key = change.partition(":")
        if self.db is None or not key:
            _log.warning("registry change not understood", change=change[:200])
            return
        ended = False
        if kind == "user":
            user = await accounts.user(self.db, key)
            if user is not None:
                previous = self.users.get(key)
                if previous is not None and previous.username.lower() != user.username.lower():
                    self.by_name.pop(previous.username.lower(), None)
                ended = previous is not None and not previous.disabled and user.disabled
                self._cache_user(_user_record(user))
        elif kind == "device":
            found = await accounts.device(self.db, key)
            if found is not None:
                row, secrets_ = found
                known = self.devices.get(key)
                ended = known is not None and not known.revoked and row.revoked
                self.devices[key] = self._device_record(row, secrets_)
        else:
            _log.warning("registry change not understood", change=change[:200])
            return
        self.refreshed += 1
        if ended:
            await self._ended(kind, key)

    def _device_record(
        self, row: accounts.DeviceRow, secrets_: list[accounts.SecretRow]
    ) -> DeviceRecord:
        previous = self.devices.get(row.id)
        return DeviceRecord(
            row.id,
            row.user_id,
            row.name,
            row.account_login,
            row.broker,
            row.created_at,
            row.revoked,
            [(s.secret, s.expires_at) for s in secrets_],
            previous.overrides if previous is not None else {},
        )

    async def follow(
        self,
        *,
        retry_s: float = 0.2,
        retry_cap_s: float = 10.0,
        ping_s: float = 10.0,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep the cache in step with Postgres, whoever writes it, until cancelled.

        Run it with ``await nursery.start(registry.follow)``. It listens on a dedicated
        connection to the notifications every write sends (``persistence.accounts``) and
        re-reads just the row each one names. Each time listening starts (the first time
        too), it re-reads everything *after* ``LISTEN`` is in place, so no change falls
        between the two: a change whose notification was sent while nobody listened (a lost
        connection, a process that was starting) is found by that full reload. A lost
        connection, or a refresh that fails, is logged and retried with capped exponential
        backoff (``retry_s`` doubling up to ``retry_cap_s``), forever; the backoff starts over
        only after a connection that lasted ``retry_cap_s``, so a flapping one does not cause
        a full reload every ``retry_s``.

        ``nursery.start`` returns once the first listen and reload have succeeded, or once the
        first attempt has failed (Postgres down at start: the start is not held up; the cache
        loaded before serves, and the retries go on). Without a database it returns at once.
        """
        if self.db is None:
            task_status.started()
            return
        delay = retry_s
        started = False
        while True:
            following_since = None
            try:
                async with listen(self.db, accounts.CHANNEL, ping_s=ping_s) as notes:
                    await self.load()
                    _log.info("following registry changes", reloads=self.loads)
                    following_since = trio.current_time()
                    if not started:
                        started = True
                        task_status.started()
                    while True:
                        await self.refresh(await notes.receive())
            except StorageError as exc:
                _log.warning(
                    "registry changes not followed; full reload after reconnecting",
                    error=exc.message,
                    details=exc.details,
                    retry_in_s=delay,
                )
            if not started:
                started = True
                task_status.started()
            if following_since is not None and trio.current_time() - following_since > retry_cap_s:
                delay = retry_s  # it had been working: a fresh outage starts from the shortest wait
            await trio.sleep(delay)
            delay = min(delay * 2, retry_cap_s)

    def _cache_user(self, user: UserRecord) -> None:
        self.users[user.id] = user
        self.by_name[user.username.lower()] = user.id

    # -- the node's Directory ------------------------------------------------------------------

    def user_settings(self, user_id: str) -> UserSettings:
        user = self.users.get(user_id)
        return user.settings if user else UserSettings()

    def device_owner(self, device_id: str) -> str | None:
        device = self.devices.get(device_id)
        if device is None or device.revoked:
            return None
        owner = self.users.get(device.user_id)
        return None if owner is None or owner.disabled else device.user_id

    def device_overrides(self, device_id: str) -> Mapping[str, str]:
        device = self.devices.get(device_id)
        return device.overrides if device else {}

    def owns(self, user_id: str) -> bool:
        return True  # one node serves every partition today (actors.directory)

    def device_secrets(self, device_id: str, now: datetime | None = None) -> list[bytes]:
        """The secrets a handshake may verify against (empty: unknown or revoked)."""
        device = self.devices.get(device_id)
        if device is None or device.revoked or self.device_owner(device_id) is None:
            return []
        now = now or datetime.now(UTC)
        return [s for s, expires in device.secrets if expires is None or expires > now]

    # -- users ---------------------------------------------------------------------------------

    async def create_user(
        self,
        username: str,
        password: str,
        role: Role = "user",
        settings: UserSettings | None = None,
    ) -> UserRecord:
        """Raises :class:`Conflict` if the username is taken (here or, not yet followed, in
        Postgres by another process)."""
        if username.lower() in self.by_name:
            raise Conflict("that username is taken", username=username)
        password_hash = await trio.to_thread.run_sync(hash_password, password)
        user = UserRecord(
            "u-" + uuid.uuid4().hex[:12], username, role, password_hash, settings or UserSettings()
        )
        if self.db is not None:
            await accounts.insert_user(
                self.db,
                accounts.UserRow(user.id, username, role, password_hash, user.settings, False),
            )
        self._cache_user(user)
        return user

    async def authenticate(self, username: str, password: str) -> Identity | None:
        """The identity of valid credentials, else None (timing does not tell which part was
        wrong: an unknown name still costs one argon2 verification)."""
        user = self.users.get(self.by_name.get(username.lower(), ""))
        ok = await verify_password(user.password_hash if user else _DUMMY_HASH, password)
        if user is None or not ok or user.disabled:
            return None
        return Identity(user_id=user.id, role=user.role)

    def user(self, user_id: str) -> UserRecord:
        try:
            return self.users[user_id]
        except KeyError:
            raise NotFound("no such user", user_id=user_id) from None

    def is_active(self, user_id: str) -> bool:
        """True if the user exists and is not disabled: a dictionary lookup, cheap enough for
        every request (the cache is what :meth:`set_disabled` changes, after Postgres)."""
        user = self.users.get(user_id)
        return user is not None and not user.disabled

    async def set_disabled(self, user_id: str, disabled: bool) -> UserRecord:
        """Disable (or enable again) a user: stored first, then cached, so every later request
        sees it at once. A disabled user cannot log in, its tokens are refused and its devices
        cannot connect; ending what is already live is the caller's part (``gateway.rest``)."""
        self.user(user_id)
        if self.db is not None:
            await accounts.set_user_disabled(self.db, user_id, disabled)
        user = self.user(user_id)  # the cached record now (``follow`` may have replaced it)
        user.disabled = disabled
        return user

    async def update_settings(self, user_id: str, settings: UserSettings) -> None:
        self.user(user_id)
        if self.db is not None:
            await accounts.set_user_settings(self.db, user_id, settings)
        self.user(user_id).settings = settings

    # -- devices -------------------------------------------------------------------------------

    async def register_device(
        self,
        user_id: str,
        name: str,
        account_login: str = "",
        broker: str = "",
        device_id: str | None = None,
    ) -> tuple[DeviceRecord, str]:
        """A new device and its secret (the only time the secret is returned)."""
        self.user(user_id)
        device_id = device_id or "d-" + uuid.uuid4().hex[:12]
        if device_id in self.devices:
            raise Conflict("that device id is taken", device_id=device_id)
        secret = _new_secret()
        device = DeviceRecord(device_id, user_id, name, account_login, broker)
        device.secrets.append((secret.encode(), None))
        if self.db is not None:
            await accounts.insert_device(
                self.db,
                accounts.DeviceRow(
                    device_id, user_id, name, account_login, broker, device.created_at, False
                ),
                secret.encode(),
            )
        self.devices[device_id] = device
        return device, secret

    def device(self, device_id: str) -> DeviceRecord:
        try:
            return self.devices[device_id]
        except KeyError:
            raise NotFound("no such device", device_id=device_id) from None

    def devices_of(self, user_id: str) -> list[DeviceRecord]:
        return [d for d in self.devices.values() if d.user_id == user_id]

    async def rotate_secret(self, device_id: str, grace_s: float = 3600.0) -> str:
        """A new secret; the current ones stay valid for ``grace_s`` more seconds."""
        device = self.device(device_id)
        if device.revoked:
            raise Conflict("the device is revoked", device_id=device_id)
        secret = _new_secret()
        now = datetime.now(UTC)
        until = now + timedelta(seconds=grace_s)
        if self.db is not None:
            await accounts.rotate_device_secret(self.db, device_id, secret.encode(), now, until)
        device = self.device(device_id)
        if all(s != secret.encode() for s, _ in device.secrets):  # not yet re-read by follow
            device.secrets = [
                (s, until if e is None or e > until else e) for s, e in device.secrets
            ] + [(secret.encode(), None)]
        return secret

    async def revoke(self, device_id: str) -> None:
        self.device(device_id)
        if self.db is not None:
            await accounts.revoke_device(self.db, device_id)
        self.device(device_id).revoked = True

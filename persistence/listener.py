"""Postgres ``LISTEN`` from trio: one channel's notifications, on a dedicated connection.

Several engine processes share one database; when one of them (or the ``tripwire admin``
command) changes a row that others cache, it sends ``pg_notify(channel, payload)`` in the
same transaction as the change, so the notification is delivered, after the commit, exactly
when the change is visible. :func:`listen` receives them.

Why a dedicated connection, not the pool: ``LISTEN`` is session state, and a pooled connection
is handed to other queries (``Database.run_with_connection`` forbids leaving session state
behind). The connection is opened with asyncpg on the bridge's loop; asyncpg calls our
callback there, and the callback hands the payload to trio through the trio token.

**A lost connection loses notifications.** Postgres queues notifications only for the sessions
listening when they are sent. So a loss is never hidden: :meth:`Notifications.receive` raises
:class:`~protocol.errors.StorageError` from the moment the connection is known to be gone
(closed by the server, reset, or silent: while no notification comes, a ping every
``ping_s`` must answer within ``timeout_s``), and also when the consumer falls more than
``buffer`` notifications behind. The caller then reconnects and re-reads everything it
caches (``Registry.follow``).
"""

from __future__ import annotations

import contextlib
import functools
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import structlog
import trio

from persistence.db import Database, is_unavailable, redact_dsn
from protocol.errors import StorageError

__all__ = ["LISTENER_APPLICATION", "Notifications", "listen"]

LISTENER_APPLICATION = "tripwire-listen"
"""The ``application_name`` of listening connections (``pg_stat_activity`` shows who listens)."""

_log = structlog.get_logger(component="listener")


class Notifications:
    """The payloads received on one channel, in the order Postgres delivered them.

    Attributes:
        channel: the channel listened to.
        backend_pid: the server process of the listening connection (``pg_stat_activity``).
        received: payloads received since the connection opened (a counter).
    """

    def __init__(
        self, channel: str, buffer: int, ping: Callable[[], Awaitable[object]], ping_s: float
    ) -> None:
        self.channel = channel
        self.backend_pid = 0
        self.received = 0
        self._buffer = buffer
        self._ping = ping
        self._ping_s = ping_s
        self._pending: deque[str] = deque()
        self._lost: str | None = None
        self._arrived = trio.Event()

    def _push(self, payload: str) -> None:
        """Called on the trio thread for each notification."""
        if self._lost is not None:
            return
        if len(self._pending) >= self._buffer:
            self._lose(f"more than {self._buffer} notifications waiting")
            return
        self.received += 1
        self._pending.append(payload)
        self._arrived.set()

    def _lose(self, reason: str) -> None:
        """Called on the trio thread: from now on, :meth:`receive` raises."""
        if self._lost is None:
            self._lost = reason
            self._pending.clear()  # what is left is incomplete: the caller reloads anyway
        self._arrived.set()

    @property
    def lost(self) -> bool:
        return self._lost is not None

    async def receive(self) -> str:
        """The next payload, waiting for one (and pinging the connection while none comes).

        Raises:
            StorageError: the connection is gone (or the consumer fell ``buffer`` behind):
                notifications may have been missed, now or later.
        """
        while True:
            if self._lost is not None:
                raise StorageError(
                    "postgres notifications lost", channel=self.channel, reason=self._lost
                )
            if self._pending:
                return self._pending.popleft()
            self._arrived = trio.Event()
            with trio.move_on_after(self._ping_s) as idle:
                await self._arrived.wait()
            if idle.cancelled_caught:
                # A connection that died without a word (a network partition) shows only
                # when it is used.
                try:
                    await self._ping()
                except Exception as exc:
                    self._lose(f"ping failed: {exc!r}")


@asynccontextmanager
async def listen(
    db: Database,
    channel: str,
    *,
    buffer: int = 10_000,
    ping_s: float = 10.0,
    timeout_s: float = 5.0,
) -> AsyncIterator[Notifications]:
    """``async with listen(db, channel) as notes``: listening once the block is entered.

    Every notification committed after entry is delivered by ``notes.receive()`` (unless the
    connection is lost, which ``receive`` then reports). The connection is closed on exit.

    Raises:
        StorageError: the connection or the ``LISTEN`` failed (Postgres unreachable).
    """
    bridge = db.bridge
    token = trio.lowlevel.current_trio_token()
    connection: list[asyncpg.Connection] = []

    async def ping() -> object:
        select = functools.partial(connection[0].fetchval, "SELECT 1", timeout=timeout_s)
        return await bridge.run(select)

    notes = Notifications(channel, buffer, ping, ping_s)

    def soon(fn: Any, *args: Any) -> None:
        # On the asyncio thread: hand over to trio (which may have finished: then drop it).
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(fn, *args)

    def on_notification(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        soon(notes._push, payload)

    def on_termination(_conn: Any) -> None:
        soon(notes._lose, "the connection closed")

    async def open_connection() -> asyncpg.Connection:
        conn = await asyncpg.connect(
            db.dsn,
            timeout=timeout_s,
            server_settings={"application_name": LISTENER_APPLICATION},
        )
        try:
            conn.add_termination_listener(on_termination)
            await conn.add_listener(channel, on_notification)
        except BaseException:
            conn.terminate()
            raise
        return conn

    try:
        conn = await bridge.run(open_connection)
    except Exception as exc:
        if is_unavailable(exc):
            raise StorageError(
                "cannot listen to postgres", channel=channel, dsn=redact_dsn(db.dsn)
            ) from exc
        raise
    notes.backend_pid = conn.get_server_pid()

    connection.append(conn)

    async def close() -> None:
        try:
            await conn.close(timeout=timeout_s)
        except Exception:
            conn.terminate()

    try:
        yield notes
    finally:
        with trio.CancelScope(shield=True), contextlib.suppress(Exception):
            await bridge.run(close)

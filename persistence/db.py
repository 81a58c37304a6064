"""The Postgres handle: an asyncpg pool living on the asyncio bridge, used from trio.

:class:`Database` is what every other module of ``persistence`` goes through (the SQL lives in
``persistence``; the gateway calls its typed functions). Two rules shape it:

* **A transaction never spans a trio await.** :meth:`Database.run_in_transaction` takes an
  async function ``fn(conn)`` and runs all of it on the asyncio side, inside
  ``conn.transaction()``. Trio code never holds a connection, so a cancelled or crashed trio
  task cannot leave a transaction open, and a slow trio scheduler cannot stretch one.
* **"Unavailable" is one error.** Everything that means the server cannot be reached or
  cannot serve right now (refused or lost connection, shutdown, starting up, too many
  connections, disk full, timeout) is raised as :class:`~protocol.errors.StorageError`, with
  the asyncpg or OS error as its ``__cause__``. Callers retry or answer 503 on that one type.
  Errors that are our fault or the data's (syntax, constraint violations, bad arguments) pass
  through unchanged as asyncpg exceptions: retrying them would never help.

``json`` and ``jsonb`` values are Python objects on our side (dicts, lists, msgspec Structs),
encoded with msgspec; the codec is installed on every pooled connection.
"""

from __future__ import annotations

import asyncio
import functools
import re
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
import msgspec
import structlog
import trio

from persistence.bridge import Bridge
from protocol.errors import StorageError

__all__ = ["Database", "dsn_with_database", "is_unavailable", "open_database", "redact_dsn"]

T = TypeVar("T")

_log = structlog.get_logger(component="db")  # lazy: configured at first use

# asyncpg's connection-level failures, and the SQLSTATE classes that mean "not now":
# 08 connection exception, 57 operator intervention (shutdown, starting up, statement timeout),
# 53 insufficient resources (too many connections, disk full). InternalClientError ("cannot
# switch to state N; another operation is in progress") is what asyncpg raises when a
# connection reset mid-``executemany`` leaves its protocol state behind: the connection is
# dead, a fresh one will do.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.InternalClientError,
)
_CLOSED_MESSAGES = ("connection is closed", "connection was closed", "pool is closing")


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means "the server cannot serve right now" (worth a retry later)."""
    if isinstance(exc, (StorageError, *_UNAVAILABLE)):
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        text = str(exc)
        return any(marker in text for marker in _CLOSED_MESSAGES)
    return False


def _raise_if_connection_lost(conn: asyncpg.Connection, exc: Exception) -> None:
    """Whatever the error says, a connection that died under it means "unavailable".

    A reset in the middle of a transaction surfaces as whatever step noticed it first (the
    rollback of a savepoint, an "operation in progress"): the closed connection is the truth.
    """
    try:
        lost = conn.is_closed()
    except asyncpg.InterfaceError:
        lost = True  # the pool has already taken the dead connection back from our proxy
    if lost and not is_unavailable(exc):
        raise StorageError("postgres connection lost", error=repr(exc)) from exc


def redact_dsn(dsn: str) -> str:
    """``dsn`` with any password replaced, fit for logs and error details."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)


def dsn_with_database(dsn: str, database: str) -> str:
    """``dsn`` pointing at another database of the same server (unix-socket URIs included)."""
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(parts._replace(path="/" + urllib.parse.quote(database)))


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name,
            schema="pg_catalog",
            encoder=lambda value: msgspec.json.encode(value).decode(),
            decoder=msgspec.json.decode,
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset hook: nothing beyond what asyncpg always does (roll back an open
    transaction).

    asyncpg's default runs ``RESET ALL; UNLISTEN *; pg_advisory_unlock_all(); ...`` on every
    release: one more round trip for each query, a fifth of a journal write. We own every
    piece of code that touches these connections, and none leaves session state behind (the
    migrator releases its advisory lock itself; the server drops it if the connection dies).
    """


class Database:
    """An asyncpg pool on the bridge; open it with :meth:`open` or :func:`open_database`.

    Every query method runs one statement on a pooled connection, on the asyncio side, and
    returns asyncpg's result (``asyncpg.Record`` rows behave like tuples and mappings).
    """

    def __init__(self, bridge: Bridge, pool: asyncpg.Pool, dsn: str) -> None:
        self.bridge = bridge
        self.dsn = dsn
        self._pool = pool

    @classmethod
    async def open(
        cls,
        bridge: Bridge,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout_s: float = 5.0,
        command_timeout_s: float | None = 30.0,
        retry_for_s: float = 10.0,
    ) -> Database:
        """Create the pool, retrying with capped exponential backoff for up to ``retry_for_s``.

        A server that is still starting (or briefly restarting) is waited for; one that stays
        unreachable is reported clearly instead of hanging start-up.

        Raises:
            StorageError: still unreachable after ``retry_for_s`` (``details`` has the DSN
                without its password and the number of attempts).
        """
        deadline = trio.current_time() + retry_for_s
        delay = 0.05
        attempt = 0
        while True:
            attempt += 1
            try:
                pool = await bridge.run(
                    functools.partial(
                        asyncpg.create_pool,
                        dsn,
                        min_size=min_size,
                        max_size=max_size,
                        timeout=connect_timeout_s,
                        command_timeout=command_timeout_s,
                        init=_init_connection,
                        reset=_keep_session,
                    )
                )
            except Exception as exc:
                if not is_unavailable(exc):
                    raise  # a bad DSN or option: retrying will not help
                if trio.current_time() + delay > deadline:
                    raise StorageError(
                        "postgres is unreachable",
                        dsn=redact_dsn(dsn),
                        attempts=attempt,
                        error=repr(exc),
                    ) from exc
                _log.warning("postgres not reachable yet", attempt=attempt, error=repr(exc))
                await trio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            _log.info("postgres pool open", dsn=redact_dsn(dsn), attempts=attempt)
            return cls(bridge, pool, dsn)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Close the pool: gracefully for ``timeout_s``, then by terminating its connections.

        A connection stuck on a dead server would otherwise hold a graceful close forever.
        """
        pool = self._pool

        async def close() -> None:
            try:
                await asyncio.wait_for(pool.close(), timeout_s)
            except _UNAVAILABLE:
                pool.terminate()

        await self.bridge.run(close)

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            return await self.bridge.run(fn, *args)
        except StorageError:
            raise
        except Exception as exc:
            if is_unavailable(exc):
                raise StorageError("postgres unavailable", error=repr(exc)) from exc
            raise

    async def execute(self, query: str, *args: Any) -> str:
        """Run one statement; returns its status tag (``INSERT 0 1``)."""
        return await self._call(self._pool.execute, query, *args)

    async def executemany(self, query: str, args: Iterable[Sequence[Any]]) -> None:
        """Run one statement for each argument tuple, in one round trip per batch."""
        await self._call(self._pool.executemany, query, list(args))

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """All rows of a query."""
        return await self._call(self._pool.fetch, query, *args)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        """The first row of a query, or None."""
        return await self._call(self._pool.fetchrow, query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        """The first column of the first row, or None."""
        return await self._call(self._pool.fetchval, query, *args)

    async def run_in_transaction(
        self,
        fn: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        isolation: str | None = None,
    ) -> T:
        """Run ``await fn(conn)`` inside one transaction, entirely on the asyncio side.

        ``fn`` must be an asyncio coroutine function: it may await ``conn`` (asyncpg) but never
        trio. It commits when ``fn`` returns and rolls back when it raises (the exception
        propagates) or when the trio caller is cancelled.

        ``isolation`` is asyncpg's: ``read_committed`` (default), ``repeatable_read`` or
        ``serializable``.
        """

        async def body() -> T:
            async with self._pool.acquire() as conn:
                try:
                    async with conn.transaction(isolation=isolation):
                        return await fn(conn)
                except Exception as exc:
                    _raise_if_connection_lost(conn, exc)
                    raise

        return await self._call(body)

    async def run_with_connection(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``await fn(conn)`` on one pooled connection, without a transaction around it.

        For a single statement (which Postgres runs in its own transaction: one round trip
        instead of three), or for work that manages its own transactions on one session, such
        as holding an advisory lock across several of them (migrations). ``fn`` must leave no
        session state behind (``SET``, ``LISTEN``, advisory locks): the pool does not reset it.
        """

        async def body() -> T:
            async with self._pool.acquire() as conn:
                try:
                    return await fn(conn)
                except Exception as exc:
                    _raise_if_connection_lost(conn, exc)
                    raise

        return await self._call(body)

    async def is_alive(self, timeout_s: float = 1.0) -> bool:
        """Whether the server answers ``SELECT 1`` within ``timeout_s`` (for ``/readyz``).

        Never raises: any failure, or no answer in time, is False.
        """

        async def ping() -> Any:
            return await self._pool.fetchval("SELECT 1", timeout=timeout_s)

        with trio.move_on_after(timeout_s + 0.5):
            try:
                return bool(await self.bridge.run(ping) == 1)
            except Exception:
                return False
        return False


@asynccontextmanager
async def open_database(bridge: Bridge, dsn: str, **options: Any) -> AsyncIterator[Database]:
    """``async with open_database(bridge, dsn) as db``: :meth:`Database.open`, closed on exit.

    ``options`` are those of :meth:`Database.open`.
    """
    db = await Database.open(bridge, dsn, **options)
    try:
        yield db
    finally:
        with trio.CancelScope(shield=True):
            await db.close()

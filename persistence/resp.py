"""One Redis connection on trio's own sockets, for the tick path of a cluster node.

Why not the shared :class:`~persistence.redis_link.RedisLink` here: that client lives on the
asyncio bridge, so every command crosses threads twice (trio -> asyncio loop -> trio), each
crossing a self-pipe write and a GIL hand-over. Profiled on a cluster node at 100 quotes/s
(`docs/benchmarks.md`), those hops and redis-py's command machinery were about half of the
node's CPU for two commands a quote (the append script, the ``XREAD`` that brings it back).
This connection speaks RESP2 directly on a non-blocking socket that trio waits on
(``wait_readable``): ``hiredis`` packs the command and parses the reply (its C reader, the
parser redis-py itself prefers), nothing else runs.

A command can also be run without the event loop (:meth:`RespConnection.send_now`, then
:meth:`RespConnection.reply_within`): sent at once and its reply awaited *blocked*, for at most a
bound of about a millisecond; a reply that is late is collected the usual way
(:meth:`RespConnection.finish`). A round trip to a local Redis took 70-110 us of wall time on the
quiet 2-core VM, and waiting it out blocked 33 us of CPU against 57 us parked in the scheduler
(``python -m bench.redis_rtt``): the cluster's appends take this path from the feed's own call.

It is deliberately small: one command at a time (a lock keeps replies in order), connected
lazily, and thrown away on any doubt. A timeout, a cancellation mid-command, a reset or a
protocol error close the socket, because the next reply on it could belong to the command
that was abandoned; the next call connects again. Every failure comes out as
:class:`~protocol.errors.StorageError` (the same contract as ``RedisLink.call``), an error
*reply* as its subclass :class:`~protocol.errors.RedisReplyError` carrying Redis's message
(``NOSCRIPT ...``, ``LOADING ...``).

URLs are parsed by redis-py (``redis://``, ``rediss://`` with the default TLS context,
``unix://``; user, password and db are applied at connect).
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from typing import Any, cast

import hiredis
import trio

from protocol.errors import ConfigError, RedisReplyError, StorageError

__all__ = ["RespConnection"]

_SCHEMES = ("redis://", "rediss://", "unix://")
_CHUNK = 65_536
_FAILURES = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, hiredis.ProtocolError)


def _pack(args: tuple[Any, ...]) -> bytes:
    # hiredis's type hints (its .pyi) declare the argument a 1-tuple and give no return type;
    # it takes a tuple of any length of str/bytes/numbers and returns bytes.
    return cast(bytes, hiredis.pack_command(args))


class RespConnection:
    """A single lazily connected Redis connection (see the module docstring).

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://``.
        op_timeout_s: the default bound of one command, connecting included.
        client_name: sent with ``CLIENT SETNAME`` so ``CLIENT LIST`` tells the connections apart.

    Attributes:
        commands: commands answered (a counter).
        connects: connections opened (a counter; more than one means some were thrown away).
    """

    def __init__(self, url: str, *, op_timeout_s: float = 0.5, client_name: str = "") -> None:
        if not url.startswith(_SCHEMES):
            raise ConfigError("REDIS_URL must start with redis://, rediss:// or unix://", key=url)
        from redis.connection import parse_url  # the library's reading of its own URLs

        self._target: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        self._tls_wanted = url.startswith("rediss://")
        self.op_timeout_s = op_timeout_s
        self.client_name = client_name
        self._sock: socket.socket | None = None
        """The plain (TCP or unix) connection, driven with non-blocking calls."""
        self._tls: trio.SSLStream[trio.SocketStream] | None = None
        """A ``rediss://`` connection (trio's stream does the TLS)."""
        self._reader = hiredis.Reader()
        # A semaphore, not a Lock: a command begun by one task (send_now) may be finished by
        # another (finish), and a trio Lock belongs to the task that took it.
        self._lock = trio.Semaphore(1)
        self._poller: select.poll | None = None
        """Polls the plain socket for reply_within (made once per connection)."""
        self._unsent: memoryview | None = None
        """Bytes of a command begun with send_now that the socket did not take at once."""
        self.commands = 0
        self.connects = 0

    @property
    def connected(self) -> bool:
        return self._sock is not None or self._tls is not None

    async def execute(
        self, *args: str | bytes | int | float, timeout_s: float | None = None
    ) -> Any:
        """Send one command and return its reply (bytes, int, list, None).

        Raises:
            RedisReplyError: Redis answered with an error (the connection stays usable).
            StorageError: not connected, reset, timed out (``timed_out`` in ``details``).
        """
        limit = self.op_timeout_s if timeout_s is None else timeout_s
        # Uncontended (the usual case: one task per connection), the lock costs no trip
        # through the scheduler; contended, callers queue in order.
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()
        try:
            with trio.fail_after(limit):
                if not self.connected:
                    await self._connect()
                reply = await self._round_trip(_pack(args))
        except trio.TooSlowError as exc:
            self._discard()
            raise StorageError(
                "redis did not answer in time", command=str(args[0]), timed_out=True
            ) from exc
        except _FAILURES as exc:
            self._discard()
            raise StorageError("redis unavailable", error=repr(exc)) from exc
        except BaseException:
            self._discard()  # cancelled mid-command: its reply would answer the next one
            raise
        finally:
            self._lock.release()
        return self._answered(reply)

    def send_now(self, *args: str | bytes | int | float) -> bool:
        """Begin a command without waiting, if the connection is free, connected and plain
        (not TLS): True, and the caller now holds the connection until it takes the reply with
        :meth:`reply_within` or :meth:`finish`; False: nothing was sent (use :meth:`execute`).

        Raises:
            StorageError: the send failed (the connection is thrown away and free again).
        """
        sock = self._sock
        if sock is None:
            return False
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            return False
        view = memoryview(_pack(args))
        try:
            while view:
                view = view[sock.send(view) :]
        except BlockingIOError:
            self._unsent = view  # finish() sends the rest
        except OSError as exc:
            self._discard()
            self._lock.release()
            raise StorageError("redis unavailable", error=repr(exc)) from exc
        return True

    def reply_within(self, wait_s: float) -> tuple[bool, Any]:
        """The reply of the command begun with :meth:`send_now`, waiting for it blocked (the
        whole thread, the event loop included) at most ``wait_s``: ``(True, reply)``, and the
        connection is free again; ``(False, None)``: not there yet, the caller still holds
        the connection and takes the reply with :meth:`finish`.

        Raises:
            RedisReplyError: Redis answered with an error (the connection is free).
            StorageError: reset or closed (the connection is thrown away and free).
        """
        sock = self._sock
        assert sock is not None
        if self._unsent is not None:
            return False, None
        poller = self._poller
        if poller is None:
            poller = self._poller = select.poll()
            poller.register(sock, select.POLLIN)
        deadline = time.monotonic() + wait_s
        try:
            reply = self._reader.gets()
            while reply is False:
                left_ms = (deadline - time.monotonic()) * 1000
                if left_ms <= 0 or not poller.poll(left_ms):
                    return False, None
                data = sock.recv(_CHUNK)
                if not data:
                    raise ConnectionResetError("redis closed the connection")
                self._reader.feed(data)
                reply = self._reader.gets()
        except (*_FAILURES, BlockingIOError) as exc:
            self._discard()
            self._lock.release()
            raise StorageError("redis unavailable", error=repr(exc)) from exc
        self._lock.release()
        return True, self._answered(reply)

    async def finish(self, timeout_s: float | None = None) -> Any:
        """The reply of the command begun with :meth:`send_now` (after ``reply_within`` said
        it was not there yet), waiting in the scheduler as :meth:`execute` does; the connection
        is free again after. Raises as :meth:`execute`."""
        limit = self.op_timeout_s if timeout_s is None else timeout_s
        try:
            with trio.fail_after(limit):
                reply = await self._receive(self._take_unsent())
        except trio.TooSlowError as exc:
            self._discard()
            raise StorageError("redis did not answer in time", timed_out=True) from exc
        except _FAILURES as exc:
            self._discard()
            raise StorageError("redis unavailable", error=repr(exc)) from exc
        except BaseException:
            self._discard()
            raise
        finally:
            self._lock.release()
        return self._answered(reply)

    def _take_unsent(self) -> memoryview:
        view, self._unsent = self._unsent, None
        return view if view is not None else memoryview(b"")

    def _answered(self, reply: Any) -> Any:
        self.commands += 1
        if isinstance(reply, hiredis.ReplyError):
            raise RedisReplyError(str(reply), reply=str(reply))
        return reply

    async def aclose(self) -> None:
        async with self._lock:
            self._discard()

    # -- internals ---------------------------------------------------------------------------

    async def _round_trip(self, packed: bytes) -> Any:
        """Send ``packed``, return the next reply.

        On a plain socket this calls ``send``/``recv`` directly and parks only in
        ``wait_readable`` (and ``wait_writable`` if the send buffer is full): trio's
        ``SocketStream`` adds a pass through the scheduler to every call that did not wait,
        two or three per command, each an ``epoll_wait`` and a task switch, which at one
        command per quote was a large part of a cluster node's CPU.
        """
        if self._tls is not None:
            await self._tls.send_all(packed)
            reply = self._reader.gets()
            while reply is False:
                data = await self._tls.receive_some(_CHUNK)
                if not data:
                    raise trio.BrokenResourceError("redis closed the connection")
                self._reader.feed(data)  # type: ignore[arg-type]  # any buffer will do
                reply = self._reader.gets()
            return reply
        return await self._receive(memoryview(packed))

    async def _receive(self, view: memoryview) -> Any:
        """Send what is left of a command (``view``, maybe empty), return the next reply."""
        sock = self._sock
        if sock is None:
            raise trio.ClosedResourceError("the connection was thrown away")
        while view:
            try:
                view = view[sock.send(view) :]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
        reply = self._reader.gets()
        waited = False
        while reply is False:  # hiredis: "not enough data yet"
            # The reply cannot be there yet right after the send: wait first, then read.
            await trio.lowlevel.wait_readable(sock)
            waited = True
            try:
                data = sock.recv(_CHUNK)
            except BlockingIOError:
                continue
            if not data:
                raise trio.BrokenResourceError("redis closed the connection")
            self._reader.feed(data)
            reply = self._reader.gets()
        if not waited:
            await trio.lowlevel.checkpoint()  # an async call always checkpoints (trio's rule)
        return reply

    async def _connect(self) -> None:
        target = self._target
        if "path" in target:
            opened = await trio.open_unix_socket(target["path"])
        else:
            # TCP_NODELAY is on: trio sets it for every SocketStream it opens.
            opened = await trio.open_tcp_stream(
                target.get("host", "localhost"), target.get("port", 6379)
            )
        if self._tls_wanted:
            tls = trio.SSLStream(
                opened, ssl.create_default_context(), server_hostname=target.get("host")
            )
            self._tls = tls
            await tls.do_handshake()
        else:
            sock = socket.socket(fileno=opened.socket.detach())
            sock.setblocking(False)
            self._sock = sock
        self._reader = hiredis.Reader()
        self.connects += 1
        setup: list[tuple[Any, ...]] = []
        if target.get("password") is not None:
            user = target.get("username")
            setup.append(
                ("AUTH", user, target["password"]) if user else ("AUTH", target["password"])
            )
        if target.get("db"):
            setup.append(("SELECT", int(target["db"])))
        if self.client_name:
            setup.append(("CLIENT", "SETNAME", self.client_name))
        for command in setup:
            reply = await self._round_trip(_pack(command))
            if isinstance(reply, hiredis.ReplyError):
                self._discard()
                raise RedisReplyError(f"{command[0]} refused: {reply}", reply=str(reply))

    def _discard(self) -> None:
        """Drop the connection at once (no goodbye: it may be mid-reply or dead)."""
        if self._sock is not None:
            trio.lowlevel.notify_closing(self._sock)  # wakes a task parked on it
            self._sock.close()
        if self._tls is not None:
            self._tls.transport_stream.socket.close()
        self._sock = None
        self._tls = None
        self._unsent = None
        self._poller = None
        self._reader = hiredis.Reader()

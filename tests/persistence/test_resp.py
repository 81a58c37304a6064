"""The trio-native Redis connection of the tick path (``persistence.resp``).

A real private ``redis-server`` (killed and restarted where the test says so), and for hostile
replies a fake server on a loopback socket sending whatever hypothesis makes up.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from persistence.resp import RespConnection
from protocol.errors import ConfigError, RedisReplyError, StorageError
from tests.fixtures.redis import RedisProcess


def _key() -> str:
    return f"test:resp:{uuid.uuid4().hex[:8]}"


async def test_replies_of_every_shape_and_an_error_reply_keeps_the_connection(
    redis_url: str,
) -> None:
    conn = RespConnection(redis_url, client_name="tripwire-test")
    key = _key()
    try:
        assert await conn.execute("PING") == b"PONG"
        assert await conn.execute("SET", key, b"\x00bin\r\nary") == b"OK"
        assert await conn.execute("GET", key) == b"\x00bin\r\nary"
        assert await conn.execute("GET", key + ":missing") is None
        assert await conn.execute("INCRBY", key + ":n", 41) == 41
        entry_id = await conn.execute("XADD", key + ":s", "*", "s", 1, "q", b"x")
        entries = await conn.execute("XRANGE", key + ":s", "-", "+")
        assert entries == [[entry_id, [b"s", b"1", b"q", b"x"]]]
        with pytest.raises(RedisReplyError) as refused:
            await conn.execute("INCR", key)  # not an integer
        assert "not an integer" in refused.value.details["reply"]
        assert await conn.execute("CLIENT", "GETNAME") == b"tripwire-test"
        assert (conn.connects, conn.commands) == (1, 9)  # the error left the socket usable
    finally:
        await conn.aclose()
    assert not conn.connected


async def test_a_timeout_or_a_cancel_mid_command_throws_the_socket_away(redis_url: str) -> None:
    conn = RespConnection(redis_url, op_timeout_s=0.2)
    key = _key()
    try:
        with pytest.raises(StorageError) as slow:
            await conn.execute("BLPOP", key, 2)  # Redis answers in 2 s, too late
        assert slow.value.details["timed_out"] is True and not conn.connected
        with trio.move_on_after(0.1):
            await conn.execute("BLPOP", key, 2, timeout_s=5)
        assert not conn.connected
        # Neither abandoned BLPOP can take this push or answer the next command.
        assert await conn.execute("RPUSH", key, b"v") == 1
        assert await conn.execute("LRANGE", key, 0, -1) == [b"v"]
        assert conn.connects == 3
    finally:
        await conn.aclose()


async def test_db_and_password_come_from_the_url(redis_server: RedisProcess) -> None:
    admin = RespConnection(redis_server.url)
    await admin.execute("CONFIG", "SET", "requirepass", "s3cret")
    host_port = f"127.0.0.1:{redis_server.port}"
    key = _key()
    wrong = RespConnection(f"redis://:nope@{host_port}/0")
    db3 = RespConnection(f"redis://:s3cret@{host_port}/3")
    db0 = RespConnection(f"redis://:s3cret@{host_port}/0")
    try:
        with pytest.raises(RedisReplyError, match="AUTH refused"):
            await wrong.execute("PING")
        assert not wrong.connected
        await db3.execute("SET", key, b"three")
        assert await db3.execute("GET", key) == b"three"
        assert await db0.execute("GET", key) is None
    finally:
        for conn in (admin, wrong, db3, db0):
            await conn.aclose()


async def test_a_command_without_the_event_loop_in_time_late_or_refused(redis_url: str) -> None:
    """send_now + reply_within: the reply taken blocked when it comes in time, else left to
    finish; the connection is held from the send to the reply, whoever takes it."""
    conn = RespConnection(redis_url)
    key = _key()
    try:
        assert not conn.send_now("PING")  # not connected yet: nothing sent
        assert await conn.execute("PING") == b"PONG"
        assert conn.send_now("RPUSH", key, b"a")
        assert conn.reply_within(1.0) == (True, 1)
        # Late: BLPOP on an empty list answers in 0.2 s.
        assert conn.send_now("BLPOP", key + ":empty", 0.2)
        assert conn.reply_within(0.001) == (False, None)
        assert not conn.send_now("PING")  # held until the reply is taken

        async def other() -> None:
            assert await conn.execute("LLEN", key) == 1  # waits its turn, gets its own reply

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            await trio.sleep(0.01)
            assert await conn.finish() is None  # BLPOP timed out: nil
        # An error reply: raised, and the connection is free and usable again.
        assert conn.send_now("INCR", key)
        with pytest.raises(RedisReplyError):
            conn.reply_within(1.0)
        assert conn.send_now("LRANGE", key, 0, -1)
        assert conn.reply_within(1.0) == (True, [b"a"])
        assert conn.connects == 1
    finally:
        await conn.aclose()


async def test_a_late_reply_that_never_comes_throws_the_socket_away(redis_url: str) -> None:
    conn = RespConnection(redis_url, op_timeout_s=0.1)
    try:
        assert await conn.execute("PING") == b"PONG"
        assert conn.send_now("BLPOP", _key(), 2)
        assert conn.reply_within(0.001) == (False, None)
        with pytest.raises(StorageError) as slow:
            await conn.finish()
        assert slow.value.details["timed_out"] is True and not conn.connected
        assert await conn.execute("PING") == b"PONG"  # a new socket, free
    finally:
        await conn.aclose()


async def test_a_dead_server_is_a_storage_error_and_a_restarted_one_is_used_again(
    redis_server: RedisProcess,
) -> None:
    conn = RespConnection(redis_server.url, op_timeout_s=0.5)
    try:
        assert await conn.execute("PING") == b"PONG"
        redis_server.kill()
        with pytest.raises(StorageError) as down:
            await conn.execute("PING")
        assert not isinstance(down.value, RedisReplyError) and not conn.connected
        with pytest.raises(StorageError):
            await conn.execute("PING")  # refused: nothing listens
        redis_server.start()
        for _ in range(50):  # bounded: the server needs a moment to listen
            try:
                assert await conn.execute("PING") == b"PONG"
                break
            except StorageError:
                await trio.sleep(0.05)
        else:
            pytest.fail("the restarted server was never reached")
    finally:
        await conn.aclose()


def test_only_redis_urls() -> None:
    with pytest.raises(ConfigError, match="REDIS_URL"):
        RespConnection("http://127.0.0.1:6379")


def _fake_server(payload: bytes, blocked: bool) -> tuple[int, threading.Thread]:
    """A server on a thread of its own (a blocked wait stalls the event loop, so the fake
    cannot share it) that answers one command with ``payload`` and hangs up; with ``blocked``,
    a PING first, answered properly."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)

    def serve() -> None:
        with listener, contextlib.suppress(OSError):
            peer, _ = listener.accept()
            with peer:
                if blocked:
                    peer.recv(4096)
                    peer.sendall(b"+PONG\r\n")
                peer.recv(4096)
                peer.sendall(payload)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


async def _against(payload: bytes, blocked: bool) -> object:
    """Run one command against the fake server: the scheduler's way (``execute``), or blocked
    (``send_now`` + ``reply_within``, then ``finish`` if the reply is late)."""
    port, thread = _fake_server(payload, blocked)
    conn = RespConnection(f"redis://127.0.0.1:{port}/0", op_timeout_s=1.0)
    try:
        if not blocked:
            return await conn.execute("GET", "k")
        assert await conn.execute("PING") == b"PONG"
        assert conn.send_now("GET", "k")
        answered, reply = conn.reply_within(1.0)
        return reply if answered else await conn.finish()
    except StorageError as exc:
        assert not conn.connected or isinstance(exc, RedisReplyError)
        return exc
    finally:
        with trio.fail_after(1):  # the connection was released, whatever happened
            await conn.aclose()
        thread.join(5)


resp_like = st.lists(
    st.sampled_from(
        [b"+OK\r\n", b"$3\r\nabc\r\n", b"*2\r\n", b":12\r\n", b"-ERR x\r\n", b"$-1\r\n"]
    )
    | st.binary(max_size=24),
    max_size=6,
).map(b"".join)


@settings(max_examples=80, deadline=None)
@given(resp_like, st.booleans())
def test_a_hostile_server_gets_a_reply_or_a_storage_error_never_a_crash(
    payload: bytes, blocked: bool
) -> None:
    outcome = trio.run(_against, payload, blocked)
    assert outcome is None or isinstance(outcome, bytes | int | list | StorageError)

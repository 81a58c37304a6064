"""The floor of a Redis round trip from a node: CPU and wall time per PING, by client path.

    python -m bench.redis_rtt --json out.json

A private ``redis-server`` (TCP on loopback and a unix socket) and, in this process, ``--count``
PINGs per path after a warm-up: a blocking stdlib socket (no event loop: the floor), trio's
``SocketStream``, a non-blocking socket parked in ``wait_readable`` (what ``persistence.resp``
does), ``RespConnection.execute`` over TCP and over the unix socket, and
``TickAppender.append`` of one quote (the cluster tick path's append); and the two ways without
the event loop: ``RespConnection.send_now`` + ``reply_within`` (``*_blocked``) and
``TickAppender.append_nowait`` (``*_in_call``, with a checkpoint after each call, as the others
have one inside). CPU is this process's
(``time.process_time``): Redis's own work is not in it. Compare paths inside one run.
"""

from __future__ import annotations

import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from bench.common import base_parser, machine, run_harness, write_json
from persistence import RedisLink, open_bridge
from persistence.redis_server import PrivateRedis
from persistence.resp import RespConnection
from persistence.tick_streams import TickAppender
from protocol.feed import Quote

PING = b"*1\r\n$4\r\nPING\r\n"


def _per_call(count: int, started: tuple[float, float]) -> dict[str, float]:
    wall, cpu = time.perf_counter() - started[0], time.process_time() - started[1]
    return {"wall_us": round(wall / count * 1e6, 1), "cpu_us": round(cpu / count * 1e6, 1)}


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def blocking(port: int, count: int) -> dict[str, float]:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count // 10):
            sock.sendall(PING)
            sock.recv(64)
        started = _now()
        for _ in range(count):
            sock.sendall(PING)
            sock.recv(64)
        return _per_call(count, started)


async def _timed(call: Callable[[], Awaitable[Any]], count: int) -> dict[str, float]:
    for _ in range(count // 10):
        await call()
    started = _now()
    for _ in range(count):
        await call()
    return _per_call(count, started)


async def trio_paths(redis: PrivateRedis, count: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    stream = await trio.open_tcp_stream("127.0.0.1", redis.port)

    async def via_stream() -> None:
        await stream.send_all(PING)
        await stream.receive_some(64)

    out["trio_socket_stream"] = await _timed(via_stream, count)
    raw = socket.socket(fileno=stream.socket.detach())
    raw.setblocking(False)

    async def via_wait_readable() -> None:
        raw.send(PING)
        await trio.lowlevel.wait_readable(raw)
        raw.recv(64)

    out["trio_wait_readable"] = await _timed(via_wait_readable, count)
    raw.close()
    for name, url in (("resp_tcp", redis.url), ("resp_unix", redis.local_url)):
        conn = RespConnection(url)
        out[name] = await _timed(lambda c=conn: c.execute("PING"), count)  # type: ignore[misc]

        async def blocked(c: RespConnection = conn) -> None:
            # The cluster append's way from a feed's call: sent, the reply awaited blocked.
            if not c.send_now("PING") or not c.reply_within(0.05)[0]:
                raise RuntimeError("no PONG within 50 ms")
            await trio.lowlevel.checkpoint()  # not part of the path: keeps _timed's shape

        out[name + "_blocked"] = await _timed(blocked, count)
        await conn.aclose()
    async with open_bridge() as bridge:
        link = await RedisLink.open(bridge, redis.local_url)
        appender = TickAppender(link, keep_ms=60_000, prefix="bench:rtt:")
        quote = Quote(symbol="XAUUSD", bid=2000.0, ask=2000.5, time_ms=1)
        out["append_one_quote_unix"] = await _timed(lambda: appender.append([quote]), count)

        async def append_in_call() -> None:
            if not isinstance(appender.append_nowait([quote], 0.05), list):
                raise RuntimeError("the append was not stamped within 50 ms")
            await trio.lowlevel.checkpoint()

        out["append_one_quote_unix_in_call"] = await _timed(append_in_call, count)
        await appender.aclose()
        await link.aclose()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "redis round trips")
    parser.add_argument("--count", type=int, default=3000, help="round trips per path")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tripwire-rtt-") as folder:
        redis = PrivateRedis(Path(folder) / "redis")
        redis.start()
        try:
            paths = {"blocking_socket": blocking(redis.port, args.count)}
            paths.update(run_harness(trio_paths, redis, args.count))
        finally:
            redis.kill()
    print(f"Redis PING round trips, {args.count} per path (this process's CPU and wall time):")
    for name, figures in paths.items():
        print(f"  {name:24s} cpu {figures['cpu_us']:7.1f} us   wall {figures['wall_us']:7.1f} us")
    write_json(args.json, {"machine": machine(), "count": args.count, "paths": paths})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

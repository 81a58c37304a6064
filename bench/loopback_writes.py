"""What one close's socket write costs the engine on this machine: the floor under a burst.

    python -m bench.loopback_writes [--sockets 20] [--bursts 300] [--json out.json]

A burst of closes leaves one write per device, one after another, from the engine's one thread.
This times exactly that and nothing else: a process holding ``--sockets`` loopback TCP
connections (the "devices", reading them all in an ``epoll`` loop, at nice 10 as
``bench.e2e``'s EAs run) and this process writing one 250-byte frame to each in turn, ``--bursts``
times, 10 ms apart. The first write of a burst wakes the reader (the kernel runs the receiver's
side of loopback TCP inside the sender's call, and its wake-up); the others find it awake.
"""

from __future__ import annotations

import itertools
import os
import select
import socket
import statistics
import sys
import time

from bench.common import base_parser, machine, write_json

__all__ = ["main"]

FRAME = b"x" * 250
"""About a signed close command in msgpack, framed."""


def _reader(port: int, count: int) -> None:
    """The devices' process: read every connection until each has closed."""
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    os.nice(10)
    poller = select.epoll()
    for conn in conns:
        poller.register(conn.fileno(), select.EPOLLIN)
    open_ = count
    while open_:
        for fd, _events in poller.poll():
            if not os.read(fd, 65_536):
                poller.unregister(fd)
                open_ -= 1
    os._exit(0)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 1)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("The cost of one frame's write to a loopback socket, in bursts.")
    parser.add_argument("--sockets", type=int, default=20, help="connections (devices)")
    parser.add_argument("--bursts", type=int, default=300, help="bursts, 10 ms apart")
    args = parser.parse_args(argv)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(args.sockets)
    port = server.getsockname()[1]
    child = os.fork()
    if child == 0:
        _reader(port, args.sockets)
    conns = [server.accept()[0] for _ in range(args.sockets)]
    for conn in conns:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.setblocking(False)
    first: list[float] = []
    others: list[float] = []
    for _ in range(args.bursts):
        time.sleep(0.01)
        stamps = [time.perf_counter_ns()]
        for conn in conns:
            os.write(conn.fileno(), FRAME)
            stamps.append(time.perf_counter_ns())
        took = [(b - a) / 1000 for a, b in itertools.pairwise(stamps)]
        first.append(took[0])
        others.extend(took[1:])
    for conn in conns:
        conn.close()
    os.waitpid(child, 0)
    results = {
        name: {
            "p50": _percentile(values, 0.5),
            "p90": _percentile(values, 0.9),
            "p99": _percentile(values, 0.99),
            "mean": round(statistics.fmean(values), 1),
        }
        for name, values in (("first_write_us", first), ("other_writes_us", others))
    }
    for name, row in results.items():
        print(f"{name:16} p50 {row['p50']:6}  p90 {row['p90']:6}  p99 {row['p99']:6}")
    write_json(args.json, {"machine": machine(), "config": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The engine process of ``bench.e2e``: the real runtime plus a raw WebSocket echo server.

The echo server (trio-websocket, no Quart, no protocol) runs in the same trio run as the
engine, so the harness measures the bare cost of a WebSocket round trip between the same
processes as the engine's own traffic: the baseline every latency is divided by.

    python -m bench.e2e_engine [--echo-port PORT] [--trace PATH]   (settings: TRIPWIRE_*)

``--trace PATH`` turns on hop tracing (``actors.tracing``) and writes, once the engine has
stopped, every traced close command's stamps to PATH (msgpack: command id -> stamps in the
order of ``actors.tracing.HOPS``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgspec
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from actors import tracing
from gateway.config import load_settings
from gateway.runtime import run
from persistence.logs import configure_logging

__all__ = ["main"]


async def _echo(request: WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except ConnectionClosed:
        return  # the client is done: the server (and the engine beside it) carries on


async def _run(echo_port: int) -> None:
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    async with trio.open_nursery() as nursery:
        if echo_port:
            nursery.start_soon(serve_websocket, _echo, "127.0.0.1", echo_port, None)
        await run(settings)
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Tripwire plus a raw echo WebSocket server.")
    parser.add_argument("--echo-port", type=int, default=0, help="0: no echo server")
    parser.add_argument("--trace", metavar="PATH", help="trace every close's hops into PATH")
    args = parser.parse_args(argv)
    trace = tracing.enable() if args.trace else None
    trio.run(_run, args.echo_port)
    if trace is not None:
        Path(args.trace).write_bytes(msgspec.msgpack.encode(trace.commands))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The engine process of ``bench.e2e``: the real runtime plus a raw WebSocket echo server.

The echo server (trio-websocket, no Quart, no protocol) runs in the same trio run as the
engine, so the harness measures the bare cost of a WebSocket round trip between the same
processes as the engine's own traffic: the baseline every latency is divided by.

    python -m bench.e2e_engine [--echo-port PORT] [--trace PATH [--steps]]   (TRIPWIRE_*)

``--trace PATH`` turns on hop tracing (``actors.tracing``) and writes, once the engine has
stopped, to PATH (msgpack): ``commands``, every traced close command's stamps (command id ->
stamps in the order of ``actors.tracing.HOPS``), and ``busy``, every frame handled (kind,
start, end). With ``--steps`` also ``steps``: every step of every trio task (name, start,
end), from a trio instrument; it costs ~1 us a step, so it is off unless asked for.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
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


class _Steps(trio.abc.Instrument):
    """Every task step of the run: (task name, start ns, end ns); and every collection of the
    garbage collector, as a step of ``gc:GENERATION``."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, int, int]] = []
        self._began = 0
        self._collecting = 0
        gc.callbacks.append(self._collection)

    def _collection(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._collecting = time.monotonic_ns()
        else:
            self.steps.append((f"gc:{info['generation']}", self._collecting, time.monotonic_ns()))

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._began = time.monotonic_ns()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps.append((task.name, self._began, time.monotonic_ns()))


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
    parser.add_argument("--steps", action="store_true", help="with --trace: every task step")
    args = parser.parse_args(argv)
    trace = tracing.enable() if args.trace else None
    steps = _Steps() if trace is not None and args.steps else None
    trio.run(_run, args.echo_port, instruments=[steps] if steps is not None else [])
    if trace is not None:
        traced = {"commands": trace.commands, "busy": trace.busy}
        if steps is not None:
            traced["steps"] = steps.steps
        Path(args.trace).write_bytes(msgspec.msgpack.encode(traced))
    return 0


if __name__ == "__main__":
    sys.exit(main())

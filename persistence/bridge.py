"""The one bridge from trio to asyncio: one asyncio event loop in one dedicated thread.

asyncpg and redis-py are asyncio libraries; Tripwire runs under trio. Rather than running trio
inside asyncio (trio-asyncio) we keep the two apart: every asyncpg pool and redis client lives
on a single asyncio loop in its own thread, and trio code reaches it through
:meth:`Bridge.run`, which

* schedules the coroutine on that loop (``asyncio.run_coroutine_threadsafe``);
* parks the calling trio task with ``trio.lowlevel.wait_task_rescheduled`` and wakes it from
  the future's done-callback through the trio token (``run_sync_soon``). No trio worker thread
  is parked per call, so a thousand concurrent calls cost a thousand small futures, not a
  thousand threads;
* on trio cancellation, cancels the asyncio task and waits for it to finish cancelling before
  raising ``trio.Cancelled``: when ``run`` returns or raises, nothing of the call is still
  running on the other side (a transaction is rolled back or committed, never half-way);
* re-raises the coroutine's exception in the trio task, traceback included.

The two threads share the GIL. CPython hands it over to a waiting thread only every "switch
interval" (5 ms by default) while the holder keeps computing, so a busy trio thread (the engine
under load) makes every step of the asyncio side (wake up, send, read the reply) wait up to
5 ms for it: journal writes that take 2 ms alone took 20-300 ms under load in our
measurements. :func:`open_bridge` therefore lowers the process's switch interval to 0.5 ms
while the bridge is open (write p99 back under 10 ms, no measurable cost to throughput) and
restores it on exit.

Keep the asyncio side thin: a coroutine handed to ``run`` should talk to the database or Redis
and return. Anything that needs trio (channels, events, the engine's state) stays on the trio
side. Usage::

    async with open_bridge() as bridge:
        value = await bridge.run(pool.fetchval, "SELECT 1")
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import outcome
import structlog
import trio

from protocol.errors import UsageError

__all__ = ["Bridge", "open_bridge"]

T = TypeVar("T")

_SHUTDOWN_TIMEOUT_S = 10.0
_log = structlog.get_logger(component="bridge")  # lazy: configured at first use


class Bridge:
    """A handle on the asyncio loop thread; create it with :func:`open_bridge`.

    Attributes:
        inflight: calls scheduled on the loop and not yet returned to trio (a gauge).
        calls_total: calls made since the bridge opened (a counter).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self._loop = loop
        self._thread = thread
        self._closed = False
        self.inflight = 0
        self.calls_total = 0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The asyncio loop (for code that must create asyncio objects bound to it)."""
        return self._loop

    @property
    def closed(self) -> bool:
        return self._closed

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` on the asyncio loop and return its result to trio.

        ``fn`` is called on the loop thread (not here), so even a function that does work
        before returning its awaitable runs on the asyncio side.

        Raises:
            UsageError: the bridge is closed, or the call was cancelled from the asyncio side
                (the loop shutting down under it).
            trio.Cancelled: the trio side was cancelled; the asyncio task has been cancelled and
                has finished by the time this propagates.
            Exception: whatever ``fn`` raised.
        """
        if self._closed:
            raise UsageError("the asyncio bridge is closed")
        await trio.lowlevel.checkpoint_if_cancelled()
        token = trio.lowlevel.current_trio_token()
        task = trio.lowlevel.current_task()

        async def call() -> T:
            return await fn(*args)

        loop = self._loop
        running: list[asyncio.Task[T]] = []

        def on_done(done: asyncio.Task[T]) -> None:
            # Runs on the loop thread once the task has really finished.
            result: outcome.Outcome[T]
            if done.cancelled():
                result = outcome.Error(asyncio.CancelledError())
            elif (exc := done.exception()) is not None:
                result = outcome.Error(exc)
            else:
                result = outcome.Value(done.result())
            with contextlib.suppress(trio.RunFinishedError):  # the trio run died under us
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        def start() -> None:
            running.append(loop.create_task(call()))
            running[0].add_done_callback(on_done)

        def cancel() -> None:
            # call_soon_threadsafe keeps FIFO order, so start() has always run before this.
            if running:
                running[0].cancel()

        cancel_requested = False

        def abort(_: Any) -> trio.lowlevel.Abort:
            # Ask asyncio to cancel and keep waiting: on_done still wakes us, so the call has
            # really stopped (rolled back, connection released) when we raise Cancelled.
            nonlocal cancel_requested
            if not cancel_requested:
                cancel_requested = True
                with contextlib.suppress(RuntimeError):  # loop closed: on_done already ran
                    loop.call_soon_threadsafe(cancel)
            return trio.lowlevel.Abort.FAILED

        try:
            loop.call_soon_threadsafe(start)
        except RuntimeError:  # the loop closed between the check above and here
            raise UsageError("the asyncio bridge is closed") from None
        self.inflight += 1
        self.calls_total += 1
        try:
            value: T = await trio.lowlevel.wait_task_rescheduled(abort)
        except asyncio.CancelledError:
            if cancel_requested:
                await trio.lowlevel.checkpoint()  # our scope is cancelled: raises Cancelled
            raise UsageError("the asyncio side cancelled a bridged call") from None
        finally:
            self.inflight -= 1
        return value


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left on the loop and let it unwind (as ``asyncio.run`` does)."""
    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            _log.warning("asyncio task failed during bridge shutdown", error=repr(task.exception()))


@asynccontextmanager
async def open_bridge(
    name: str = "tripwire-asyncio", *, gil_switch_interval_s: float | None = 0.0005
) -> AsyncIterator[Bridge]:
    """Start the asyncio loop thread; stop it (cleanly) when the block exits.

    On exit every task still on the loop is cancelled, async generators and the default
    executor are shut down, the loop is closed and the thread joined. Close what you opened on
    the bridge (database pools, redis clients) before leaving the block: they need the loop.

    ``gil_switch_interval_s`` lowers ``sys.setswitchinterval`` while the bridge is open (see
    the module docstring); None leaves it alone. A lower setting already in place is kept.
    """
    loop = asyncio.new_event_loop()
    token = trio.lowlevel.current_trio_token()
    started = trio.Event()
    finished = trio.Event()

    def notify(event: trio.Event) -> None:
        with contextlib.suppress(trio.RunFinishedError):  # the trio run ended first
            token.run_sync_soon(event.set)

    def thread_main() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(notify, started)
        try:
            loop.run_forever()
            _cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()
            notify(finished)

    previous_interval = sys.getswitchinterval()
    if gil_switch_interval_s is not None and gil_switch_interval_s < previous_interval:
        sys.setswitchinterval(gil_switch_interval_s)
    thread = threading.Thread(target=thread_main, name=name, daemon=True)
    thread.start()
    bridge = Bridge(loop, thread)
    try:
        await started.wait()
        yield bridge
    finally:
        bridge._closed = True
        with contextlib.suppress(RuntimeError):  # the loop already closed (thread died)
            loop.call_soon_threadsafe(loop.stop)
        with trio.CancelScope(shield=True):
            with trio.move_on_after(_SHUTDOWN_TIMEOUT_S) as scope:
                await finished.wait()
                await trio.to_thread.run_sync(thread.join)
            if scope.cancelled_caught:
                # A task that ignores cancellation; the thread is a daemon and dies with us.
                _log.error("asyncio loop did not stop in time", timeout_s=_SHUTDOWN_TIMEOUT_S)
        sys.setswitchinterval(previous_interval)

"""Charts the old platform rendered on the server: the equity curve and a symbol's candles.

Rendering (:mod:`gateway.charting`, matplotlib's Agg backend) runs in a small pool of worker
processes, off the event loop. Threads would not do: Agg holds the GIL for most of a render,
so a render in a thread still takes the event loop's core in turns of the switch interval (the
loop stalled up to 100 ms at a time while two threads rendered), while processes leave it alone
and render on both cores. The workers run at a lower CPU priority than the engine.

:class:`ChartPool` bounds the work: at most ``chart_workers`` renders at once, at most
``chart_per_user`` charts of one user rendering or waiting, at most ``chart_queue`` waiting in
all. Past either of the last two the answer is 429 with ``Retry-After``, at once. The queue is
fair, not first come first served: a waiting render of the user with the least going on
(charts in flight, plus renders lately, decaying) goes first, and when the queue is full a
newcomer lighter than the heaviest waiter takes that one's place (the heaviest is refused).
So a flood of distinct charts, from one user or from many, makes the flooders wait and be
refused; somebody else's chart waits for about one render. A rendered PNG is kept for
:data:`CHART_TTL_MS` in the read cache, so a dashboard refreshing it costs one render per few
seconds; a cached chart never counts against a limit. The pool starts with the first render
(the engine does not pay for matplotlib until a chart is asked for) and stops after
:data:`IDLE_S` without one, or with the engine.
"""

from __future__ import annotations

import itertools
import multiprocessing
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import structlog
import trio
from quart import Blueprint, Response
from quart_schema import validate_querystring

from gateway.charting import render_candles, render_equity, start_worker
from gateway.context import GatewayContext
from gateway.rest.analytics import Equity, curve_stats, equity_of
from gateway.rest.common import ctx, identity, require_token
from gateway.rest.docs import bearer, binary, errors
from gateway.rest.market import CandleQuery, candle_book, known_symbol
from gateway.rest.placement import serve_here
from gateway.rest.reads import read_through
from protocol.errors import RateLimited

__all__ = ["CHART_TTL_MS", "ChartPool", "blueprint", "chart_pool", "equity_chart_data"]

blueprint = Blueprint("charts", __name__, url_prefix="/api/v1/charts")
require_token(blueprint)

CHART_TTL_MS = 5_000
RETRY_AFTER_S = 1
"""What a refused caller is told to wait (a render takes a few hundred ms)."""
_NICENESS = 10
LATELY_HALF_LIFE_S = 30.0
LATELY_USERS = 1024
IDLE_S = 60.0
"""The worker processes exit after this long without a render (they hold ~60 MB each)."""
_log = structlog.get_logger().bind(component="charts")


class _Waiter:
    """A render of ``user`` waiting for a worker."""

    __slots__ = ("event", "granted", "refused", "seq", "user")

    def __init__(self, user: str, seq: int) -> None:
        self.user = user
        self.seq = seq
        self.event = trio.Event()
        self.granted = False
        self.refused = False


class _FairSlots:
    """``workers`` slots and at most ``queue`` waiters, the lightest served first.

    A waiter's weight is ``weight(user)`` *now* (its user's charts in flight plus the renders
    they had lately), then its arrival: whoever has the least going on is next, and a
    flooder's own renders queue behind everybody else's. The queue is a short list
    (``chart_queue``), scanned.
    """

    def __init__(self, workers: int, queue: int, weight: Callable[[str], float]) -> None:
        self.free = workers
        self.queue = queue
        self.weight = weight
        self._waiting: list[_Waiter] = []
        self._seq = itertools.count()

    def _order(self, waiter: _Waiter) -> tuple[float, int]:
        return self.weight(waiter.user), waiter.seq

    async def acquire(self, user: str) -> None:
        """A slot for ``user``, when it is their turn.

        Raises:
            RateLimited: the queue is full of waiters no heavier than this one, or a lighter
                newcomer took this waiter's place.
        """
        if self.free and not self._waiting:
            self.free -= 1
            await trio.lowlevel.checkpoint()
            return
        waiter = _Waiter(user, next(self._seq))
        if len(self._waiting) >= self.queue:
            heaviest = max(self._waiting, key=self._order, default=None)
            if heaviest is None or self._order(waiter) >= self._order(heaviest):
                raise RateLimited("every chart renderer is busy", retry_after_s=RETRY_AFTER_S)
            self._waiting.remove(heaviest)
            heaviest.refused = True
            heaviest.event.set()
        self._waiting.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted:  # granted as it was cancelled: pass the slot on
                self.release()
            elif not waiter.refused:
                self._waiting.remove(waiter)
            raise
        if waiter.refused:
            raise RateLimited("every chart renderer is busy", retry_after_s=RETRY_AFTER_S)

    def release(self) -> None:
        """Give a slot back: to the lightest waiter, if any."""
        if self._waiting:
            waiter = min(self._waiting, key=self._order)
            self._waiting.remove(waiter)
            waiter.granted = True
            waiter.event.set()
        else:
            self.free += 1


class ChartPool:
    """Renders in worker processes, within the limits (see the module docstring).

    Attributes:
        rendering: renders in the worker processes now; ``peak``: the most there ever were
            (never more than ``workers``).
        waiting: renders admitted and waiting for a worker.
        rendered: renders done; ``refused``: 429s by reason (``user``, ``busy``).
    """

    def __init__(self, workers: int, per_user: int, queue: int, idle_s: float = IDLE_S) -> None:
        self.workers = workers
        self.idle_s = idle_s
        self.per_user = per_user
        self.queue = queue
        self._mine: Counter[str] = Counter()
        self._lately: dict[str, tuple[float, float]] = {}  # user -> (score, at)
        self._slots = _FairSlots(workers, queue, self._weight)
        self._executor: ProcessPoolExecutor | None = None
        self._used = 0.0
        self.rendering = 0
        self.waiting = 0
        self.peak = 0
        self.rendered = 0
        self.refused: Counter[str] = Counter()

    async def render(self, user_id: str, fn: Callable[..., bytes], *args: Any) -> bytes:
        """``fn(*args)`` in a worker process, on behalf of ``user_id``.

        Raises:
            RateLimited: ``user_id`` has ``per_user`` charts in flight already, or the queue is
                full of renders of users with no more in flight (now, or later, when one with
                fewer takes its place); ``retry_after_s`` is in the details.
        """
        if self._mine[user_id] >= self.per_user:
            self.refused["user"] += 1
            raise RateLimited(
                f"you have {self.per_user} charts rendering already",
                retry_after_s=RETRY_AFTER_S,
                limit=self.per_user,
            )
        self._mine[user_id] += 1
        try:
            self.waiting += 1
            try:
                await self._slots.acquire(user_id)
            except RateLimited:
                self.refused["busy"] += 1
                raise
            finally:
                self.waiting -= 1
            self._count_render(user_id)
            try:
                return await self._run(fn, args)
            finally:
                self._slots.release()
        finally:
            self._mine[user_id] -= 1
            if not self._mine[user_id]:
                del self._mine[user_id]

    def _weight(self, user_id: str) -> float:
        """What ``user_id`` has going on: charts in flight, plus renders lately (each counts 1,
        halving every :data:`LATELY_HALF_LIFE_S`), so that a user who just had many renders
        yields to one who had none, even when each has one chart waiting."""
        score, at = self._lately.get(user_id, (0.0, 0.0))
        # typeshed types float ** float as Any (a negative base gives a complex); ours is 0.5
        decay: float = 0.5 ** ((trio.current_time() - at) / LATELY_HALF_LIFE_S)
        return self._mine[user_id] + score * decay

    def _count_render(self, user_id: str) -> None:
        now = trio.current_time()
        self._lately[user_id] = (self._weight(user_id) - self._mine[user_id] + 1, now)
        if len(self._lately) > 4 * LATELY_USERS:  # forget the ones long quiet
            recent = sorted(self._lately.items(), key=lambda item: item[1][1])[-LATELY_USERS:]
            self._lately = dict(recent)

    async def _run(self, fn: Callable[..., bytes], args: tuple[Any, ...]) -> bytes:
        for attempt in (1, 2):
            executor = self._executor or self._start()
            self._used = trio.current_time()
            self.rendering += 1
            self.peak = max(self.peak, self.rendering)
            try:
                # Waiting for the future in a thread cannot be cancelled, and should not be:
                # the worker renders on regardless, and its slot is free only when it is done.
                future = executor.submit(fn, *args)
                png: bytes = await trio.to_thread.run_sync(future.result)
            except BrokenProcessPool:  # a worker died (killed, out of memory): start afresh
                _log.warning("chart worker died; starting a new pool", attempt=attempt)
                self._discard(executor)
                if attempt == 2:
                    raise
            else:
                self.rendered += 1
                return png
            finally:
                self.rendering -= 1
                self._used = trio.current_time()
        raise AssertionError("unreachable")

    def _start(self) -> ProcessPoolExecutor:
        # spawn, not fork: forking a process that runs threads (trio's, asyncpg's) can copy
        # a lock in the held state into the child.
        self._executor = ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=start_worker,
            initargs=(_NICENESS,),
        )
        self._used = trio.current_time()
        # A system task: it is cancelled when the trio run ends, however it ends, and its
        # finally then stops the workers (the app's after-serving hook is skipped when the
        # server is cancelled rather than shut down).
        trio.lowlevel.spawn_system_task(self._retire_when_idle, self._executor)
        return self._executor

    async def _retire_when_idle(self, executor: ProcessPoolExecutor) -> None:
        try:
            while self._executor is executor:
                await trio.sleep_until(max(self._used + self.idle_s, trio.current_time() + 0.5))
                idle = self.rendering == 0 and self.waiting == 0
                if idle and trio.current_time() >= self._used + self.idle_s:
                    break
        finally:
            self._discard(executor)

    def _discard(self, executor: ProcessPoolExecutor) -> None:
        if self._executor is executor:
            self._executor = None
        executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Tell the worker processes to exit once the renders under way are done (without
        waiting for them)."""
        if self._executor is not None:
            self._discard(self._executor)


def chart_pool(context: GatewayContext) -> ChartPool:
    """The app's chart pool (made on first use, from the settings)."""
    pool = context.chart_pool
    if pool is None:
        s = context.settings
        pool = context.chart_pool = ChartPool(s.chart_workers, s.chart_per_user, s.chart_queue)
    return pool


def equity_chart_data(equity: Equity) -> tuple[list[tuple[int, float]], str]:
    """What the equity PNG shows: the points of ``/analytics``' curve and a title with its
    maximum drawdown, computed as ``/analytics`` computes it (blocking: run in a thread)."""
    points = [(p.time_ms, p.equity) for p in equity.points]
    if not points:
        return points, "Equity"
    drawdown = curve_stats(equity.points).max_drawdown
    shown = "none" if drawdown is None else f"{drawdown * 100:.2f} %"
    return points, (
        f"Equity from {points[0][1]:,.2f} to {points[-1][1]:,.2f}, max drawdown {shown}"
    )


def _image(png: bytes) -> Response:
    response = Response(png, content_type="image/png")
    response.headers["Cache-Control"] = f"private, max-age={CHART_TTL_MS // 1000}"
    return response


@blueprint.get("/equity.png")
@bearer
@binary("image/png", description="The caller's equity curve")
@errors(401, 429)
async def equity_chart() -> Any:
    """The caller's equity curve as a PNG."""
    context = ctx()
    user_id = identity().user_id
    serve_here(user_id)  # the user actor's ledger

    async def render() -> bytes:
        equity = await equity_of(context, user_id)
        points, title = await trio.to_thread.run_sync(equity_chart_data, equity)
        return await chart_pool(context).render(user_id, render_equity, points, title)

    return _image(await read_through(context, f"chart:equity:{user_id}", render, CHART_TTL_MS))


@blueprint.get("/candles/<symbol>.png")
@bearer
@validate_querystring(CandleQuery)
@binary("image/png", description="Candles of the symbol's bid")
@errors(400, 401, 404, 429)
async def candles_chart(symbol: str, query_args: CandleQuery) -> Any:
    """A symbol's candles as a PNG (the same data as ``/market/{symbol}/candles``)."""
    context = ctx()
    user_id = identity().user_id
    known_symbol(context, symbol)
    interval, limit = query_args.interval_s, query_args.limit

    async def render() -> bytes:
        candles = [tuple(c) for c in candle_book(context).candles(symbol, interval, limit)]
        title = f"{symbol} {interval} s candles"
        pool = chart_pool(context)
        return await pool.render(user_id, render_candles, candles, title, interval)

    key = f"chart:candles:{symbol}:{interval}:{limit}"
    return _image(await read_through(context, key, render, CHART_TTL_MS))

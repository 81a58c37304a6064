"""The journal's writer: every state change, appended in memory, written by group commit.

Rules of operation:

* **Two ways in.** :meth:`JournalWriter.append_nowait` assigns the record its sequence number and
  returns at once: the tick path uses it and never waits for the database. :meth:`append`
  does the same and then waits until the batch holding the record has COMMITTED: whatever is
  acknowledged to the outside (an HTTP 2xx, an ACK frame) goes through it, or through
  :meth:`wait_committed` after a few ``append_nowait``.
* **One writer.** :meth:`run` (start it with ``nursery.start``) takes up to ``max_batch``
  records, waiting at most ``window_ms`` after the first one so that concurrent appends share
  one commit; encodes them with ``encode_batch`` into one msgpack list (with its replay index,
  ``engine.journal_index``, when the encoder makes one); and in ONE transaction inserts the
  journal row and runs the projection statements ``project(batch)`` returns
  (``executemany`` per statement). Then it wakes every waiter of the batch.
* **Sequence numbers** are contiguous from 1 and resume after the highest seq in the journal
  or the snapshots when :meth:`run` starts.
* **Postgres down: keep trading.** ``append_nowait`` keeps buffering; the writer retries the
  same batch with capped exponential backoff, alerts once per outage (``on_alert``) and once
  when it recovers, then catches up in order. A retried batch that had in fact committed is
  recognised by its ``first_seq`` and not written twice.
* **Bounded.** Past ``soft_limit`` pending records, :meth:`append` refuses at once with
  :class:`~protocol.errors.StorageError` (the caller answers 503: we cannot make new
  acknowledgements durable soon). ``append_nowait`` goes on to ``hard_limit`` and then refuses
  too: the engine must stop taking on work it cannot record. Better to refuse loudly than to
  drop records silently or to grow until the process is killed for its memory.
* **Projection failures never block the journal**: the row commits, the projection is rolled
  back, an alert says so (projections can be rebuilt from the journal; a record cannot).

Reading the journal back is :mod:`persistence.journal_reader`'s; snapshots and compaction are
:mod:`persistence.snapshot_store`'s.

Everything here runs on the trio thread; nothing is thread-safe, and nothing needs to be.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import structlog
import trio

from persistence import journal_sql as store
from persistence.db import Database
from protocol.common import Alert, AlertLevel
from protocol.errors import StorageError, UsageError

__all__ = ["JournalWriter"]

T = TypeVar("T")

EncodeBatch = Callable[[list[T]], "bytes | tuple[bytes, bytes]"]
"""records -> their msgpack list, or ``(that list, its replay index)`` (engine.journal_index)."""
Project = Callable[[list[T]], store.Statements]
OnAlert = Callable[[Alert], None]

_log = structlog.get_logger(component="journal")  # lazy: configured at first use


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class JournalWriter(Generic[T]):
    """The write-behind journal writer of records of type ``T`` (see the module docstring).

    Args:
        db: where the journal lives (migrated).
        encode_batch: records -> one msgpack list (a ``msgspec.msgpack.Encoder`` of the
            record union, built once), or that list and its replay index
            (``engine.journal_index.encode_indexed_batch``, what the engine writes: recovery
            then decodes only the records it keeps).
        project: records -> ``[(sql, [args, ...]), ...]`` for the projection tables, run with
            ``executemany`` in the batch's transaction. Called on the trio thread; keep it
            pure: a batch whose write was interrupted (shutdown) is projected again.
        window_ms: how long a batch stays open after its first record (group commit).
        max_batch: records per batch at most (a backlog is written in chunks this big).
        soft_limit: pending records past which :meth:`append` refuses.
        hard_limit: pending records past which :meth:`append_nowait` refuses too.
        on_alert: called (on the trio thread, must not block) with an
            :class:`~protocol.common.Alert` when writes start failing, when they recover, and
            when a projection starts failing.
        max_backoff_s: the longest pause between two write attempts during an outage.
        shutdown_grace_s: how long a cancelled writer may go on writing what is pending.

    Metrics (plain attributes, read them any time): ``pending`` records not yet committed,
    ``lag_ms`` age of the oldest of them, ``batches_written``, ``records_written``,
    ``write_errors`` (failed write attempts), ``projection_errors``, ``last_batch_ms``
    (duration of the last batch's write, retries included), ``healthy`` (False during an
    outage).
    """

    def __init__(
        self,
        db: Database,
        encode_batch: EncodeBatch[T],
        project: Project[T] | None = None,
        *,
        window_ms: float = 2.0,
        max_batch: int = 5000,
        soft_limit: int = 25_000,
        hard_limit: int = 250_000,
        on_alert: OnAlert | None = None,
        max_backoff_s: float = 2.0,
        shutdown_grace_s: float = 5.0,
    ) -> None:
        if not 0 < max_batch <= soft_limit <= hard_limit:
            raise UsageError("journal limits must satisfy 0 < max_batch <= soft <= hard")
        if window_ms < 0:
            raise UsageError("window_ms must be >= 0")
        self.db = db
        self.window_s = window_ms / 1000
        self.max_batch = max_batch
        self.soft_limit = soft_limit
        self.hard_limit = hard_limit
        self.max_backoff_s = max_backoff_s
        self.shutdown_grace_s = shutdown_grace_s
        self._encode = encode_batch
        self._project = project
        self._on_alert = on_alert
        self._buffer: list[T] = []
        self._buffer_since = 0.0  # monotonic time of the oldest buffered record
        self._buffer_since_trio = 0.0  # the same on trio's clock, for the window
        self._inflight: list[T] = []  # the batch being written (kept until it commits)
        self._inflight_since = 0.0
        self._next_seq = 0  # 0 until run() has found where the journal ends
        self._committed_seq = 0
        self._flush_upto = 0
        self._running = False
        self._have_work = trio.Event()
        self._hurry = trio.Event()
        # Waiters of wait_committed, a heap of (seq, tiebreak, event): a commit wakes exactly
        # the waiters it satisfies, not everyone (thousands of acks wait at once under load).
        self._waiters: list[tuple[int, int, trio.Event]] = []
        self._waiter_ids = itertools.count()
        self._outage_since: float | None = None  # trio clock
        self._projection_failing = False
        self.healthy = True
        self.batches_written = 0
        self.records_written = 0
        self.write_errors = 0
        self.projection_errors = 0
        self.last_batch_ms = 0.0

    # -- metrics ------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records appended and not yet committed."""
        return len(self._buffer) + len(self._inflight)

    @property
    def lag_ms(self) -> float:
        """Age of the oldest record not yet committed (0 when none is pending).

        After a batch is cut at ``max_batch`` the rest inherit the older time: the lag may
        read a little high under a backlog, never low.
        """
        since = self._inflight_since if self._inflight else self._buffer_since
        if not self.pending:
            return 0.0
        return (time.monotonic() - since) * 1000

    @property
    def committed_seq(self) -> int:
        """The highest seq known committed."""
        return self._committed_seq

    @property
    def last_seq(self) -> int:
        """The highest seq assigned so far."""
        return max(self._next_seq - 1, 0)

    # -- appending ----------------------------------------------------------------------------

    def append_nowait(self, record: T) -> int:
        """Queue ``record`` and return its seq; never waits.

        Raises:
            StorageError: ``hard_limit`` records are pending (Postgres has been away too long).
            UsageError: the writer is not running (start :meth:`run` first).
        """
        if not self._running:
            raise UsageError("the journal writer is not running; start JournalWriter.run first")
        if len(self._buffer) + len(self._inflight) >= self.hard_limit:
            raise StorageError(
                "journal buffer full", pending=self.pending, limit=self.hard_limit, hard=True
            )
        seq = self._next_seq
        self._next_seq = seq + 1
        if not self._buffer:
            self._buffer_since = time.monotonic()
            self._buffer_since_trio = trio.current_time()
            self._have_work.set()
        self._buffer.append(record)
        if len(self._buffer) >= self.max_batch:
            self._hurry.set()
        return seq

    async def append(self, record: T) -> int:
        """Queue ``record`` and return its seq once its batch has committed.

        If the wait is cancelled the record stays queued and will still be written: the
        outcome is unknown to the caller, as with any timeout, so operations must be
        idempotent (ours carry ids).

        Raises:
            StorageError: ``soft_limit`` records are already pending; nothing was queued.
        """
        if self.pending >= self.soft_limit:
            raise StorageError(
                "journal backlog over its soft limit",
                pending=self.pending,
                limit=self.soft_limit,
                hard=False,
            )
        seq = self.append_nowait(record)
        await self.wait_committed(seq)
        return seq

    async def wait_committed(self, seq: int) -> None:
        """Return once every record up to ``seq`` has committed."""
        if self._committed_seq >= seq:
            await trio.lowlevel.checkpoint()
            return
        event = trio.Event()
        heapq.heappush(self._waiters, (seq, next(self._waiter_ids), event))
        await event.wait()

    async def flush(self) -> None:
        """Write everything appended so far without waiting out the window; return when
        it has committed."""
        target = self._next_seq - 1
        if target > self._committed_seq:
            self._flush_upto = max(self._flush_upto, target)
            self._hurry.set()
        await self.wait_committed(target)

    async def flush_through(self, seq: int) -> None:
        """Return once record ``seq`` has committed, flushing if it has not (a snapshot at
        ``seq`` must never be ahead of the journal it summarises); at once when the writer is
        not running (nothing can be pending then).

        Raises:
            UsageError: ``seq`` is past the last appended record.
        """
        if not self._running or seq <= self._committed_seq:
            return
        if seq > self.last_seq:
            raise UsageError("snapshot seq is past the last appended record", seq=seq)
        await self.flush()

    # -- the writer ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task. Start it with ``await nursery.start(journal.run)``.

        It reports started once it knows where the journal ends (so seqs can be assigned).
        When cancelled it first writes what is pending, shielded, for at most
        ``shutdown_grace_s``; records still unwritten after that are lost with the process
        (none of them was acknowledged).
        """
        if self._running:
            raise UsageError("the journal writer is already running")
        last, sync_commit = await self._retrying(
            lambda: self.db.run_with_connection(store.last_seq)
        )
        if sync_commit == "off":
            # COMMIT returns before the WAL is written: a Postgres crash can lose batches we
            # have acknowledged. Tolerable for throw-away setups only; say so loudly.
            _log.error("synchronous_commit is off: acknowledged records can be lost in a crash")
        self._committed_seq = last
        self._next_seq = last + 1
        self._running = True
        _log.info("journal writer started", resume_after=last)
        task_status.started()
        try:
            while True:
                await self._collect()
                await self._write_inflight()
        except trio.Cancelled:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self.shutdown_grace_s
                self._flush_upto = self._next_seq - 1
                while self._inflight or self._buffer:
                    if not self._inflight:
                        self._take()
                    await self._write_inflight()
            if self.pending:
                _log.error("journal stopped with records unwritten", pending=self.pending)
            raise
        finally:
            self._running = False

    def _take(self) -> None:
        n = min(len(self._buffer), self.max_batch)
        self._inflight = self._buffer[:n]
        del self._buffer[:n]
        self._inflight_since = self._buffer_since  # the rest keep the older time (see lag_ms)

    async def _collect(self) -> None:
        """Wait for records, then for the window (or a full batch, or a flush); take a batch."""
        while not self._buffer:
            self._have_work = trio.Event()
            await self._have_work.wait()
        with trio.move_on_at(self._buffer_since_trio + self.window_s):
            while len(self._buffer) < self.max_batch and self._flush_upto <= self._committed_seq:
                self._hurry = trio.Event()
                await self._hurry.wait()
        self._take()

    async def _write_inflight(self) -> None:
        records = self._inflight
        first = self._committed_seq + 1
        last = first + len(records) - 1
        encoded = self._encode(records)
        payload, index = (encoded, None) if isinstance(encoded, bytes) else encoded
        statements = self._projection(records, first, last)
        write = functools.partial(
            store.write_batch, first_seq=first, last_seq=last, record_index=index
        )
        started = time.perf_counter()
        result = await self._retrying(
            lambda: self.db.run_with_connection(
                functools.partial(write, payload=payload, statements=statements)
            )
        )
        self.last_batch_ms = (time.perf_counter() - started) * 1000
        if result.outcome is store.WriteOutcome.PROJECTION_FAILED:
            self._projection_failed(first, last, result.error)
        elif self._projection_failing and statements:
            self._projection_failing = False
            _log.info("journal projection succeeds again", first_seq=first)
        if result.outcome is store.WriteOutcome.ALREADY_WRITTEN:
            _log.warning("journal batch had already committed", first_seq=first, last_seq=last)
        self._inflight = []
        self._committed_seq = last
        self.batches_written += 1
        self.records_written += len(records)
        waiters = self._waiters
        while waiters and waiters[0][0] <= last:
            heapq.heappop(waiters)[2].set()

    def _projection(self, records: list[T], first: int, last: int) -> store.Statements:
        if self._project is None:
            return []
        try:
            return self._project(records)
        except Exception as exc:
            self._projection_failed(first, last, repr(exc))
            return []

    def _projection_failed(self, first: int, last: int, error: str | None) -> None:
        self.projection_errors += 1
        _log.error("journal projection failed", first_seq=first, last_seq=last, error=error)
        if not self._projection_failing:
            self._projection_failing = True
            self._alert(
                "journal_projection_failed",
                AlertLevel.WARNING,
                f"projection of journal records {first}..{last} failed; the journal is intact:"
                f" {error}",
            )

    async def _retrying(self, attempt: Callable[[], Any]) -> Any:
        """``await attempt()`` until it does not raise StorageError, with capped backoff."""
        delay = 0.05
        while True:
            try:
                result = await attempt()
            except StorageError as exc:
                self.write_errors += 1
                if self._outage_since is None:
                    self._outage_since = trio.current_time()
                    self.healthy = False
                    _log.error("journal writes failing; buffering", error=exc.details.get("error"))
                    self._alert(
                        "journal_unavailable",
                        AlertLevel.CRITICAL,
                        "Postgres is unavailable: journal writes are failing and records are"
                        " buffered in memory",
                    )
                await trio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
                continue
            if self._outage_since is not None:
                outage_s = trio.current_time() - self._outage_since
                self._outage_since = None
                self.healthy = True
                _log.info("journal writes recovered", outage_s=round(outage_s, 3))
                self._alert(
                    "journal_recovered",
                    AlertLevel.INFO,
                    f"Postgres is back after {outage_s:.1f} s; the journal is catching up",
                    value=outage_s,
                )
            return result

    def _alert(
        self, kind: str, level: AlertLevel, message: str, value: float | None = None
    ) -> None:
        alert = Alert(
            kind=kind,
            level=level,
            message=message,
            time_ms=_now_ms(),
            value=float(self.pending) if value is None else value,
        )
        if self._on_alert is None:
            return
        try:
            self._on_alert(alert)
        except Exception as exc:  # an alert sink must never stop the journal
            _log.error("journal alert callback failed", error=repr(exc), kind=kind)

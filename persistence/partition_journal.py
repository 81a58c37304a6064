"""The cluster journal's writer: records grouped by partition, each partition fenced by epoch.

Cluster mode's counterpart of :class:`~persistence.journal_writer.JournalWriter`, with the same
outward API where ``actors.node.Node`` uses it (``append_nowait`` -> ticket,
``wait_committed``, ``flush``, ``pending``, ``lag_ms``, ``run``). Rules of operation:

* **Partitions are opened and closed by the lease runtime.** After a claim commits,
  :meth:`~PartitionJournalWriter.open_partition` (its epoch, the journal's ``last_seq`` and the
  tick checkpoint the claim returned); before a release, :meth:`close_partition`. Appending a
  record of a partition that is not open is a :class:`~protocol.errors.UsageError`; of one
  that was fenced, :class:`~protocol.errors.Fenced`.
* **Tickets and seqs.** ``append_nowait`` gives the record its partition's next seq
  (contiguous per partition) and returns a node-local TICKET, monotonic across partitions:
  :meth:`wait_committed` takes it.
* **One batch, one transaction** (``persistence.partition_sql.write_batch``): up to
  ``max_batch`` records, waiting ``window_ms`` after the first for more (group commit). Per
  partition, one journal row, conditional on the partition's epoch; records of no partition
  (``partition_of`` returns None: signals, audit, market alerts) are GLOBAL: only their
  projection statements run (written ON CONFLICT DO NOTHING), outside any fence.
* **Fenced is final.** When a partition's fence refuses (another node claimed it), its records
  in the batch and in the buffer are dropped (none was acknowledged), their waiters raise
  :class:`~protocol.errors.Fenced`, ``on_fenced(partition)`` is called, and the partition is
  never written again until it is opened again. The other partitions of the same batch commit
  and are acknowledged as usual.
* **Checkpoints** ({symbol: tick stream seq} per partition, :meth:`set_checkpoint`) go with
  the partition's records, in the same conditional UPDATE, only in a batch that holds every
  record the partition had appended before (a checkpoint never runs ahead of its records).
  A checkpoint that changed with no record to carry it is written within
  ``checkpoint_every_s`` anyway (a checkpoint-only fence UPDATE).
* **Postgres down: keep buffering**, retry the same batch with capped backoff, alert once per
  outage and once on recovery, up to ``hard_limit`` pending records (then appends refuse).
  A retried batch that had committed is recognised and not written twice. (A retried batch
  whose partition another node claimed meanwhile reads as fenced even if the first attempt
  had committed: the safe way round, nothing was acknowledged.)

Everything here runs on the trio thread.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

import structlog
import trio

from persistence import journal_sql, partition_sql
from persistence.db import Database
from persistence.write_health import WriteHealth
from protocol.common import Alert
from protocol.errors import Fenced, StorageError, UsageError

__all__ = ["PartitionJournalWriter"]

T = TypeVar("T")

EncodeBatch = Callable[[list[T]], "bytes | tuple[bytes, bytes]"]
Project = Callable[[list[T]], journal_sql.Statements]
OnAlert = Callable[[Alert], None]

_log = structlog.get_logger(component="partition_journal")  # lazy: configured at first use


class _Entry(NamedTuple, Generic[T]):
    ticket: int
    partition: int | None
    seq: int
    record: T


@dataclass(slots=True)
class _Partition:
    epoch: int
    next_seq: int  # the last seq assigned
    committed_seq: int
    checkpoint: dict[str, int]
    written_checkpoint: dict[str, int]
    cp_version: int = 0  # bumped by every set_checkpoint
    cp_committed: int = 0
    buffered: int = 0  # records in the buffer (not yet in a batch)


@dataclass(slots=True)
class _Batch(Generic[T]):
    entries: list[_Entry[T]]
    writes: list[partition_sql.PartitionWrite]
    cp_versions: dict[int, int] = field(default_factory=dict)


class PartitionJournalWriter(Generic[T]):
    """The fenced, per-partition write-behind journal (see the module docstring).

    Args:
        db: the cluster's database (migrated).
        encode_batch: records -> one msgpack list, or that list and its replay index, as for
            :class:`~persistence.journal_writer.JournalWriter` (called per partition).
        project: records -> projection statements (called per partition, and once for the
            global records of a batch); keep it pure.
        partition_of: a record's partition, or None for a global record.
        window_ms, max_batch, soft_limit, hard_limit, on_alert, max_backoff_s,
        shutdown_grace_s: as for JournalWriter.
        on_fenced: called (trio thread, must not block) with a partition whose fence refused.
        checkpoint_every_s: the longest a changed checkpoint waits for a batch to carry it.
            Each checkpoint-only write is one fenced UPDATE of every open partition; at 0.5 s
            they were about a tenth of a cluster node's CPU at 100 quotes/s, and a later
            checkpoint only makes a claimer replay a little more of the ring.

    Metrics: ``pending``, ``lag_ms``, ``batches_written``, ``records_written``,
    ``fenced_batches`` (partition writes refused by their fence), ``health``
    (:class:`~persistence.write_health.WriteHealth`: ``healthy``, ``write_errors``,
    ``projection_errors``); ``fenced`` is the set of partitions fenced since last opened.
    """

    def __init__(
        self,
        db: Database,
        encode_batch: EncodeBatch[T],
        project: Project[T] | None,
        partition_of: Callable[[T], int | None],
        *,
        window_ms: float = 2.0,
        max_batch: int = 5000,
        soft_limit: int = 25_000,
        hard_limit: int = 250_000,
        on_alert: OnAlert | None = None,
        on_fenced: Callable[[int], None] | None = None,
        checkpoint_every_s: float = 2.0,
        max_backoff_s: float = 2.0,
        shutdown_grace_s: float = 5.0,
    ) -> None:
        if not 0 < max_batch <= soft_limit <= hard_limit:
            raise UsageError("journal limits must satisfy 0 < max_batch <= soft <= hard")
        if window_ms < 0 or checkpoint_every_s <= 0:
            raise UsageError("window_ms must be >= 0 and checkpoint_every_s > 0")
        self.db = db
        self.window_s = window_ms / 1000
        self.max_batch = max_batch
        self.soft_limit = soft_limit
        self.hard_limit = hard_limit
        self.checkpoint_every_s = checkpoint_every_s
        self.max_backoff_s = max_backoff_s
        self.shutdown_grace_s = shutdown_grace_s
        self._encode = encode_batch
        self._project = project
        self._partition_of = partition_of
        self._on_fenced = on_fenced
        self._parts: dict[int, _Partition] = {}
        self.fenced: set[int] = set()
        self._buffer: list[_Entry[T]] = []
        self._buffer_since = 0.0
        self._buffer_since_trio = 0.0
        self._inflight: _Batch[T] | None = None
        self._inflight_since = 0.0
        self._last_ticket = 0
        self._resolved = 0  # every ticket up to here is committed or dropped
        self._dropped: dict[int, int] = {}  # ticket -> partition, of records dropped by a fence
        self._dirty: set[int] = set()  # partitions whose checkpoint changed since last taken
        self._checkpoints_due = False
        self._hurry_requested = False
        self._running = False
        self._have_work = trio.Event()
        self._hurry = trio.Event()
        self._batch_done = trio.Event()
        self._waiters: list[tuple[int, int, trio.Event]] = []
        self._waiter_ids = itertools.count()
        self.health = WriteHealth(_log, on_alert)
        self.batches_written = 0
        self.records_written = 0
        self.fenced_batches = 0

    # -- metrics ------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records appended and neither committed nor dropped."""
        inflight = 0 if self._inflight is None else len(self._inflight.entries)
        return len(self._buffer) + inflight

    @property
    def healthy(self) -> bool:
        """False while writes are failing (an outage)."""
        return self.health.healthy

    @property
    def write_errors(self) -> int:
        return self.health.write_errors

    @property
    def projection_errors(self) -> int:
        return self.health.projection_errors

    @property
    def lag_ms(self) -> float:
        """Age of the oldest pending record (0 when none is)."""
        if not self.pending:
            return 0.0
        since = self._inflight_since if self._inflight is not None else self._buffer_since
        return (time.monotonic() - since) * 1000

    def last_seq(self, partition: int) -> int:
        """The last seq given to a record of ``partition`` (committed or not).

        Raises:
            UsageError: the partition is not open.
        """
        return self._part(partition).next_seq

    def committed_seq(self, partition: int) -> int:
        """The last seq of ``partition`` known committed."""
        return self._part(partition).committed_seq

    def open_partitions(self) -> frozenset[int]:
        return frozenset(self._parts)

    # -- partitions ---------------------------------------------------------------------------

    def open_partition(
        self, partition: int, epoch: int, after_seq: int, checkpoint: dict[str, int]
    ) -> None:
        """Start writing ``partition`` (just claimed at ``epoch``): its records get seqs after
        ``after_seq``, and ``checkpoint`` is where its ticks stand.

        Raises:
            UsageError: the partition is open already (close it first).
        """
        if partition in self._parts:
            raise UsageError("partition is open already", partition=partition)
        self.fenced.discard(partition)
        self._parts[partition] = _Partition(
            epoch=epoch,
            next_seq=after_seq,
            committed_seq=after_seq,
            checkpoint=dict(checkpoint),
            written_checkpoint=dict(checkpoint),
        )

    async def close_partition(self, partition: int) -> bool:
        """Flush ``partition`` (records and checkpoint), then forget it. Returns True if all
        of it committed, False if it was fenced (its pending records dropped)."""
        if partition not in self._parts:
            return partition not in self.fenced
        try:
            await self.flush_partition(partition)
        except Fenced:
            return False
        self._parts.pop(partition, None)
        self._dirty.discard(partition)
        return True

    def set_checkpoint(self, partition: int, symbol: str, seq: int) -> None:
        """Record that ``partition`` has processed ``symbol``'s tick stream up to ``seq``."""
        part = self._part(partition)
        part.checkpoint[symbol] = seq
        part.cp_version += 1
        self._dirty.add(partition)

    async def flush_partition(self, partition: int) -> None:
        """Return once every record of ``partition`` appended so far and its checkpoint have
        committed.

        Raises:
            Fenced: the partition was fenced meanwhile.
            UsageError: it is not open.
        """
        part = self._part(partition)
        seq, version = part.next_seq, part.cp_version
        while True:
            current = self._parts.get(partition)
            if current is not part:
                raise Fenced("partition fenced", partition=partition, epoch=part.epoch)
            if part.committed_seq >= seq and part.cp_committed >= version:
                return
            self._request_flush()
            done = self._batch_done
            await done.wait()

    # -- appending ----------------------------------------------------------------------------

    def append_nowait(self, record: T) -> int:
        """Queue ``record`` under its partition's next seq; return its ticket. Never waits.

        Raises:
            UsageError: the writer is not running, or the record's partition is not open.
            Fenced: the record's partition was fenced.
            StorageError: ``hard_limit`` records are pending.
        """
        if not self._running:
            raise UsageError("the partition journal is not running; start its run first")
        if self.pending >= self.hard_limit:
            raise StorageError(
                "journal buffer full", pending=self.pending, limit=self.hard_limit, hard=True
            )
        partition = self._partition_of(record)
        seq = 0
        if partition is not None:
            part = self._part(partition)
            part.next_seq += 1
            part.buffered += 1
            seq = part.next_seq
        self._last_ticket += 1
        if not self._buffer:
            self._buffer_since = time.monotonic()
            self._buffer_since_trio = trio.current_time()
            self._have_work.set()
        self._buffer.append(_Entry(self._last_ticket, partition, seq, record))
        if len(self._buffer) >= self.max_batch:
            self._hurry.set()
        return self._last_ticket

    async def append(self, record: T) -> int:
        """Queue ``record`` and return its ticket once it has committed.

        Raises:
            StorageError: ``soft_limit`` records are pending already (nothing was queued).
            Fenced: its partition was fenced before it committed.
        """
        if self.pending >= self.soft_limit:
            raise StorageError(
                "journal backlog over its soft limit",
                pending=self.pending,
                limit=self.soft_limit,
                hard=False,
            )
        ticket = self.append_nowait(record)
        await self.wait_committed(ticket)
        return ticket

    async def wait_committed(self, ticket: int) -> None:
        """Return once the record of ``ticket`` has committed (and every record appended
        before it has committed or been dropped).

        The tickets of dropped records are remembered for the life of the writer (a few
        bytes each; only a fenced partition drops any), so a late wait still learns the truth.

        Raises:
            Fenced: that record was dropped: its partition was fenced.
        """
        if ticket > self._resolved:
            event = trio.Event()
            heapq.heappush(self._waiters, (ticket, next(self._waiter_ids), event))
            await event.wait()
        else:
            await trio.lowlevel.checkpoint()
        partition = self._dropped.get(ticket)
        if partition is not None:
            raise Fenced("partition fenced: record dropped", partition=partition, ticket=ticket)

    async def flush(self) -> None:
        """Write everything appended so far, checkpoints included; return once it has
        committed or been dropped (fenced records do not raise here)."""
        target = self._last_ticket
        versions = [
            (p, part, part.cp_version)
            for p, part in self._parts.items()
            if part.cp_committed < part.cp_version
        ]
        while True:
            if self._resolved >= target and all(
                self._parts.get(p) is not part or part.cp_committed >= version
                for p, part, version in versions
            ):
                return
            self._request_flush()
            done = self._batch_done
            await done.wait()

    # -- the writer ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task; start it with ``await nursery.start(writer.run)``.

        When cancelled it writes what is pending, shielded, for at most ``shutdown_grace_s``.
        """
        if self._running:
            raise UsageError("the partition journal is already running")
        self._running = True
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._tick_checkpoints)
                while True:
                    await self._collect()
                    await self._write_inflight()
        except trio.Cancelled:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self.shutdown_grace_s
                self._checkpoints_due = True
                while self._inflight is not None or self._buffer or self._dirty:
                    if self._inflight is None:
                        self._take()
                    await self._write_inflight()
            if self.pending:
                _log.error("partition journal stopped with records unwritten", pending=self.pending)
            raise
        finally:
            self._running = False

    async def _tick_checkpoints(self) -> None:
        while True:
            await trio.sleep(self.checkpoint_every_s)
            if self._dirty:
                self._checkpoints_due = True
                self._have_work.set()

    def _request_flush(self) -> None:
        self._checkpoints_due = True
        self._hurry_requested = True
        self._hurry.set()
        self._have_work.set()

    async def _collect(self) -> None:
        while not self._buffer and not (self._checkpoints_due and self._dirty):
            self._have_work = trio.Event()
            await self._have_work.wait()
        if self._buffer:
            with trio.move_on_at(self._buffer_since_trio + self.window_s):
                while len(self._buffer) < self.max_batch and not self._hurry_requested:
                    self._hurry = trio.Event()
                    await self._hurry.wait()
        self._hurry_requested = False
        self._take()

    def _take(self) -> None:
        n = min(len(self._buffer), self.max_batch)
        entries = self._buffer[:n]
        del self._buffer[:n]
        self._inflight_since = self._buffer_since
        groups: dict[int | None, list[_Entry[T]]] = {}
        for entry in entries:
            groups.setdefault(entry.partition, []).append(entry)
        batch: _Batch[T] = _Batch(entries, [])
        for partition, group in groups.items():
            if partition is None:
                continue
            part = self._parts[partition]
            part.buffered -= len(group)
            records = [e.record for e in group]
            encoded = self._encode(records)
            payload, index = (encoded, None) if isinstance(encoded, bytes) else encoded
            batch.writes.append(
                partition_sql.PartitionWrite(
                    partition=partition,
                    epoch=part.epoch,
                    first_seq=group[0].seq,
                    last_seq=group[-1].seq,
                    checkpoint=self._checkpoint_for(batch, partition, part),
                    payload=payload,
                    record_index=index,
                    statements=self._projection(records),
                )
            )
        if self._checkpoints_due:
            self._checkpoints_due = False
            for partition in sorted(self._dirty - groups.keys()):
                part = self._parts[partition]
                if part.buffered == 0 and part.next_seq == part.committed_seq:
                    batch.writes.append(
                        partition_sql.PartitionWrite(
                            partition=partition,
                            epoch=part.epoch,
                            first_seq=part.committed_seq,
                            last_seq=part.committed_seq,
                            checkpoint=self._checkpoint_for(batch, partition, part),
                        )
                    )
        self._inflight = batch

    def _checkpoint_for(self, batch: _Batch[T], partition: int, part: _Partition) -> dict[str, int]:
        """The checkpoint this batch writes for ``partition``: the live one when the batch holds
        every record appended before it (nothing of the partition left in the buffer), else
        the last one written (a checkpoint never runs ahead of its records)."""
        if part.buffered:
            return part.written_checkpoint
        batch.cp_versions[partition] = part.cp_version
        self._dirty.discard(partition)
        return dict(part.checkpoint)

    def _projection(self, records: list[T]) -> journal_sql.Statements:
        if self._project is None:
            return []
        try:
            return self._project(records)
        except Exception as exc:
            self.health.projection_failed(repr(exc), self.pending)
            return []

    async def _write_inflight(self) -> None:
        batch = self._inflight
        assert batch is not None
        global_records = [e.record for e in batch.entries if e.partition is None]
        global_statements = self._projection(global_records) if global_records else []
        attempt = 0
        delay = 0.05
        while True:
            attempt += 1
            write = functools.partial(
                partition_sql.write_batch,
                parts=batch.writes,
                global_statements=global_statements,
                retry=attempt > 1,
            )
            try:
                outcome = await self.db.run_with_connection(write)
            except StorageError as exc:
                self.health.write_failed(repr(exc), self.pending)
                await trio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
                continue
            break
        self.health.write_succeeded()
        if outcome.projection_error is not None:
            self.health.projection_failed(outcome.projection_error, self.pending)
        else:
            self.health.projection_succeeded()
        self._inflight = None
        self._committed(batch, outcome)

    def _committed(self, batch: _Batch[T], outcome: partition_sql.BatchOutcome) -> None:
        for write in batch.writes:
            part = self._parts.get(write.partition)
            if part is None or part.epoch != write.epoch:
                continue
            if write.partition in outcome.fenced:
                self._fence(write.partition, batch)
                continue
            part.committed_seq = write.last_seq
            if write.partition in batch.cp_versions:
                part.cp_committed = batch.cp_versions[write.partition]
                part.written_checkpoint = write.checkpoint
        self.batches_written += 1
        self.records_written += sum(
            w.last_seq - w.first_seq + 1
            for w in batch.writes
            if w.payload is not None and w.partition not in outcome.fenced
        )
        self._resolve()

    def _fence(self, partition: int, batch: _Batch[T]) -> None:
        """The fence of ``partition`` refused: drop its records, fail their waiters, tell."""
        part = self._parts.pop(partition)
        self.fenced.add(partition)
        self._dirty.discard(partition)
        self.fenced_batches += 1
        dropped = [e.ticket for e in batch.entries if e.partition == partition]
        kept = [e for e in self._buffer if e.partition != partition]
        dropped += [e.ticket for e in self._buffer if e.partition == partition]
        self._buffer = kept
        self._dropped.update(dict.fromkeys(dropped, partition))
        _log.warning(
            "partition fenced: another node owns it",
            partition=partition,
            epoch=part.epoch,
            dropped=len(dropped),
        )
        if self._on_fenced is not None:
            try:
                self._on_fenced(partition)
            except Exception as exc:  # a callback must never stop the journal
                _log.error("on_fenced callback failed", error=repr(exc), partition=partition)

    def _resolve(self) -> None:
        """Advance the resolved ticket; wake the waiters it satisfies and the flushes."""
        if self._inflight is not None and self._inflight.entries:
            first_pending = self._inflight.entries[0].ticket
        elif self._buffer:
            first_pending = self._buffer[0].ticket
        else:
            first_pending = self._last_ticket + 1
        self._resolved = first_pending - 1
        waiters = self._waiters
        while waiters and waiters[0][0] <= self._resolved:
            heapq.heappop(waiters)[2].set()
        self._batch_done.set()
        self._batch_done = trio.Event()

    def _part(self, partition: int) -> _Partition:
        part = self._parts.get(partition)
        if part is None:
            if partition in self.fenced:
                raise Fenced("partition fenced", partition=partition)
            raise UsageError("partition is not open on this node", partition=partition)
        return part

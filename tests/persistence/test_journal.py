"""The write-behind journal against a real Postgres: order, group commit, acks, recovery data."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from persistence import Database, JournalReader, JournalWriter, SnapshotStore
from persistence import journal_sql as store
from protocol.common import Alert
from protocol.errors import ConfigError, StorageError, UsageError
from tests.persistence.journal_helpers import (
    Rec,
    audit_count,
    audit_projection,
    encode_batch,
    read_all,
)


def _journal(db: Any, **options: Any) -> JournalWriter[Rec]:
    return JournalWriter(db, encode_batch, **options)


async def test_round_trip_in_order_across_many_batches(db: Database) -> None:
    journal = _journal(db, max_batch=500, window_ms=1)
    sent = [Rec(kind="k", n=i) for i in range(1, 5001)]
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        for i, record in enumerate(sent):
            assert journal.append_nowait(record) == i + 1
            if i % 700 == 0:
                await trio.lowlevel.checkpoint()  # let the writer cut batches mid-stream
        await journal.flush()
        assert journal.pending == 0 and journal.lag_ms == 0
        nursery.cancel_scope.cancel()
    assert journal.records_written == 5000
    assert journal.batches_written >= 10  # max_batch 500
    assert await read_all(db) == list(enumerate(sent, start=1))
    # Reading from the middle: the straddling batch is trimmed by the reader.
    assert await read_all(db, after_seq=1234) == list(enumerate(sent, start=1))[1234:]


async def test_batches_newest_first_are_the_same_batches_backwards(db: Database) -> None:
    """Recovery reads the journal backwards, in chunks (see persistence.recovery)."""
    journal = _journal(db, max_batch=7, window_ms=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        for i in range(1, 101):
            journal.append_nowait(Rec(kind="k", n=i))
            if i % 5 == 0:
                await journal.flush()
        await journal.flush()
        nursery.cancel_scope.cancel()
    for after in (0, 33, 99, 100):
        forwards = [b async for b in JournalReader(db).read_batches(after, chunk=4)]
        chunks = [c async for c in JournalReader(db).read_batches_newest_first(after, chunk=4)]
        assert all(0 < len(c) <= 4 for c in chunks)
        assert [b[:3] for c in chunks for b in c] == forwards[::-1]
        assert all(b[3] is None for c in chunks for b in c)  # this encoder makes no index


async def test_group_commit_shares_one_commit_between_concurrent_acks(db: Database) -> None:
    journal = _journal(db, window_ms=5)
    seqs: list[int] = []

    async def ack(i: int) -> None:
        seqs.append(await journal.append(Rec(kind="ack", n=i)))

    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        async with trio.open_nursery() as ackers:
            for i in range(300):
                ackers.start_soon(ack, i)
        nursery.cancel_scope.cancel()
    assert sorted(seqs) == list(range(1, 301))
    assert journal.batches_written <= 30  # 300 acks, a handful of commits
    assert await db.fetchval("SELECT count(*) FROM journal") == journal.batches_written


async def test_append_returns_only_after_its_batch_committed(db: Database) -> None:
    journal = _journal(db, window_ms=300)
    acked: list[int] = []

    async def ack() -> None:
        acked.append(await journal.append(Rec(kind="ack", n=1)))

    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        nursery.start_soon(ack)
        await trio.sleep(0.1)
        assert acked == []  # still inside the window: not committed, not acknowledged
        assert await db.fetchval("SELECT count(*) FROM journal") == 0
        with trio.fail_after(5):
            while not acked:
                await trio.sleep(0.01)
        assert await db.fetchval("SELECT last_seq FROM journal") == acked[0] == 1
        assert journal.committed_seq == 1

        # flush() does not wait out the window.
        journal.append_nowait(Rec(kind="x", n=2))
        with trio.fail_after(0.25):
            await journal.flush()
        nursery.cancel_scope.cancel()


async def test_projection_commits_with_its_batch(db: Database) -> None:
    journal = JournalWriter(db, encode_batch, audit_projection, window_ms=1, max_batch=40)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        for i in range(100):
            journal.append_nowait(Rec(kind="p", n=i))
        await journal.flush()
        nursery.cancel_scope.cancel()
    assert await audit_count(db) == 100
    assert await db.fetchval("SELECT detail FROM audit_log WHERE detail->>'n' = '7'") == {"n": 7}


async def test_projection_failure_never_blocks_the_journal(db: Database) -> None:
    alerts: list[Alert] = []

    def project(records: list[Rec]) -> list[tuple[str, list[tuple[Any, ...]]]]:
        if any(r.kind == "raise" for r in records):
            raise RuntimeError("projection bug")
        if any(r.kind == "fk" for r in records):  # a device of a user who does not exist
            return [
                (
                    "INSERT INTO devices (id, user_id, name, account_login, broker)"
                    " VALUES ($1, 'ghost', 'n', '1', 'b')",
                    [("d1",)],
                )
            ]
        return audit_projection(records)

    journal = JournalWriter(db, encode_batch, project, window_ms=0, on_alert=alerts.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        await journal.append(Rec(kind="ok", n=1))
        await journal.append(Rec(kind="fk", n=2))
        await journal.append(Rec(kind="raise", n=3))
        await journal.append(Rec(kind="ok", n=4))
        nursery.cancel_scope.cancel()
    assert [r.n for _, r in await read_all(db)] == [1, 2, 3, 4]  # the journal is whole
    assert await audit_count(db) == 2  # records 1 and 4 projected
    assert journal.projection_errors == 2
    assert [a.kind for a in alerts] == ["journal_projection_failed"]  # once, not per batch


class _CommitsThenFails:
    """A Database whose first batch write commits and then reports a broken connection."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.failed = False

    async def run_with_connection(self, fn: Any) -> Any:
        result = await self.db.run_with_connection(fn)
        if getattr(fn, "func", None) is store.write_batch and not self.failed:
            self.failed = True
            raise StorageError("postgres unavailable", error="connection lost after COMMIT")
        return result


async def test_a_batch_that_committed_before_the_error_is_not_written_twice(
    db: Database,
) -> None:
    alerts: list[Alert] = []
    flaky = _CommitsThenFails(db)
    journal = JournalWriter(flaky, encode_batch, audit_projection, max_backoff_s=0.05,
                            on_alert=alerts.append)  # fmt: skip
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        for i in range(10):
            journal.append_nowait(Rec(kind="once", n=i))
        with trio.fail_after(5):
            await journal.flush()
        nursery.cancel_scope.cancel()
    assert flaky.failed and journal.write_errors == 1
    assert [r.n for _, r in await read_all(db)] == list(range(10))
    assert await audit_count(db) == 10  # projections not applied twice either
    assert [a.kind for a in alerts] == ["journal_unavailable", "journal_recovered"]


async def test_two_writers_on_one_journal_are_detected(db: Database) -> None:
    from functools import partial

    write = partial(store.write_batch, first_seq=1, last_seq=3, payload=b"x", statements=[])
    assert (await db.run_with_connection(write)).outcome is store.WriteOutcome.WRITTEN
    again = await db.run_with_connection(write)
    assert again.outcome is store.WriteOutcome.ALREADY_WRITTEN
    other = partial(store.write_batch, first_seq=1, last_seq=5, payload=b"y", statements=[])
    with pytest.raises(ConfigError, match="collision"):
        await db.run_with_connection(other)


async def test_sequence_numbers_resume_after_journal_and_snapshots(db: Database) -> None:
    first = _journal(db)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        for i in range(10):
            first.append_nowait(Rec(kind="a", n=i))
        await first.flush()
        nursery.cancel_scope.cancel()

    second = _journal(db)
    await SnapshotStore(db, writer=second).write_snapshot(40, b"state at 40")  # not running
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        assert second.append_nowait(Rec(kind="b", n=0)) == 41
        await second.flush()
        nursery.cancel_scope.cancel()


async def test_snapshots_and_compaction(db: Database) -> None:
    journal = _journal(db, max_batch=10, window_ms=0)
    snapshots = SnapshotStore(db, writer=journal)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        assert await snapshots.latest_snapshot() is None
        for i in range(1, 101):
            journal.append_nowait(Rec(kind="c", n=i))
            if i % 10 == 0:
                await journal.flush()  # ten batches of exactly ten records
        for seq in (20, 35, 75):
            await snapshots.write_snapshot(seq, f"state at {seq}".encode())
        assert await snapshots.latest_snapshot() == (75, b"state at 75")

        with pytest.raises(UsageError):
            await snapshots.compact(80)  # 76..80 exist nowhere but the journal
        assert await snapshots.compact(75, keep_snapshots=2) == (7, 1)
        # The batch 71..80 straddles the snapshot and is kept whole; the reader trims it.
        assert [s for s, _ in await read_all(db, after_seq=75)] == list(range(76, 101))
        assert await db.fetchval("SELECT min(first_seq) FROM journal") == 71
        kept = [r["seq"] for r in await db.fetch("SELECT seq FROM snapshots ORDER BY seq")]
        assert kept == [35, 75]
        assert await db.fetchval("SELECT size FROM snapshots WHERE seq = 75") == 11
        nursery.cancel_scope.cancel()


async def test_write_snapshot_flushes_the_journal_first(db: Database) -> None:
    journal = _journal(db, window_ms=10_000)
    snapshots = SnapshotStore(db, writer=journal)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        for i in range(5):
            journal.append_nowait(Rec(kind="s", n=i))
        with pytest.raises(UsageError):
            await snapshots.write_snapshot(6, b"ahead of the journal")
        with trio.fail_after(2):
            await snapshots.write_snapshot(5, b"state at 5")
        assert journal.committed_seq == 5
        nursery.cancel_scope.cancel()


async def test_cancelling_the_writer_writes_what_is_pending(db: Database) -> None:
    journal = _journal(db, window_ms=10_000)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        for i in range(20):
            journal.append_nowait(Rec(kind="late", n=i))
        await trio.testing.wait_all_tasks_blocked()  # the writer is waiting out its window
        nursery.cancel_scope.cancel()
    assert journal.pending == 0
    assert len(await read_all(db)) == 20
    with pytest.raises(UsageError):
        journal.append_nowait(Rec(kind="after", n=0))  # nobody would ever write it


async def test_misuse_is_refused(db: Database) -> None:
    journal = _journal(db)
    with pytest.raises(UsageError):
        journal.append_nowait(Rec(kind="early", n=0))
    with pytest.raises(UsageError):
        _journal(db, max_batch=10, soft_limit=5)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        with pytest.raises(UsageError):
            await journal.run()
        nursery.cancel_scope.cancel()

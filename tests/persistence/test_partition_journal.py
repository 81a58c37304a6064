"""The fenced per-partition journal against a real Postgres."""

from __future__ import annotations

import functools
from typing import Any

import asyncpg
import msgspec
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from persistence import Database, open_bridge, open_database, partition_sql
from persistence.partition_journal import PartitionJournalWriter
from protocol.common import Alert
from protocol.errors import ConfigError, Fenced, UsageError
from tests.fixtures.postgres import PrivatePg


class Rec(msgspec.Struct, frozen=True, kw_only=True):
    partition: int | None
    n: int


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[Rec])
AUDIT = "INSERT INTO audit_log (actor_id, action, outcome, detail) VALUES ($1, $2, 'ok', $3)"


def _project(records: list[Rec]) -> list[tuple[str, list[tuple[Any, ...]]]]:
    return [(AUDIT, [(str(r.partition), "test", {"n": r.n}) for r in records])]


def _writer(db: Database, **options: Any) -> PartitionJournalWriter[Rec]:
    return PartitionJournalWriter(db, _encoder.encode, _project, lambda r: r.partition, **options)


async def _seed(db: Database, partitions: int = 8) -> None:
    """The partitions' rows, each claimed once (epoch 1), as a LeaseManager would leave them."""
    await db.execute("INSERT INTO cluster (partitions) VALUES ($1)", partitions)
    await db.execute(
        "INSERT INTO partitions (id, owner, epoch) SELECT g, 'me', 1 FROM generate_series(0, $1) g",
        partitions - 1,
    )


async def _claim_elsewhere(db: Database, partition: int) -> None:
    """Another node claims ``partition``: its epoch moves on."""
    await db.execute(
        "UPDATE partitions SET owner = 'other', epoch = epoch + 1 WHERE id = $1", partition
    )


async def _journal_of(db: Database, partition: int) -> list[tuple[int, Rec]]:
    """``(seq, record)`` of every row of ``partition``, checking the rows are contiguous."""
    rows = await db.fetch(
        "SELECT first_seq, last_seq, records FROM partition_journal WHERE partition = $1"
        " ORDER BY first_seq",
        partition,
    )
    out: list[tuple[int, Rec]] = []
    for row in rows:
        records = _decoder.decode(row["records"])
        assert len(records) == row["last_seq"] - row["first_seq"] + 1
        assert row["first_seq"] == (out[-1][0] + 1 if out else 1), "contiguous from 1"
        out.extend((row["first_seq"] + i, r) for i, r in enumerate(records))
    return out


async def test_records_go_to_their_partition_with_contiguous_seqs(db: Database) -> None:
    await _seed(db)
    journal = _writer(db, max_batch=50, window_ms=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        for p in (1, 2, 5):
            journal.open_partition(p, 1, 0, {})
        sent: dict[int | None, list[Rec]] = {1: [], 2: [], 5: [], None: []}
        tickets = []
        for n in range(600):
            partition = (1, 2, 5, None)[n % 4]
            record = Rec(partition=partition, n=n)
            sent[partition].append(record)
            tickets.append(journal.append_nowait(record))
            if n % 97 == 0:
                await trio.lowlevel.checkpoint()
        assert tickets == sorted(tickets) and len(set(tickets)) == 600
        await journal.wait_committed(tickets[-1])
        await journal.flush()
        assert journal.pending == 0 and journal.lag_ms == 0
        nursery.cancel_scope.cancel()
    for p in (1, 2, 5):
        assert await _journal_of(db, p) == list(enumerate(sent[p], start=1))
        assert journal.last_seq(p) == journal.committed_seq(p) == 150
        assert await db.fetchval("SELECT last_seq FROM partitions WHERE id = $1", p) == 150
    assert await db.fetchval("SELECT count(*) FROM audit_log") == 600  # globals projected too
    assert journal.batches_written >= 12 and journal.records_written == 450


async def test_a_fenced_partition_drops_its_records_and_never_blocks_the_others(
    db: Database,
) -> None:
    await _seed(db)
    fenced: list[int] = []
    journal = _writer(db, window_ms=50, on_fenced=fenced.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        journal.open_partition(3, 1, 0, {})
        journal.open_partition(4, 1, 0, {})
        await journal.wait_committed(journal.append_nowait(Rec(partition=3, n=0)))
        await _claim_elsewhere(db, 3)
        # One batch (the window is long): a zombie's record, a good one, a global one.
        zombie = journal.append_nowait(Rec(partition=3, n=1))
        good = journal.append_nowait(Rec(partition=4, n=2))
        shared = journal.append_nowait(Rec(partition=None, n=3))
        await journal.wait_committed(good)
        await journal.wait_committed(shared)
        with pytest.raises(Fenced) as caught:
            await journal.wait_committed(zombie)
        assert caught.value.details["partition"] == 3
        assert fenced == [3] and journal.fenced == {3} and journal.fenced_batches == 1
        with pytest.raises(Fenced):
            journal.append_nowait(Rec(partition=3, n=4))  # never retried, never written again
        with pytest.raises(UsageError):
            journal.append_nowait(Rec(partition=6, n=5))  # never opened
        assert await journal.close_partition(3) is False
        # Claimed again later: it opens afresh after what the claim reported.
        journal.open_partition(3, 2, 1, {})
        await journal.wait_committed(journal.append_nowait(Rec(partition=3, n=6)))
        nursery.cancel_scope.cancel()
    assert [(s, r.n) for s, r in await _journal_of(db, 3)] == [(1, 0), (2, 6)]
    assert [(s, r.n) for s, r in await _journal_of(db, 4)] == [(1, 2)]
    epochs = await db.fetch("SELECT epoch FROM partition_journal WHERE partition = 3")
    assert sorted(r[0] for r in epochs) == [1, 2]
    projected = await db.fetch("SELECT detail->>'n' FROM audit_log ORDER BY 1")
    assert [r[0] for r in projected] == ["0", "2", "3", "6"]  # nothing of the zombie's


async def test_a_checkpoint_reaches_postgres_without_any_record(db: Database) -> None:
    await _seed(db)
    journal = _writer(db, checkpoint_every_s=0.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        journal.open_partition(0, 1, 0, {"EURUSD": 7})
        journal.set_checkpoint(0, "EURUSD", 9)
        journal.set_checkpoint(0, "XAUUSD", 3)
        with trio.fail_after(10):  # a bound: it comes with the next periodic tick
            while await db.fetchval("SELECT checkpoint FROM partitions WHERE id = 0") != {
                "EURUSD": 9,
                "XAUUSD": 3,
            }:
                await trio.sleep(0.02)
        journal.set_checkpoint(0, "EURUSD", 10)
        await journal.flush_partition(0)  # a flush carries it at once
        assert await db.fetchval("SELECT checkpoint->>'EURUSD' FROM partitions WHERE id = 0") == (
            "10"
        )
        assert await journal.close_partition(0) is True
        with pytest.raises(UsageError):
            journal.set_checkpoint(0, "EURUSD", 11)
        nursery.cancel_scope.cancel()
    assert await db.fetchval("SELECT count(*) FROM partition_journal") == 0


async def test_a_checkpoint_never_runs_ahead_of_its_records(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch cut short (``max_batch``) keeps the checkpoint it last wrote: the new one goes
    with the batch that holds the partition's last record appended before it."""
    await _seed(db)
    written: list[tuple[int, dict[str, int]]] = []
    original = partition_sql.write_batch

    async def spy(conn: Any, parts: Any, global_statements: Any, retry: bool) -> Any:
        written.extend((w.last_seq, w.checkpoint) for w in parts)
        return await original(conn, parts, global_statements, retry)

    monkeypatch.setattr(partition_sql, "write_batch", spy)
    journal = _writer(db, max_batch=2, window_ms=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        journal.open_partition(1, 1, 0, {"S": 1})
        for n in range(1, 8):
            journal.append_nowait(Rec(partition=1, n=n))
        journal.set_checkpoint(1, "S", 7)  # processed after all 7 records were appended
        await journal.flush_partition(1)
        nursery.cancel_scope.cancel()
    assert written == [(2, {"S": 1}), (4, {"S": 1}), (6, {"S": 1}), (7, {"S": 7})]
    row = await db.fetchrow("SELECT last_seq, checkpoint FROM partitions WHERE id = 1")
    assert tuple(row) == (7, {"S": 7})


async def test_a_retried_batch_that_had_committed_is_not_written_twice(db: Database) -> None:
    """The connection broke after COMMIT was sent: the writer sends the same batch again."""
    await _seed(db)
    records = [Rec(partition=2, n=1), Rec(partition=2, n=2)]
    write = partition_sql.PartitionWrite(
        partition=2,
        epoch=1,
        first_seq=1,
        last_seq=2,
        checkpoint={"S": 4},
        payload=_encoder.encode(records),
        statements=_project(records),
    )
    first = await db.run_with_connection(
        functools.partial(
            partition_sql.write_batch, parts=[write], global_statements=[], retry=False
        )
    )
    assert not first.fenced and not first.already_written
    await _claim_elsewhere(db, 2)  # even if the partition moved on since
    again = await db.run_with_connection(
        functools.partial(
            partition_sql.write_batch, parts=[write], global_statements=[], retry=True
        )
    )
    assert again.already_written == {2} and not again.fenced
    assert [r for _, r in await _journal_of(db, 2)] == records
    assert await db.fetchval("SELECT count(*) FROM audit_log") == 2


def _write(partition: int, first_seq: int, records: list[Rec] | None, **kw: Any) -> Any:
    last_seq = first_seq + len(records) - 1 if records else first_seq - 1
    return partition_sql.PartitionWrite(
        partition=partition,
        epoch=kw.pop("epoch", 1),
        first_seq=first_seq,
        last_seq=kw.pop("last_seq", last_seq),
        checkpoint=kw.pop("checkpoint", {"S": partition}),
        payload=None if records is None else _encoder.encode(records),
        statements=_project(records or []),
    )


async def _batch(db: Database, *parts: Any, retry: bool = False) -> Any:
    return await db.run_with_connection(
        functools.partial(
            partition_sql.write_batch, parts=list(parts), global_statements=[], retry=retry
        )
    )


async def test_one_statement_writes_only_what_passed_its_fence(db: Database) -> None:
    """The fence and the journal rows go in one statement: a fenced partition gets neither
    its row nor its checkpoint, a checkpoint alone gets no row, the others are written."""
    await _seed(db)
    await _claim_elsewhere(db, 1)
    outcome = await _batch(
        db,
        _write(1, 1, [Rec(partition=1, n=1)]),
        _write(2, 1, [Rec(partition=2, n=2), Rec(partition=2, n=3)]),
        _write(3, 1, None, last_seq=0, checkpoint={"S": 9}),
    )
    assert outcome.fenced == {1} and not outcome.already_written
    assert outcome.projection_error is None
    assert await _journal_of(db, 1) == [] and await _journal_of(db, 3) == []
    assert [(s, r.n) for s, r in await _journal_of(db, 2)] == [(1, 2), (2, 3)]
    rows = {
        r["id"]: (r["last_seq"], r["checkpoint"])
        for r in await db.fetch("SELECT id, last_seq, checkpoint FROM partitions WHERE id < 4")
    }
    assert rows[1][0] == 0 and rows[2][0] == 2 and rows[3][0] == 0
    assert [rows[p][1] for p in (1, 2, 3)] == [{}, {"S": 2}, {"S": 9}]  # jsonb: a dict here
    projected = await db.fetch("SELECT detail->>'n' FROM audit_log ORDER BY 1")
    assert [r[0] for r in projected] == ["2", "3"]


async def test_another_row_at_the_same_seq_and_epoch_refuses_the_whole_batch(
    db: Database,
) -> None:
    """Two writers at one epoch (a bug, never a race the fence allows): the batch raises and
    rolls back, the other partitions' rows included."""
    await _seed(db)
    assert not (await _batch(db, _write(2, 1, [Rec(partition=2, n=1)]))).fenced
    with pytest.raises(ConfigError, match="collision"):
        await _batch(
            db,
            _write(2, 1, [Rec(partition=2, n=7), Rec(partition=2, n=8)]),
            _write(4, 1, [Rec(partition=4, n=9)]),
        )
    assert [(s, r.n) for s, r in await _journal_of(db, 2)] == [(1, 1)]
    assert await _journal_of(db, 4) == []
    assert await db.fetchval("SELECT last_seq FROM partitions WHERE id = 2") == 1


async def test_writes_survive_connections_killed_under_the_writer(db: Database) -> None:
    await _seed(db)
    journal = _writer(db, max_batch=20, window_ms=1, max_backoff_s=0.05)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        journal.open_partition(2, 1, 0, {})
        for n in range(1, 401):
            journal.append_nowait(Rec(partition=2, n=n))
            if n % 50 == 0:
                await db.bridge.run(_kill_other_sessions, db.dsn)
                await trio.sleep(0.01)
        await journal.flush()
        nursery.cancel_scope.cancel()
    assert [r.n for _, r in await _journal_of(db, 2)] == list(range(1, 401))
    assert await db.fetchval("SELECT count(*) FROM audit_log") == 400


async def _kill_other_sessions(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 3)),
        st.tuples(st.just("global"), st.just(0)),
        st.tuples(st.just("fence"), st.integers(0, 3)),
        st.tuples(st.just("reopen"), st.integers(0, 3)),
        st.tuples(st.just("wait"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops)
def test_random_interleavings_keep_seqs_contiguous_and_lose_no_acknowledged_record(
    pg_dsn: str, ops: list[tuple[str, int]]
) -> None:
    trio.run(_interleave, pg_dsn, ops)


async def _interleave(dsn: str, ops: list[tuple[str, int]]) -> None:
    async with open_bridge() as bridge, open_database(bridge, dsn, retry_for_s=5) as db:
        await db.execute(
            "TRUNCATE partition_journal, partition_snapshots, partitions, cluster, audit_log"
        )
        await _seed(db, 4)
        journal = _writer(db, window_ms=1, max_batch=7)
        acked: dict[int, Rec] = {}  # ticket -> record: committed per wait_committed
        refused: set[int] = set()
        tickets: dict[int, Rec] = {}
        epochs = dict.fromkeys(range(4), 1)
        n = 0
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            for p in range(4):
                journal.open_partition(p, 1, 0, {})
            for op, p in ops:
                n += 1
                if op in ("append", "global"):
                    record = Rec(partition=p if op == "append" else None, n=n)
                    try:
                        tickets[journal.append_nowait(record)] = record
                    except Fenced:
                        assert p in journal.fenced
                elif op == "fence":
                    await _claim_elsewhere(db, p)
                    epochs[p] += 1
                elif op == "reopen" and p in journal.fenced:
                    last = await db.fetchval("SELECT last_seq FROM partitions WHERE id = $1", p)
                    journal.open_partition(p, epochs[p], last, {})
                else:
                    await _wait_all(journal, tickets, acked, refused)
            await journal.flush()
            await _wait_all(journal, tickets, acked, refused)
            nursery.cancel_scope.cancel()
        assert set(acked) | refused == set(tickets)
        stored = {p: await _journal_of(db, p) for p in range(4)}  # contiguity checked there
        for ticket, record in acked.items():
            if record.partition is not None:
                assert record in [r for _, r in stored[record.partition]], ticket
        for ticket in refused:
            record = tickets[ticket]
            assert record.partition is not None
            assert record not in [r for _, r in stored[record.partition]]


async def _wait_all(
    journal: PartitionJournalWriter[Rec],
    tickets: dict[int, Rec],
    acked: dict[int, Rec],
    refused: set[int],
) -> None:
    for ticket, record in tickets.items():
        if ticket in acked or ticket in refused:
            continue
        try:
            await journal.wait_committed(ticket)
        except Fenced:
            refused.add(ticket)
        else:
            acked[ticket] = record


@pytest.mark.slow
async def test_postgres_stopped_mid_run_buffers_and_catches_up_exactly_once(
    private_pg: PrivatePg, bridge: Any
) -> None:
    alerts: list[Alert] = []
    async with open_database(bridge, private_pg.dsn) as db:
        await _seed(db)
        journal = _writer(db, window_ms=2, max_backoff_s=0.2, on_alert=alerts.append)
        sent: dict[int, Rec] = {}
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            journal.open_partition(1, 1, 0, {})
            journal.open_partition(2, 1, 0, {})

            async def produce(count: int) -> None:
                for n in range(count):
                    record = Rec(partition=(1, 2, None)[n % 3], n=len(sent))
                    sent[journal.append_nowait(record)] = record
                    await trio.sleep(0.001)

            await produce(100)
            await journal.flush()
            await trio.to_thread.run_sync(private_pg.server.stop, "immediate")
            await produce(300)  # trading goes on: appends never wait, never fail
            assert not journal.healthy and journal.pending >= 290
            assert [a.kind for a in alerts] == ["journal_unavailable"]
            await trio.to_thread.run_sync(private_pg.server.restart)
            with trio.fail_after(30):
                await journal.flush()
            assert journal.healthy and journal.write_errors >= 1
            nursery.cancel_scope.cancel()
        assert [a.kind for a in alerts] == ["journal_unavailable", "journal_recovered"]
        for p in (1, 2):
            stored = [r for _, r in await _journal_of(db, p)]  # contiguous, checked there
            assert stored == [r for r in sent.values() if r.partition == p]
        assert await db.fetchval("SELECT count(*) FROM audit_log") == len(sent)  # once each

"""The journal while Postgres is really stopped: keep trading, bound the buffer, lose nothing.

Each test has an embedded Postgres of its own and stops it for real (``pg_ctl stop``) in the
middle of a run, then starts it again on the same socket.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

from persistence import JournalWriter, open_database
from protocol.common import Alert, AlertLevel
from protocol.errors import StorageError
from tests.fixtures.postgres import PrivatePg
from tests.persistence.journal_helpers import (
    Rec,
    audit_count,
    audit_projection,
    encode_batch,
    read_all,
)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_postgres_stopped_mid_run(private_pg: PrivatePg, bridge: Any, mode: str) -> None:
    alerts: list[Alert] = []
    async with open_database(bridge, private_pg.dsn) as db:
        journal = JournalWriter(
            db, encode_batch, audit_projection, window_ms=2, max_backoff_s=0.2,
            on_alert=alerts.append,
        )  # fmt: skip
        sent: dict[int, Rec] = {}
        acked: list[int] = []
        producing = True

        async def producer() -> None:
            # The tick path: append_nowait at a steady pace, never waiting, never failing.
            n = 0
            while producing:
                n += 1
                record = Rec(kind="tick", n=n)
                sent[journal.append_nowait(record)] = record
                await trio.sleep(0.001)

        async def acker(k: int) -> None:
            n = 0
            while producing:
                n += 1
                record = Rec(kind=f"ack{k}", n=n)
                seq = await journal.append(record)
                sent[seq] = record
                acked.append(seq)

        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            async with trio.open_nursery() as workers:
                workers.start_soon(producer)
                for k in range(4):
                    workers.start_soon(acker, k)
                with trio.fail_after(10):  # the first acknowledgements
                    while not acked:
                        await trio.sleep(0.01)
                assert journal.healthy

                await trio.to_thread.run_sync(private_pg.server.stop, mode)
                stopped_at = time.monotonic()
                acked_before_outage = len(acked)
                await trio.sleep(1.0)
                # Trading went on (the producer never raised); nothing more was acknowledged.
                assert not journal.healthy
                assert [a.kind for a in alerts] == ["journal_unavailable"]
                assert alerts[0].level is AlertLevel.CRITICAL
                assert journal.pending > 300 and journal.lag_ms > 500
                assert len(acked) <= acked_before_outage + 4  # at most the batch in flight
                assert journal.write_errors >= 2  # it kept retrying

                await trio.to_thread.run_sync(private_pg.server.restart)
                with trio.fail_after(20):
                    await journal.flush()
                assert journal.healthy
                assert time.monotonic() - stopped_at > 1.0
                producing = False  # the ackers' last appends still complete normally
            await journal.flush()
            nursery.cancel_scope.cancel()
        # Everything appended is there exactly once, in order, and every ack is in it.
        assert [a.kind for a in alerts] == ["journal_unavailable", "journal_recovered"]
        assert journal.pending == 0
        stored = await read_all(db)
        assert [seq for seq, _ in stored] == list(range(1, len(sent) + 1))
        assert dict(stored) == sent
        assert set(acked) <= set(sent)
        assert await audit_count(db) == len(sent)  # projections exactly once too


@pytest.mark.slow
async def test_buffer_bounds_while_postgres_is_down(private_pg: PrivatePg, bridge: Any) -> None:
    async with open_database(bridge, private_pg.dsn) as db:
        journal = JournalWriter(
            db, encode_batch, max_batch=10, soft_limit=50, hard_limit=100, max_backoff_s=0.1
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            await trio.to_thread.run_sync(private_pg.server.stop, "fast")
            for n in range(50):
                journal.append_nowait(Rec(kind="nowait", n=n))
            # Past the soft limit the acknowledged path refuses at once (the caller answers 503)...
            with trio.fail_after(0.5), pytest.raises(StorageError) as soft:
                await journal.append(Rec(kind="ack", n=0))
            assert soft.value.details == {"pending": 50, "limit": 50, "hard": False}
            # ...while the tick path goes on to the hard limit, and then refuses loudly too.
            for n in range(50, 100):
                journal.append_nowait(Rec(kind="nowait", n=n))
            with pytest.raises(StorageError) as hard:
                journal.append_nowait(Rec(kind="nowait", n=100))
            assert hard.value.details["hard"] is True
            assert journal.pending == 100

            await trio.to_thread.run_sync(private_pg.server.restart)
            with trio.fail_after(20):
                await journal.flush()
            nursery.cancel_scope.cancel()
        assert [r.n for _, r in await read_all(db)] == list(range(100))


async def test_writer_waits_for_postgres_at_start(private_pg: PrivatePg, bridge: Any) -> None:
    async with open_database(bridge, private_pg.dsn) as db:
        await trio.to_thread.run_sync(private_pg.server.stop, "fast")
        journal = JournalWriter(db, encode_batch, max_backoff_s=0.1)
        async with trio.open_nursery() as nursery:

            async def restart_soon() -> None:
                await trio.sleep(0.5)
                await trio.to_thread.run_sync(private_pg.server.restart)

            nursery.start_soon(restart_soon)
            with trio.fail_after(20):
                await nursery.start(journal.run)
            assert journal.append_nowait(Rec(kind="first", n=1)) == 1
            await journal.flush()
            nursery.cancel_scope.cancel()
        assert journal.write_errors >= 1

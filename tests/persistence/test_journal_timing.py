"""The journal writer's timing rules in virtual time: window, batch cut, backoff, alerts.

The database is a fake that takes 1 ms (virtual) per write and can be "down"; everything about
real Postgres is in ``test_journal.py`` and ``test_journal_faults.py``.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio
import trio.testing

from persistence import JournalWriter
from persistence import journal_sql as store
from protocol.common import Alert
from protocol.errors import StorageError
from tests.persistence.journal_helpers import Rec, encode_batch

WRITE_S = 0.001


class FakeDb:
    """Just enough of :class:`persistence.Database` for the writer."""

    def __init__(self) -> None:
        self.down = False
        self.attempts: list[float] = []
        self.batches: list[tuple[int, int, float]] = []  # first, last, commit time

    async def run_with_connection(self, fn: Any) -> Any:
        await trio.sleep(WRITE_S)
        func = getattr(fn, "func", fn)
        if func is store.last_seq:
            return 0, "on"
        assert func is store.write_batch
        self.attempts.append(trio.current_time())
        if self.down:
            raise StorageError("postgres unavailable", error="fake outage")
        first, last = fn.keywords["first_seq"], fn.keywords["last_seq"]
        self.batches.append((first, last, trio.current_time()))
        return store.WriteResult(store.WriteOutcome.WRITTEN)


def _journal(db: FakeDb, **options: Any) -> JournalWriter[Rec]:
    return JournalWriter(db, encode_batch, **options)  # type: ignore[arg-type]


async def test_window_groups_appends_and_starts_at_the_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    db = FakeDb()
    journal = _journal(db, window_ms=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        t0 = trio.current_time()
        journal.append_nowait(Rec(kind="a", n=1))
        await trio.sleep(0.004)
        journal.append_nowait(Rec(kind="a", n=2))  # inside the first one's window
        await trio.sleep(0.020)
        journal.append_nowait(Rec(kind="a", n=3))  # a new window
        await journal.flush()
        nursery.cancel_scope.cancel()
    assert [(first, last) for first, last, _ in db.batches] == [(1, 2), (3, 3)]
    # Committed one window after the FIRST record, plus the write, not after the second.
    assert db.batches[0][2] - t0 == pytest.approx(0.010 + WRITE_S)


async def test_a_full_batch_does_not_wait_for_the_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    db = FakeDb()
    journal = _journal(db, window_ms=1000, max_batch=100, soft_limit=1000, hard_limit=1000)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        t0 = trio.current_time()
        for n in range(250):
            journal.append_nowait(Rec(kind="b", n=n))
        await journal.wait_committed(200)
        assert trio.current_time() - t0 == pytest.approx(2 * WRITE_S)
        assert [(f, last) for f, last, _ in db.batches] == [(1, 100), (101, 200)]
        await journal.flush()  # the last 50: flush does not wait out the window either
        assert trio.current_time() - t0 == pytest.approx(3 * WRITE_S)
        nursery.cancel_scope.cancel()


async def test_backoff_is_capped_and_alerts_come_once_per_outage(
    autojump_clock: trio.testing.MockClock,
) -> None:
    db = FakeDb()
    alerts: list[Alert] = []
    journal = _journal(db, window_ms=0, max_backoff_s=1.0, on_alert=alerts.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        db.down = True
        journal.append_nowait(Rec(kind="c", n=1))
        await trio.sleep(10)
        assert not journal.healthy
        gaps = [round(b - a - WRITE_S, 6) for a, b in itertools.pairwise(db.attempts)]
        assert gaps[:6] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]  # doubling, then capped
        assert set(gaps[6:]) == {1.0}
        assert journal.write_errors == len(db.attempts)
        assert [a.kind for a in alerts] == ["journal_unavailable"]  # once, however many tries

        db.down = False
        await journal.flush()
        assert journal.healthy
        assert [a.kind for a in alerts] == ["journal_unavailable", "journal_recovered"]
        assert alerts[1].value == pytest.approx(10, abs=1.5)  # how long the outage lasted

        db.down = True  # a second outage gets its own alert pair
        journal.append_nowait(Rec(kind="c", n=2))
        await trio.sleep(1)
        db.down = False
        await journal.flush()
        nursery.cancel_scope.cancel()
    assert [a.kind for a in alerts] == ["journal_unavailable", "journal_recovered"] * 2
    assert [(f, last) for f, last, _ in db.batches] == [(1, 1), (2, 2)]


async def test_a_failing_alert_sink_does_not_stop_the_writer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    db = FakeDb()

    def broken_sink(alert: Alert) -> None:
        raise RuntimeError("alert channel closed")

    journal = _journal(db, window_ms=0, on_alert=broken_sink)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        db.down = True
        journal.append_nowait(Rec(kind="d", n=1))
        await trio.sleep(1)
        db.down = False
        await journal.flush()
        nursery.cancel_scope.cancel()
    assert journal.records_written == 1

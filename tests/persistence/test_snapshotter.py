"""Snapshots: the fold of the journal stored, old batches compacted, nothing moved when
nothing is new (a snapshot's payload is the expensive part to read, see take_snapshot)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from typing import Any

import pytest
import trio

from bench.common import open_positions
from engine.lifecycle import PositionState
from engine.records import (
    AlertRaised,
    CommandIssued,
    CommandResolved,
    LevelsMoved,
    PositionSaved,
    Record,
    encode_batch,
)
from engine.state import EngineState
from persistence import Database, JournalReader, JournalWriter, SnapshotStore, snapshotter
from persistence.recovery import load_state
from persistence.snapshotter import SnapshotProcess, Snapshotter, take_snapshot
from protocol.common import Alert, AlertLevel
from protocol.device import CloseCommand
from protocol.errors import StorageError
from tests.engine.position_helpers import make_position
from tests.processes import running


async def _append(journal: JournalWriter[Any], records: list[Any]) -> None:
    for record in records:
        journal.append_nowait(record)
    await journal.flush()


async def test_snapshot_folds_compacts_and_skips_when_nothing_is_new(db: Database) -> None:
    positions = open_positions(50, 5, 200_000, seed=3)
    journal: JournalWriter[Any] = JournalWriter(db, encode_batch, max_batch=20, window_ms=0)
    reader, stored = JournalReader(db), SnapshotStore(db)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        await _append(journal, [PositionSaved(position=p) for p in positions])
        first, size = await take_snapshot(reader, stored, now_ms=1)
        assert first == 50 and size > 0

        calls: list[str] = []
        reading = stored.latest_snapshot

        async def counted() -> Any:
            calls.append("payload")
            return await reading()

        stored.latest_snapshot = counted  # type: ignore[method-assign]
        assert await take_snapshot(reader, stored, now_ms=2) == (50, 0)
        assert calls == []  # nothing new: no payload was read

        moved = positions[7]
        await _append(journal, [LevelsMoved(position_id=moved.id, sl=1, tp=None, time_ms=3)])
        second, size = await take_snapshot(reader, stored, now_ms=4)
        assert second == 51 and size > 0 and calls == ["payload"]  # read once, by the fold
        nursery.cancel_scope.cancel()

    # The newest snapshot alone is the whole state; the batches the first one covered are gone.
    snapshot = await stored.latest_snapshot()
    assert snapshot is not None and snapshot[0] == 51
    state = EngineState.decode_snapshot(snapshot[1])
    assert len(state.positions) == 50 and state.positions[moved.id].sl == 1
    recovered = await load_state(JournalReader(db), SnapshotStore(db))
    assert recovered.state.positions == state.positions and recovered.records == 0
    assert await db.fetchval("SELECT count(*) FROM journal WHERE last_seq <= 50") == 0


# -- the long-lived snapshotter: only what is new is folded, and it equals the full fold ------

STATES = [PositionState.OPEN, PositionState.CLOSING, PositionState.CLOSED, PositionState.REJECTED]


def _random_records(rng: random.Random, count: int, start_ms: int) -> list[Record]:
    """Saves (live and final), moves, commands and their resolutions, alerts, on few ids: each
    position is saved, moved, closed and saved again many times."""
    out: list[Record] = []
    for k in range(count):
        i, roll, t = rng.randrange(12), rng.random(), start_ms + k
        if roll < 0.3:
            state = rng.choice(STATES)
            out.append(PositionSaved(position=make_position(i, state=state, sl=rng.randint(1, 99))))
        elif roll < 0.7:
            sl, tp = rng.randint(1, 99), rng.choice([None, rng.randint(100, 200)])
            out.append(LevelsMoved(position_id=f"p{i}", sl=sl, tp=tp, time_ms=t))
        elif roll < 0.8:
            command = CloseCommand(
                command_id=f"c{i}", ticket=i + 1, symbol="XAUUSD", volume=0.1, deadline_ms=t
            )
            out.append(
                CommandIssued(
                    command=command, position_id=f"p{i}", user_id="u", device_id="d", issued_ms=t
                )
            )
        elif roll < 0.9:
            out.append(
                CommandResolved(
                    command_id=f"c{i}", position_id=f"p{i}", device_id="d", outcome="x", time_ms=t
                )
            )
        else:
            alert = Alert(kind="spread", level=AlertLevel.WARNING, message="wide", time_ms=t)
            out.append(AlertRaised(alert=alert))
    return out


def _assert_stored_equals(snapshot: tuple[int, bytes] | None, reference: EngineState) -> None:
    assert snapshot is not None and snapshot[0] == reference.seq
    stored = EngineState.decode_snapshot(snapshot[1])
    assert stored.seq == reference.seq
    assert stored.positions == reference.positions
    assert stored.commands == reference.commands
    assert stored.signals == reference.signals and stored.approvals == reference.approvals
    assert stored.guards == reference.guards


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_kept_state_folds_only_what_is_new_and_equals_the_full_fold(
    db: Database, seed: int
) -> None:
    rng = random.Random(seed)
    journal: JournalWriter[Any] = JournalWriter(db, encode_batch, max_batch=7, window_ms=0)
    reader, stored = JournalReader(db), SnapshotStore(db)
    snapshotter, reference, loaded = Snapshotter(), EngineState(), False
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        for round_ in range(8):
            records = _random_records(rng, rng.choice([0, 1, 5, 30, 60]), round_ * 1000)
            await _append(journal, records)
            for record in records:
                reference.apply(record, reference.seq + 1)
            taken = await snapshotter.take(reader, stored, now_ms=1)
            if not records:  # nothing new: nothing read, nothing written
                assert taken.bytes == 0 and taken.replayed == 0
                continue
            assert taken.seq == reference.seq and taken.bytes > 0
            # Recovered from the database once; after that, only the new records are read.
            assert taken.reloaded == (not loaded)
            assert not loaded or taken.replayed == len(records)
            loaded = True
            _assert_stored_equals(await stored.latest_snapshot(), reference)
        nursery.cancel_scope.cancel()
    recovered = await load_state(JournalReader(db), SnapshotStore(db))
    assert recovered.state.positions == reference.positions


async def test_a_newer_snapshot_by_another_writer_or_a_failure_means_recovering_again(
    db: Database,
) -> None:
    rng = random.Random(7)
    journal: JournalWriter[Any] = JournalWriter(db, encode_batch, max_batch=7, window_ms=0)
    reader, stored = JournalReader(db), SnapshotStore(db)
    snapshotter, reference = Snapshotter(), EngineState()

    async def append(count: int) -> None:
        records = _random_records(rng, count, reference.seq)
        await _append(journal, records)
        for record in records:
            reference.apply(record, reference.seq + 1)

    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        await append(40)
        assert (await snapshotter.take(reader, stored, now_ms=1)).reloaded
        # Another writer (the engine's own shutdown snapshot) snapshots and compacts: what the
        # kept state has not seen may be gone from the journal, so it is recovered again.
        await append(40)
        await take_snapshot(reader, stored, now_ms=1)
        await append(40)
        await take_snapshot(reader, stored, now_ms=1)
        await append(10)
        taken = await snapshotter.take(reader, stored, now_ms=1)
        assert taken.reloaded and taken.replayed == 10
        _assert_stored_equals(await stored.latest_snapshot(), reference)

        # A failure half-way through a fold: the kept state is dropped, not trusted.
        await append(30)
        reading = reader.read_batches

        def failing(*args: Any, **kwargs: Any) -> Any:
            raise StorageError("the database went away")

        reader.read_batches = failing  # type: ignore[method-assign]
        with pytest.raises(StorageError):
            await snapshotter.take(reader, stored, now_ms=1)
        reader.read_batches = reading  # type: ignore[method-assign]
        taken = await snapshotter.take(reader, stored, now_ms=1)
        assert taken.reloaded and taken.replayed == 30
        _assert_stored_equals(await stored.latest_snapshot(), reference)
        nursery.cancel_scope.cancel()


async def test_the_snapshotter_process_keeps_its_state_and_is_replaced_when_it_dies(
    db: Database, pg_dsn: str
) -> None:
    journal: JournalWriter[Any] = JournalWriter(db, encode_batch, max_batch=20, window_ms=0)
    stored = SnapshotStore(db)
    positions = open_positions(50, 5, 200_000, seed=3)
    async with (
        SnapshotProcess(pg_dsn, stderr=subprocess.DEVNULL) as snapshots,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(journal.run)
        await _append(journal, [PositionSaved(position=p) for p in positions])
        first = await snapshots.take()
        assert first.seq == 50 and first.positions == 50 and first.reloaded
        await _append(journal, [LevelsMoved(position_id=positions[0].id, sl=1, tp=2, time_ms=9)])
        second = await snapshots.take()
        assert second.seq == 51 and second.replayed == 1 and not second.reloaded
        assert (await snapshots.take()).bytes == 0  # nothing new

        # A Ctrl-C for the engine's process group is not for it: it stays for the final one.
        pid = snapshots.pid
        assert pid is not None
        os.kill(pid, signal.SIGINT)
        await trio.sleep(0.2)  # a window for the signal to end it, were it not ignored
        assert (await snapshots.take()).bytes == 0 and snapshots.pid == pid

        # Killed between two snapshots: the next one starts another process, which recovers.
        os.kill(pid, signal.SIGKILL)
        with trio.fail_after(10):
            while running(pid):
                await trio.sleep(0.01)
        await _append(journal, [LevelsMoved(position_id=positions[1].id, sl=3, tp=4, time_ms=9)])
        third = await snapshots.take()
        assert third.seq == 52 and third.reloaded and snapshots.started == 2

        # A request the child cannot read is answered with a failure; it keeps serving.
        process = snapshots._process
        assert process is not None and process.stdin is not None
        await process.stdin.send_all(b'{"type": "snapshot", "now_ms": "soon"}\n')
        with pytest.raises(StorageError, match="snapshot failed"):
            await snapshots._finish_request()
        await _append(journal, [LevelsMoved(position_id=positions[2].id, sl=5, tp=6, time_ms=9)])
        assert (await snapshots.take()).seq == 53 and snapshots.pid == process.pid
        nursery.cancel_scope.cancel()
    assert process.returncode == 0  # its stdin closed: it exited by itself

    state = EngineState.decode_snapshot((await stored.latest_snapshot() or (0, b""))[1])
    assert state.positions[positions[2].id].sl == 5


_ENGINE = """
import sys, trio
from persistence.snapshotter import SnapshotProcess

async def main():
    snapshots = SnapshotProcess(sys.argv[1])
    await snapshots.take()
    print(snapshots.pid, flush=True)
    await trio.sleep(3600)

trio.run(main)
"""


async def test_the_snapshotter_process_does_not_outlive_an_engine_killed_with_sigkill(
    pg_dsn: str,
) -> None:
    engine = await trio.lowlevel.open_process(
        [sys.executable, "-c", _ENGINE, pg_dsn],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert engine.stdout is not None
        with trio.fail_after(60):
            line = b""
            while not line.endswith(b"\n"):
                chunk = await engine.stdout.receive_some(100)
                assert chunk, "the engine exited before its first snapshot"
                line += chunk
        child = int(line)
        assert running(child)
    finally:
        engine.kill()
        await engine.wait()
    with trio.fail_after(10):
        while running(child):
            await trio.sleep(0.01)


async def test_an_unreadable_reply_fails_the_snapshot_and_replaces_the_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A child that answers garbage on its replies pipe (a real process, speaking the pipes).
    script = (
        "import os, sys; sys.stdin.readline(); os.write(int(sys.argv[1]), b'garbage\\n');"
        " sys.stdin.read()"
    )
    monkeypatch.setattr(
        snapshotter, "_command", lambda dsn, fd: [sys.executable, "-c", script, str(fd)]
    )
    async with SnapshotProcess("postgresql://unused", stderr=subprocess.DEVNULL) as snapshots:
        with pytest.raises(StorageError, match="unreadable"):
            await snapshots.take()
        assert snapshots.pid is None and snapshots.started == 1  # the next take starts another
        with pytest.raises(StorageError, match="unreadable"):
            await snapshots.take()
        assert snapshots.started == 2


async def test_an_oversized_request_ends_the_process_and_the_next_one_serves(
    db: Database, pg_dsn: str
) -> None:
    journal: JournalWriter[Any] = JournalWriter(db, encode_batch, max_batch=20, window_ms=0)
    async with (
        SnapshotProcess(pg_dsn, stderr=subprocess.DEVNULL) as snapshots,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(journal.run)
        await _append(journal, [PositionSaved(position=make_position(1, sl=5))])
        assert (await snapshots.take()).seq == 1
        process = snapshots._process
        assert process is not None and process.stdin is not None
        await process.stdin.send_all(b"x" * (snapshotter._LINE_LIMIT + 10))  # and no newline
        with trio.fail_after(10):
            await process.wait()
        assert process.returncode != 0
        await _append(journal, [LevelsMoved(position_id="p1", sl=6, tp=None, time_ms=2)])
        taken = await snapshots.take()
        assert taken.seq == 2 and taken.reloaded and snapshots.started == 2
        nursery.cancel_scope.cancel()

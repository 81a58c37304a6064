"""Snapshots, taken by a long-lived process beside the engine's.

A snapshot is the fold of the previous snapshot and the journal after it, so it can be computed
by anyone who can read the journal. The engine starts one snapshotter process
(``python -m persistence.snapshotter --serve``) at idle CPU priority and asks it for a snapshot
every ``snapshot_interval_s`` and once more at shutdown (:class:`SnapshotProcess`). The process
recovers the state once, keeps it in memory and, for each snapshot, folds only the journal
batches written since its last one (:class:`Snapshotter`): a snapshot costs the encoding of the
state, not the reading and decoding of the previous one, nor an interpreter's start and exit
(whose page-table work the kernel does without preemption points: it delayed the tick path on
the other core, ``bench.persistence``, ``snapshot_p99_ratio``). After writing a snapshot, the
journal batches the previous one covered are compacted away (that one is kept as a fallback).

Requests and replies are msgspec JSON lines on the child's stdin and on a pipe of its own (its
stdout goes to stderr, with its logs). The child exits when its stdin closes, so it never
outlives the engine, even one killed with SIGKILL.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time

import msgspec
import structlog
import trio
import trio.lowlevel

from engine.records import decode_batch
from engine.state import EngineState
from persistence.bridge import open_bridge
from persistence.db import Database, open_database
from persistence.journal_reader import JournalReader
from persistence.recovery import load_state
from persistence.snapshot_store import SnapshotStore
from protocol.errors import StorageError, TripwireError

__all__ = [
    "SnapshotFailed",
    "SnapshotProcess",
    "SnapshotRequest",
    "SnapshotTaken",
    "Snapshotter",
    "main",
    "take_snapshot",
    "yield_the_cpu",
]


class SnapshotRequest(msgspec.Struct, frozen=True, tag="snapshot"):
    """Take a snapshot now (``now_ms``: the time that decides what is pruned; None: the
    snapshotter's clock)."""

    now_ms: int | None = None


class SnapshotTaken(msgspec.Struct, frozen=True, tag="taken"):
    """The newest snapshot's seq after the request, and what writing it cost (``bytes`` 0:
    nothing was new, nothing was written)."""

    seq: int
    bytes: int = 0
    positions: int = 0
    replayed: int = 0
    reloaded: bool = False
    seconds: float = 0.0


class SnapshotFailed(msgspec.Struct, frozen=True, tag="failed"):
    """The snapshot failed; the journal still holds everything."""

    error: str


class _Died(StorageError):
    """The snapshotter process is gone (no reply, or no one reading requests)."""


_Reply = SnapshotTaken | SnapshotFailed
_REPLY_DECODER: msgspec.json.Decoder[_Reply] = msgspec.json.Decoder(_Reply)
_REQUEST_DECODER = msgspec.json.Decoder(SnapshotRequest)
_LINE_LIMIT = 64 * 1024


class Snapshotter:
    """Takes snapshots of one journal, keeping the state between them.

    The first snapshot recovers the state (:func:`~persistence.recovery.load_state`); each
    later one applies only the records after it, record by record
    (:meth:`~engine.state.EngineState.apply`), which is the same fold. The state is recovered
    again whenever a newer snapshot than the kept state appears in the database (another writer
    took one, and may have compacted records the kept state never saw) and after any failure
    (a half-applied batch leaves nothing to trust).
    """

    def __init__(self) -> None:
        self._state: EngineState | None = None

    async def take(
        self, journal: JournalReader, snapshots: SnapshotStore, now_ms: int | None = None
    ) -> SnapshotTaken:
        """Fold, store and compact. Nothing is read or written when no record arrived since
        the newest snapshot.

        Raises:
            StorageError: the database failed; the next call starts from the database again.
        """
        started = time.perf_counter()
        try:
            return await self._take(journal, snapshots, now_ms, started)
        except BaseException:
            self._state = None
            raise

    async def _take(
        self,
        journal: JournalReader,
        snapshots: SnapshotStore,
        now_ms: int | None,
        started: float,
    ) -> SnapshotTaken:
        newest, journal_seq = await snapshots.snapshot_and_journal_seqs()
        if journal_seq <= (newest or 0):
            return SnapshotTaken(seq=newest or 0)
        state = self._state
        reloaded = state is None or (newest or 0) > state.seq
        if state is None or reloaded:
            self._state = None
            recovered = await load_state(journal, snapshots)
            state, replayed = recovered.state, recovered.records
        else:
            replayed = await _apply_after(journal, state)
        self._state = state
        if newest == state.seq:
            return SnapshotTaken(seq=newest, reloaded=reloaded)
        state.prune(now_ms if now_ms is not None else int(time.time() * 1000))
        payload = state.encode_snapshot()
        await snapshots.write_snapshot(state.seq, payload)
        # Keep the previous snapshot replayable: compact only what it already covered.
        if newest is not None:
            await snapshots.compact(newest)
        taken = SnapshotTaken(
            seq=state.seq,
            bytes=len(payload),
            positions=len(state.positions),
            replayed=replayed,
            reloaded=reloaded,
            seconds=round(time.perf_counter() - started, 4),
        )
        structlog.get_logger().bind(component="snapshotter").debug(
            "snapshot written", **msgspec.structs.asdict(taken)
        )
        return taken


async def _apply_after(journal: JournalReader, state: EngineState) -> int:
    """Apply every committed record after ``state.seq``, oldest first; return how many."""
    applied = 0
    async for first, last, payload in journal.read_batches(state.seq):
        records = decode_batch(payload)
        skip = max(0, state.seq - first + 1)  # the oldest batch may straddle the state's seq
        for offset, record in enumerate(records[skip:], start=first + skip):
            state.apply(record, offset)
        applied += len(records) - skip
        if state.seq != last:
            raise StorageError("a journal batch holds fewer records than its seqs say", last=last)
        await trio.lowlevel.checkpoint()
    return applied


async def take_snapshot(
    journal: JournalReader, snapshots: SnapshotStore, now_ms: int | None = None
) -> tuple[int, int]:
    """One snapshot from scratch, in this process; returns ``(seq, bytes)`` (``bytes`` 0:
    nothing new). The engine's last resort at shutdown when its snapshotter process fails."""
    taken = await Snapshotter().take(journal, snapshots, now_ms)
    return taken.seq, taken.bytes


class SnapshotProcess:
    """The engine's side of the snapshotter process: started on first use, started again
    after it dies, asked for one snapshot at a time.

    Use as ``async with SnapshotProcess(dsn) as snapshots: await snapshots.take()``.
    ``stderr`` is where the child's logs go (None: the engine's own stderr).
    """

    def __init__(
        self,
        dsn: str,
        *,
        stderr: int | None = None,
        log_format: str = "console",
        log_level: str = "info",
    ) -> None:
        self.dsn = dsn
        self.log_format, self.log_level = log_format, log_level
        """Passed to the child: its lines are rendered as the engine's are (JSON if asked)."""
        self.started = 0
        """How many processes were started (more than one: it died and was replaced)."""
        self._stderr = stderr
        self._process: trio.Process | None = None
        self._replies: trio.abc.ReceiveStream | None = None
        self._buffer = bytearray()
        self._lock = trio.Lock()

    async def __aenter__(self) -> SnapshotProcess:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def take(self, now_ms: int | None = None) -> SnapshotTaken:
        """Ask for a snapshot and wait for it (one at a time; a second caller waits its turn).

        Raises:
            StorageError: the snapshot failed, or the process died (the next call starts
                another); the journal still holds everything.
        """
        async with self._lock:
            # A process that died since its last reply is replaced, and the request sent again
            # (once: a snapshot is idempotent, and a new process that dies too is a failure).
            for retry in (True, False):
                fresh = self._process is None or self._process.returncode is not None
                if fresh:
                    await self._start()
                try:
                    return await self._request(now_ms)
                except _Died as exc:
                    if fresh or not retry:
                        raise StorageError("the snapshotter process died", error=str(exc)) from exc
            raise AssertionError("unreachable")  # pragma: no cover

    async def _request(self, now_ms: int | None) -> SnapshotTaken:
        assert self._process is not None and self._process.stdin is not None
        try:
            await self._process.stdin.send_all(
                msgspec.json.encode(SnapshotRequest(now_ms=now_ms)) + b"\n"
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await self._stop(kill=True)
            raise _Died(repr(exc)) from exc
        return await self._finish_request()

    async def _finish_request(self) -> SnapshotTaken:
        try:
            reply = _REPLY_DECODER.decode(await self._read_line())
        except (trio.BrokenResourceError, trio.ClosedResourceError, EOFError) as exc:
            await self._stop(kill=True)
            raise _Died(repr(exc)) from exc
        except msgspec.DecodeError as exc:  # not the process this side speaks to: replace it
            await self._stop(kill=True)
            raise StorageError("the snapshotter's reply is unreadable", error=str(exc)) from exc
        except BaseException:
            # Cancelled (or anything else) mid-request: its reply would be read as the answer
            # to the next request, so this process is done.
            await self._stop(kill=True)
            raise
        if isinstance(reply, SnapshotFailed):
            raise StorageError("the snapshot failed", error=reply.error)
        return reply

    async def aclose(self) -> None:
        """Close the child's stdin (it exits after any snapshot in progress), then kill it if it
        is still there after a few seconds."""
        await self._stop(kill=False)

    async def _start(self) -> None:
        replies_read, replies_write = os.pipe()
        try:
            self._process = await trio.lowlevel.open_process(
                [
                    *_command(self.dsn, replies_write),
                    *("--log-format", self.log_format, "--log-level", self.log_level),
                ],
                stdin=subprocess.PIPE,
                # Its stdout is where structlog prints: that is the engine's stderr, with the
                # engine's own logs (fd 2), or wherever ``stderr`` says.
                stdout=self._stderr if self._stderr is not None else 2,
                stderr=self._stderr,
                pass_fds=(replies_write,),
            )
        except BaseException:
            os.close(replies_read)
            raise
        finally:
            os.close(replies_write)
        self._replies = trio.lowlevel.FdStream(replies_read)
        self._buffer.clear()
        self.started += 1

    async def _read_line(self) -> bytes:
        assert self._replies is not None
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) > _LINE_LIMIT:
                raise EOFError("the snapshotter's reply is too long")
            chunk = await self._replies.receive_some(_LINE_LIMIT)
            if not chunk:
                raise EOFError("the snapshotter closed its replies")
            self._buffer += chunk

    async def _stop(self, *, kill: bool) -> None:
        process, replies = self._process, self._replies
        self._process = self._replies = None
        if process is None:
            return
        with trio.CancelScope(shield=True):
            if replies is not None:
                await replies.aclose()
            if process.stdin is not None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await process.stdin.aclose()
            if not kill:
                with trio.move_on_after(5):
                    await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


def _command(dsn: str, replies_fd: int) -> list[str]:
    """The serving snapshotter, under ``chrt --idle`` where there is one (see
    :func:`yield_the_cpu`; set from outside so that no ``preexec_fn`` makes ``subprocess``
    fork() the engine: fork copies the page tables of the engine's whole heap, vfork does not)."""
    command = [
        sys.executable,
        "-m",
        "persistence.snapshotter",
        "--dsn",
        dsn,
        "--serve",
        str(replies_fd),
    ]
    chrt = shutil.which("chrt")
    return [chrt, "--idle", "0", *command] if chrt else command


def yield_the_cpu() -> str:
    """Run this process only when a core is otherwise idle.

    The engine shares the machine (2 cores on the dev box): a snapshot must never take a time
    slice from the tick path. ``SCHED_IDLE`` does exactly that on Linux; elsewhere the lowest
    nice value is the next best thing.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "idle"
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.nice(19)
        return "nice"


async def _idle_backend(db: Database) -> None:
    """The Postgres backend doing this process's reads and writes yields too, where the OS
    lets us (the same user, or root): the snapshot is background work end to end."""
    backend = int(await db.fetchval("SELECT pg_backend_pid()"))
    try:
        os.sched_setscheduler(backend, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, backend, 19)


async def _serve(dsn: str, replies_fd: int) -> None:
    """Answer requests from stdin until it closes."""
    snapshotter = Snapshotter()
    requests = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buffer = bytearray()
    async with open_bridge() as bridge, open_database(bridge, dsn, max_size=1) as db:
        journal, snapshots = JournalReader(db), SnapshotStore(db)
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                chunk = await requests.receive_some(_LINE_LIMIT)
                if not chunk:
                    return  # the engine is gone, or done with us
                buffer += chunk
                if len(buffer) > _LINE_LIMIT:
                    raise StorageError("a snapshot request is too long")
                continue
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            reply: _Reply
            try:
                request = _REQUEST_DECODER.decode(line)
                await _idle_backend(db)
                reply = await snapshotter.take(journal, snapshots, request.now_ms)
            except (TripwireError, msgspec.DecodeError) as exc:
                reply = SnapshotFailed(error=str(exc))
            os.write(replies_fd, msgspec.json.encode(reply) + b"\n")


async def _once(dsn: str) -> SnapshotTaken:
    async with open_bridge() as bridge, open_database(bridge, dsn, max_size=1) as db:
        await _idle_backend(db)
        return await Snapshotter().take(JournalReader(db), SnapshotStore(db))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fold the journal into a new snapshot.")
    parser.add_argument("--dsn", required=True, help="the engine's Postgres DSN")
    parser.add_argument(
        "--serve",
        type=int,
        metavar="FD",
        help="keep the state and take a snapshot per request line on stdin, replying on FD"
        " (how the engine runs it); without it, take one snapshot and exit",
    )
    parser.add_argument("--log-format", choices=["console", "json"], default="console")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    from persistence.logs import configure_logging  # the engine's renderings, one definition

    configure_logging(args.log_format, args.log_level)
    yield_the_cpu()
    if args.serve is not None:
        # A Ctrl-C in the engine's terminal reaches its whole process group: the engine shuts
        # down and asks for its final snapshot, which this process must still be there for.
        # It ends when the engine closes its stdin.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if args.serve is None:
        taken = trio.run(_once, args.dsn)
        print(f"snapshot seq={taken.seq} bytes={taken.bytes}")
        return 0
    trio.run(_serve, args.dsn, args.serve)
    return 0


if __name__ == "__main__":
    sys.exit(main())

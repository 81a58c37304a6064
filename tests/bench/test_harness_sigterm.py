"""SIGTERM stops a harness as Ctrl-C does: what it started (engines, nodes, workers, its
Postgres and Redis) is stopped with it, not left running to disturb the next runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.common import run_harness
from persistence.redis_server import find_redis_server
from tests.processes import children, running

_SLEEPER = """
import trio
from bench.common import run_harness

async def main() -> None:
    child = await trio.lowlevel.open_process(["sleep", "60"])
    print(child.pid, flush=True)
    try:
        await trio.sleep(60)
    finally:
        with trio.CancelScope(shield=True):
            child.kill()
            await child.wait()

run_harness(main)
"""


def test_a_harness_returns_what_its_run_returns() -> None:
    async def double(n: int) -> int:
        return 2 * n

    assert run_harness(double, 21) == 42


def test_sigterm_cancels_the_run_so_its_clean_up_stops_its_children() -> None:
    harness = subprocess.Popen(
        [sys.executable, "-c", _SLEEPER], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert harness.stdout is not None
        child = int(harness.stdout.readline())
        assert running(child)
        harness.send_signal(signal.SIGTERM)
        assert harness.wait(timeout=30) == 128 + signal.SIGTERM
        assert b"SIGTERM: stopping" in (harness.stderr.read() if harness.stderr else b"")
        assert not running(child)
    finally:
        harness.kill()
        harness.wait()


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    for child in children(pid, b""):
        found |= {child, *_descendants(child)}
    return found


def _holding(path: Path) -> set[int]:
    """Processes whose command line names ``path`` (the embedded Postgres is not a child:
    it was started by pg_ctl, which exited)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(path).encode() in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
@pytest.mark.skipif(find_redis_server() is None, reason="needs redis-server")
def test_sigterm_mid_run_leaves_no_node_worker_or_server_of_bench_cluster(
    tmp_path: Path,
) -> None:
    argv = ["--devices", "12", "--positions", "240", "--device-workers", "1", "--warmup", "1"]
    argv += ["--step-s", "60", "--steps", "100", "--runs", "1", "--no-failover"]
    argv += ["--arms", "cluster1"]  # its own Redis and a node in cluster mode
    if os.environ.get("TEST_DATABASE_URL"):
        argv += ["--database-url", os.environ["TEST_DATABASE_URL"]]
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # its folder, so its servers can be found
    with (tmp_path / "harness.log").open("wb") as log:
        harness = subprocess.Popen(
            [sys.executable, "-m", "bench.cluster", *argv], stdout=log, stderr=log, env=env
        )
    try:
        deadline = time.monotonic() + 180
        started: set[int] = set()
        # Measuring: the node, its workers and the feeder are up (a bound, not a timing).
        while not any(b"e2e_workers feeder" in _cmdline(p) for p in started):
            assert harness.poll() is None, (tmp_path / "harness.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the harness never started measuring"
            time.sleep(0.5)
            started = _descendants(harness.pid) | _holding(tmp_path)
        assert any(b"redis-server" in _cmdline(p) for p in started)
        if "--database-url" not in argv:
            assert any(b"bin/postgres" in _cmdline(p) for p in started)  # its embedded one
        harness.send_signal(signal.SIGTERM)
        assert harness.wait(timeout=120) == 128 + signal.SIGTERM
        left = {p for p in started | _holding(tmp_path) if running(p)}
        assert not left, [_cmdline(p) for p in left]
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait()
        for pid in _descendants(harness.pid) | _holding(tmp_path):
            os.kill(pid, signal.SIGKILL)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""

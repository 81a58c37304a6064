"""The embedded Postgres: start, adopt, stop, restart on the same DSN, clean up; who stops an
adopted server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from persistence import EmbeddedPostgres, resolve_dsn
from protocol.errors import ConfigError, StorageError
from tests.fixtures.postgres import TEST_SERVER_SETTINGS
from tests.processes import running


def _query(dsn: str, sql: str) -> object:
    async def run() -> object:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(run())


def test_start_adopt_stop_restart_cleanup(pg_folder: Path) -> None:
    server = EmbeddedPostgres(pg_folder / "pg", settings=TEST_SERVER_SETTINGS)
    try:
        dsn = server.start()
        assert dsn.startswith("postgresql://postgres@/postgres?host=")
        assert server.owned and server.is_running()
        assert _query(dsn, "SHOW fsync") == "off"  # settings reach the server
        _query(dsn, "CREATE TABLE kept (x int)")

        # A second process (here: object) finds it running and uses it without owning it.
        other = EmbeddedPostgres(pg_folder / "pg")
        assert other.start() == dsn
        assert not other.owned
        other.close()  # must not stop a server it did not start
        assert server.is_running()

        server.stop()
        assert not server.is_running()
        with pytest.raises(OSError):
            _query(dsn, "SELECT 1")
        server.stop()  # stopping a stopped server is a no-op

        assert server.restart() == dsn  # same socket, same DSN
        assert _query(dsn, "SELECT count(*) FROM kept") == 0  # same data

        server.stop("immediate")  # a crash: recovery runs at the next start
        server.restart()
        assert _query(dsn, "SELECT 1") == 1
    finally:
        server.cleanup()
    assert not (pg_folder / "pg").exists()


def test_a_folder_that_is_not_a_data_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pg" / "data").mkdir(parents=True)
    (tmp_path / "pg" / "data" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError):
        EmbeddedPostgres(tmp_path / "pg").start()


def test_dsn_before_start_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        EmbeddedPostgres(tmp_path / "pg").dsn()


def test_resolve_dsn_prefers_database_url(tmp_path: Path) -> None:
    url = "postgresql://app:secret@127.0.0.1:5432/tripwire"
    assert resolve_dsn({"DATABASE_URL": url}, tmp_path / "unused") == (url, None)
    assert not (tmp_path / "unused").exists()  # nothing started


OWNER = """
import sys, time
from persistence import EmbeddedPostgres
from tests.fixtures.postgres import TEST_SERVER_SETTINGS
EmbeddedPostgres(sys.argv[1], settings=TEST_SERVER_SETTINGS).start()
print("started", flush=True)
time.sleep(120)
"""


def test_a_server_whose_owner_was_killed_is_stopped_by_its_adopter(pg_folder: Path) -> None:
    """Another process starts the server; while it lives, an adopter shares the server and
    leaves it running; once it is killed (-9), the next adopter owns the server and stops it."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(pg_folder / "pg")],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        for _ in range(50):  # its log lines, then "started" (or nothing: it died)
            line = owner.stdout.readline().strip()
            if line in {"", "started"}:
                break
        assert line == "started"
        sharing = EmbeddedPostgres(pg_folder / "pg")
        dsn = sharing.start()
        assert not sharing.owned
        sharing.close()
        assert sharing.is_running() and _query(dsn, "SELECT 1") == 1

        owner.kill()
        owner.wait(timeout=30)
        adopter = EmbeddedPostgres(pg_folder / "pg")
        assert adopter.start() == dsn and adopter.owned
        pid = int((pg_folder / "pg" / "data" / "postmaster.pid").read_text().split()[0])
        adopter.close()
        assert not adopter.is_running() and not running(pid)
    finally:
        owner.kill()
        owner.wait(timeout=30)
        EmbeddedPostgres(pg_folder / "pg").cleanup()

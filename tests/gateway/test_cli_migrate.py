"""``tripwire migrate`` finds the database ``tripwire run`` uses: DATABASE_URL, else the
embedded Postgres under TRIPWIRE_STATE_DIR (it used to report on ./.tripwire whatever the
state dir said). The real command, in its own process, on a real embedded server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from persistence import EmbeddedPostgres
from persistence.migrator import load_migrations

pytestmark = pytest.mark.slow


def migrate(
    cwd: Path, state_dir: Path, *args: str, **env_vars: str
) -> subprocess.CompletedProcess[str]:
    """``tripwire migrate ARGS`` in ``cwd``, DATABASE_URL unset, the state dir ``state_dir``."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(PYTHONPATH=os.pathsep.join(sys.path), TRIPWIRE_STATE_DIR=str(state_dir))
    env.update(env_vars)
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "migrate", *args],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_migrate_uses_the_state_dir(tmp_path: Path, pg_folder: Path) -> None:
    versions = [m.version for m in load_migrations()]
    try:
        done = migrate(tmp_path, pg_folder)
        assert done.returncode == 0, done.stderr
        assert f"applied: {versions}" in done.stdout
        assert (pg_folder / "pg" / "data" / "PG_VERSION").exists()
        assert not (tmp_path / ".tripwire").exists(), "migrated ./.tripwire, not the state dir"
        assert not EmbeddedPostgres(pg_folder / "pg").is_running()  # it stopped what it started

        status = migrate(tmp_path, pg_folder, "--status")
        assert status.returncode == 0, status.stderr
        assert f"applied: {versions}; pending: none" in status.stdout
        assert not (tmp_path / ".tripwire").exists()
    finally:
        EmbeddedPostgres(pg_folder / "pg").stop("immediate")


def test_migrate_names_a_bad_setting(tmp_path: Path, pg_folder: Path) -> None:
    state_dir = pg_folder / "state"
    done = migrate(tmp_path, state_dir, TRIPWIRE_PORT="not-a-port")
    assert done.returncode == 1
    assert "configuration error" in done.stderr and "TRIPWIRE_PORT" in done.stderr
    assert not state_dir.exists()  # nothing started

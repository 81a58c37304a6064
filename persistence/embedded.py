"""An embedded, real PostgreSQL server: the default when ``DATABASE_URL`` is unset.

The server binaries come from the ``pgserver`` wheel (a full Postgres build installed by pip),
so nobody sets a database up by hand: ``tripwire run`` starts one under ``./.tripwire/pg`` and
the test session starts one in a temporary folder. It listens on a unix socket only (no TCP
port, so it never collides with a Postgres the machine already runs), and the DSN it returns
(``postgresql://postgres@/postgres?host=/path``) is what asyncpg accepts.

We drive ``initdb`` and ``pg_ctl`` ourselves instead of using ``pgserver.get_server``: that
helper registers an ``atexit`` hook, caches one instance per folder and cannot stop and start
the same server again, and fault tests need exactly that (stop Postgres for real mid-run,
start it again on the same socket so the same DSN reconnects).

Layout of the folder::

    <dir>/data/          PGDATA (the socket lives here too, unless that path is too long)
    <dir>/data/server.log
    <dir>/start.lock     serialises starts and stops across processes

    <dir>/owner          the process that owns the running server: "pid start-time"

"Already running in that folder" is handled by adopting the server: the live postmaster is found
through ``postmaster.pid`` and used. Only a postmaster whose working directory is this data
directory counts (a pid in a stale ``postmaster.pid`` may since belong to another Postgres, the
machine's own, say). Who stops it depends on its owner, the process that started it:

* the owner is alive (a second ``tripwire`` process, ``tripwire migrate`` beside a running
  engine): the server is shared, and only its owner stops it on :meth:`close`;
* the owner is gone (the engine was killed with ``kill -9`` and started again) or unknown: the
  server is an orphan, this object becomes its owner and stops it on :meth:`close`, as if it had
  started it. (Adopted without an owner, it outlived every later engine: a SIGTERM stopped the
  engine and left its Postgres running.)

An owner is a pid and its process's start time, so a reused pid does not pass for the owner.

Every method here blocks (it runs ``pg_ctl``): from trio, call them through
``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

import psutil
import structlog

# pgserver computes a per-user runtime folder at import and warns when XDG_RUNTIME_DIR is unset
# (servers, containers); we never use that folder for anything but a socket fallback.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from pgserver._commands import POSTGRES_BIN_PATH, create_command_function
    from pgserver.utils import (
        PostmasterInfo,
        ensure_prefix_permissions,
        ensure_user_exists,
        find_suitable_socket_dir,
    )

from protocol.errors import ConfigError, StorageError

__all__ = ["DEFAULT_EMBEDDED_DIR", "EmbeddedPostgres", "resolve_dsn"]

# pgserver makes ``pgserver.initdb`` and ``pgserver.pg_ctl`` with ``setattr`` when imported,
# invisible to a type checker: the same functions, built by name from the same factory.
_INITDB = create_command_function("initdb")
_PG_CTL = create_command_function("pg_ctl")

DEFAULT_EMBEDDED_DIR = Path(".tripwire") / "pg"
"""The default folder of :func:`resolve_dsn`: ``pg`` in the default state dir (``tripwire run``
and ``tripwire migrate`` use ``TRIPWIRE_STATE_DIR/pg``)."""

_OWNER_FILE = "owner"
_SERVER_USER = "pgserver"  # postgres refuses to run as root; pgserver's own choice of user
_START_TIMEOUT_S = 60


class EmbeddedPostgres:
    """A Postgres server private to ``directory``; see the module docstring.

    Args:
        directory: the folder that holds the data directory; created if missing.
        settings: extra server settings (``-c name=value``), e.g. ``{"fsync": "off"}`` for
            throw-away test servers. The default keeps Postgres's durable defaults.
    """

    def __init__(self, directory: str | Path, *, settings: Mapping[str, str] | None = None):
        self.directory = Path(directory).expanduser().resolve()
        self.data_dir = self.directory / "data"
        self.settings = dict(settings or {})
        self.owned = False
        """True when this object started the server, or adopted one whose owner is gone (and
        so :meth:`close` stops it)."""
        self._socket_dir: Path | None = None
        self._run_as = _SERVER_USER if os.geteuid() == 0 else None
        self._log = structlog.get_logger().bind(
            component="embedded_pg", directory=str(self.directory)
        )

    # -- public -------------------------------------------------------------------------------

    def start(self) -> str:
        """Start (or adopt) the server and return the DSN of its ``postgres`` database.

        Raises:
            StorageError: the server did not come up (its log tail is in ``details``).
            ConfigError: ``directory/data`` exists but is not a Postgres data directory.
        """
        with self._locked():
            self._ensure_initialised()
            info = self._postmaster()
            if info is not None:
                self._socket_dir = info.socket_dir
                owner = self._live_owner()
                if owner is not None:
                    self._log.info("sharing running postgres", pid=info.pid, owner=owner)
                else:
                    self._own()
                    self._log.info("adopted postgres its owner left running", pid=info.pid)
                return self.dsn()
            self._start_locked()
            self._own()
            return self.dsn()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server, whoever started it.

        ``mode`` is pg_ctl's: ``smart`` waits for clients, ``fast`` disconnects them and shuts
        down cleanly, ``immediate`` aborts like a crash (recovery runs at the next start).
        Stopping a server that is not running does nothing.
        """
        if mode not in {"smart", "fast", "immediate"}:
            raise ValueError(f"unknown stop mode {mode!r}")
        with self._locked():
            if self._postmaster() is None:
                return
            self._pg_ctl(["-w", "-t", str(_START_TIMEOUT_S), "-m", mode, "stop"])
            self._log.info("postgres stopped", mode=mode)

    def restart(self) -> str:
        """Start the server again after :meth:`stop`; the DSN stays the same."""
        with self._locked():
            if self._postmaster() is None:
                self._start_locked()
                self._own()
        return self.dsn()

    def close(self) -> None:
        """Stop the server if this object owns it (started it, or adopted an orphan); leave
        one that a live process owns running."""
        if self.owned:
            self.stop("fast")
            self.owned = False
            with contextlib.suppress(OSError):
                (self.directory / _OWNER_FILE).unlink()

    def cleanup(self) -> None:
        """Stop the server (whoever started it) and delete the whole folder (tests)."""
        self.stop("immediate")
        self.owned = False
        shutil.rmtree(self.directory, ignore_errors=True)

    def is_running(self) -> bool:
        """Whether a live postmaster serves this data directory."""
        return self._postmaster() is not None

    def dsn(self, database: str = "postgres") -> str:
        """The asyncpg DSN of ``database`` on this server (a unix socket URI)."""
        if self._socket_dir is None:
            raise StorageError("embedded postgres is not started", directory=str(self.directory))
        return f"postgresql://postgres@/{database}?host={self._socket_dir}"

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` of the server log (for error messages)."""
        path = self.data_dir / "server.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold ``start.lock``: two processes starting the same folder must not race."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "start.lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _own(self) -> None:
        """Record this process as the server's owner (under the lock)."""
        me = psutil.Process()
        (self.directory / _OWNER_FILE).write_text(f"{me.pid} {me.create_time()!r}\n")
        self.owned = True

    def _live_owner(self) -> int | None:
        """The pid of the server's owner if that process still runs, else None."""
        try:
            pid_text, created_text = (self.directory / _OWNER_FILE).read_text().split()
            pid, created = int(pid_text), float(created_text)
            owner = psutil.Process(pid)
            if owner.create_time() != created or owner.status() == psutil.STATUS_ZOMBIE:
                return None  # the pid now names another process, or a corpse
        except (OSError, ValueError, psutil.Error):
            return None  # no owner recorded, or it is gone
        return pid

    def _ensure_initialised(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise ConfigError(
                "folder exists but is not a Postgres data directory", key=str(self.data_dir)
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._run_as is not None:
            # Running as root: postgres must run as an ordinary user who can reach the folder.
            entry = ensure_user_exists(self._run_as)
            assert entry is not None  # it creates the user when missing
            ensure_prefix_permissions(self.data_dir)
            # ...and the binaries: a checkout in a private folder (``mktemp -d`` is 0700)
            # holds the virtualenv the postgres executables live in.
            ensure_prefix_permissions(POSTGRES_BIN_PATH / "initdb")
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self._log.info("initialising postgres data directory")
        try:
            _INITDB(
                ["--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", "postgres"],
                pgdata=self.data_dir,
                user=self._run_as,
                timeout=_START_TIMEOUT_S,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise StorageError("initdb failed", directory=str(self.data_dir)) from exc

    def _postmaster(self) -> PostmasterInfo | None:
        """The live postmaster of this data directory, or None (a stale pid file counts as none)."""
        try:
            info = PostmasterInfo.read_from_pgdata(self.data_dir)
        except (OSError, ValueError, AssertionError):
            return None  # a pid file being written or truncated: treat as not running
        if info is None or not info.is_running() or info.process is None:
            return None
        with contextlib.suppress(Exception):
            if info.process.name() not in {"postgres", "postmaster"}:
                return None  # the pid was reused by some other program
        with contextlib.suppress(psutil.AccessDenied):
            # A postmaster runs in its data directory: another one (the pid reused by another
            # server after a reboot) is not ours to adopt, nor to stop.
            if Path(info.process.cwd()).resolve() != self.data_dir.resolve():
                return None
        return info

    def _start_locked(self) -> None:
        socket_dir = find_suitable_socket_dir(
            self.data_dir, Path(tempfile.gettempdir()) / "tripwire-pg"
        )
        if self._run_as is not None and socket_dir != self.data_dir:
            ensure_prefix_permissions(socket_dir)
            socket_dir.chmod(0o777)
        options = f'-h "" -k {socket_dir}'
        for name, value in self.settings.items():
            options += f" -c {name}={value}"
        args = ["-w", "-t", str(_START_TIMEOUT_S), "-o", options]
        args += ["-l", str(self.data_dir / "server.log"), "start"]
        try:
            self._pg_ctl(args)
        except StorageError as exc:
            exc.details["log"] = self.log_tail()
            raise
        # pg_ctl -w returns once the server accepts connections; postmaster.pid may lag a hair.
        deadline = time.monotonic() + 10
        while (info := self._postmaster()) is None or info.status != "ready":
            if time.monotonic() > deadline:
                raise StorageError("postgres did not become ready", log=self.log_tail())
            time.sleep(0.05)
        self._socket_dir = info.socket_dir
        self._log.info("postgres started", pid=info.pid, socket_dir=str(info.socket_dir))

    def _pg_ctl(self, args: list[str]) -> None:
        try:
            _PG_CTL(args, pgdata=self.data_dir, user=self._run_as, timeout=_START_TIMEOUT_S + 5)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise StorageError(f"pg_ctl {args[-1]} failed", directory=str(self.data_dir)) from exc


def resolve_dsn(
    environ: Mapping[str, str] | None = None, directory: str | Path = DEFAULT_EMBEDDED_DIR
) -> tuple[str, EmbeddedPostgres | None]:
    """The DSN to use: ``DATABASE_URL`` if set, else an embedded server in ``directory``.

    Returns ``(dsn, server)``; ``server`` is None for ``DATABASE_URL``, else the embedded
    server, started (or adopted): call its :meth:`~EmbeddedPostgres.close` on the way out.
    Blocking (it may run initdb and pg_ctl): call it before ``trio.run`` or in a thread.
    """
    env = os.environ if environ is None else environ
    url = env.get("DATABASE_URL", "").strip()
    if url:
        return url, None
    server = EmbeddedPostgres(directory)
    return server.start(), server

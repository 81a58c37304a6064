"""The ``tripwire`` command.

``tripwire --version`` (or ``tripwire version``) prints the version; ``tripwire run`` starts
the engine; ``tripwire migrate`` brings the database schema up to date (``DATABASE_URL``, or the
embedded Postgres under ``TRIPWIRE_STATE_DIR/pg`` when it is unset: the database ``tripwire
run`` uses). ``tripwire user|device|strategy`` are the operator's commands (``gateway.admin``).
All read their settings the same way (``TRIPWIRE_CONFIG``, then the environment).

A failure the operator can fix (a bad setting, the port taken) is one line on standard error
and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import msgspec

from gateway.admin import ADMIN_COMMANDS, add_admin_commands, run_admin
from gateway.config import SETTINGS_HELP, Settings, env_name, load_settings
from persistence.logs import configure_logging, get_logger

__all__ = ["main"]


def _version() -> str:
    try:
        return version("tripwire")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tripwire",
        description="Tripwire: an actor-based real-time trading engine.",
    )
    parser.add_argument("--version", action="version", version=f"tripwire {_version()}")
    parser.add_argument(
        "--log-format",
        choices=["console", "json"],
        default=os.environ.get("TRIPWIRE_LOG_FORMAT", "console"),
        help="console (development) or json lines (production) [env TRIPWIRE_LOG_FORMAT]",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("TRIPWIRE_LOG_LEVEL", "info"),
        help="debug, info, warning or error [env TRIPWIRE_LOG_LEVEL]",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("version", help="print the version and exit")
    run = commands.add_parser(
        "run",
        help="start the engine (API, WebSockets, dashboard)",
        description="Start Tripwire. Every option also reads its environment variable; a "
        "command-line flag wins over the environment, which wins over TRIPWIRE_CONFIG.",
    )
    for field in msgspec.structs.fields(Settings):
        flag = "--" + field.name.replace("_", "-")
        default = "" if field.default in (None, msgspec.NODEFAULT) else f", default {field.default}"
        help_text = f"{SETTINGS_HELP.get(field.name, '')} [env {env_name(field.name)}{default}]"
        run.add_argument(
            flag,
            dest="setting_" + field.name,
            default=None,
            metavar="VALUE",
            help=help_text.replace("%", "%%"),
        )
    migrate = commands.add_parser(
        "migrate",
        help="apply pending schema migrations [env DATABASE_URL, else the embedded Postgres]",
    )
    migrate.add_argument(
        "--status", action="store_true", help="list applied and pending versions, change nothing"
    )
    add_admin_commands(commands)
    return parser


def _address_in_use(exc: BaseException) -> OSError | None:
    """The "address already in use" error inside ``exc`` (trio wraps it in groups)."""
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _address_in_use(inner)
            if found is not None:
                return found
    return None


def _migrate(args: argparse.Namespace) -> int:
    """Apply (or, with ``--status``, list) schema migrations; 1 with a message on failure."""
    import trio

    from persistence.bridge import open_bridge
    from persistence.db import open_database, redact_dsn
    from persistence.embedded import resolve_dsn
    from persistence.migrator import migrate, migration_status
    from protocol.errors import ConfigError, TripwireError

    log = get_logger()

    async def main(dsn: str) -> None:
        async with open_bridge() as bridge, open_database(bridge, dsn) as db:
            if args.status:
                status = await migration_status(db)
                print(f"applied: {status.applied or 'none'}; pending: {status.pending or 'none'}")
                return
            applied = await migrate(db)
            print(f"applied: {applied}" if applied else "schema is up to date")

    server = None
    try:
        # The settings `tripwire run` reads (DATABASE_URL, else the state dir's embedded server),
        # so that both find the same database.
        settings = load_settings()
        dsn, server = resolve_dsn(
            {"DATABASE_URL": settings.database_url or ""}, Path(settings.state_dir) / "pg"
        )
        log.info("migrating", dsn=redact_dsn(dsn), embedded=server is not None)
        trio.run(main, dsn)
    except ConfigError as exc:
        print(f"tripwire migrate: configuration error: {exc.message}", file=sys.stderr)
        return 1
    except TripwireError as exc:
        print(f"tripwire migrate: {exc.code}: {exc.message} {exc.details}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.close()
    return 0


def _run(args: argparse.Namespace) -> int:
    """Start the engine; 1 with a message naming the setting when the configuration is bad."""
    import trio

    from gateway.runtime import run
    from protocol.errors import ConfigError, TripwireError

    raw = {
        k[len("setting_") :]: v
        for k, v in vars(args).items()
        if k.startswith("setting_") and v is not None
    }
    # ``tripwire --log-format json run`` means the same as ``tripwire run --log-format json``.
    raw.setdefault("log_format", args.log_format)
    raw.setdefault("log_level", args.log_level)
    try:
        environ = dict(os.environ)
        environ.update({env_name(k): v for k, v in raw.items()})
        settings = load_settings(environ)
        configure_logging(settings.log_format, settings.log_level)
        if settings.nodes > 1:
            from gateway.launcher import launch
            from gateway.runtime import wait_for_signal

            trio.run(functools.partial(launch, settings, shutdown_trigger=wait_for_signal))
        else:
            trio.run(run, settings)
    except ConfigError as exc:
        print(f"tripwire run: configuration error: {exc.message}", file=sys.stderr)
        return 1
    except TripwireError as exc:
        print(f"tripwire run: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    except BaseException as exc:
        if _address_in_use(exc) is None:
            raise
        where = f"{raw.get('host') or settings.host}:{raw.get('port') or settings.port}"
        print(f"tripwire run: cannot listen on {where}: address already in use", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        configure_logging(args.log_format, args.log_level)
    except ValueError as exc:
        parser.error(str(exc))
    if args.command == "version":
        print(f"tripwire {_version()}")
        return 0
    if args.command == "run":
        return _run(args)
    if args.command == "migrate":
        return _migrate(args)
    if args.command in ADMIN_COMMANDS:
        return run_admin(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())

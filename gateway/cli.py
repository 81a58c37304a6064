"""The ``tripwire`` command.

``tripwire version`` prints the version; ``tripwire run`` starts the engine; ``tripwire migrate``
brings the database schema up to date (``DATABASE_URL``, or the embedded Postgres under
``./.tripwire/pg`` when it is unset).
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import PackageNotFoundError, version

from gateway.logs import configure_logging, get_logger

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
    run = commands.add_parser("run", help="start the engine")
    run.add_argument(
        "--positions",
        type=int,
        default=1000,
        help="demo positions to arm around the market (default 1000)",
    )
    migrate = commands.add_parser(
        "migrate",
        help="apply pending schema migrations [env DATABASE_URL, else the embedded Postgres]",
    )
    migrate.add_argument(
        "--status", action="store_true", help="list applied and pending versions, change nothing"
    )
    return parser


def _migrate(args: argparse.Namespace) -> int:
    """Apply (or, with ``--status``, list) schema migrations; 1 with a message on failure."""
    import trio

    from persistence.bridge import open_bridge
    from persistence.db import open_database, redact_dsn
    from persistence.embedded import resolve_dsn
    from persistence.migrator import migrate, migration_status
    from protocol.errors import TripwireError

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
        dsn, server = resolve_dsn()
        log.info("migrating", dsn=redact_dsn(dsn), embedded=server is not None)
        trio.run(main, dsn)
    except TripwireError as exc:
        print(f"tripwire migrate: {exc.code}: {exc.message} {exc.details}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.close()
    return 0


def _run(args: argparse.Namespace) -> int:
    """Replay the bundled XAUUSD day through a trigger book armed with demo positions."""
    import numpy as np

    from actors.marketdata import load_ticks
    from engine import DEFAULT_INSTRUMENTS, TriggerBook
    from protocol.common import Side

    log = get_logger(symbol="XAUUSD")
    instrument = DEFAULT_INSTRUMENTS["XAUUSD"]
    ticks = load_ticks("XAUUSD")
    bids, asks = ticks.points(instrument.digits)
    book = TriggerBook("XAUUSD")
    rng = np.random.default_rng(7)
    entry = int(bids[0])
    for i in range(args.positions):
        side = Side.BUY if i % 2 == 0 else Side.SELL
        sl_dist, tp_dist = (int(d) for d in rng.integers(500, 20_000, size=2))
        sl = entry - side.sign * sl_dist
        tp = entry + side.sign * tp_dist
        book.register(f"demo-{i}", side, sl, tp)
    log.info("replaying", ticks=len(ticks), positions=len(book))
    fired = 0
    for bid, ask, ts in zip(bids.tolist(), asks.tolist(), ticks.ts_ms.tolist(), strict=True):
        for trigger in book.on_quote(bid, ask):
            fired += 1
            log.info(
                "trigger",
                position_id=trigger.position_id,
                kind=trigger.kind.name,
                level=instrument.to_price(trigger.level),
                price=instrument.to_price(trigger.price),
                ts_ms=int(ts),
            )
    log.info("replay done", fired=fired, still_armed=len(book))
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
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())

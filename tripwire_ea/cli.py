"""``tripwire-ea``: run the bridge between this machine's MetaTrader 5 terminal and Tripwire."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog
import trio

from protocol.codec import device_client_codec
from protocol.errors import ConfigError, TripwireError
from tripwire_ea.dispatch import Dispatcher
from tripwire_ea.secret import SECRET_ENV, SECRET_FILE_ENV, load_secret
from tripwire_ea.session import Bridge, Stop
from tripwire_ea.terminal import DAY_MS, DEFAULT_MAGIC, Terminal, load_module
from tripwire_ea.window import CommandWindow

__all__ = ["build_parser", "main"]

VERSION = "tripwire-ea 0.1.0"
DEVICE_ENV = "TRIPWIRE_DEVICE_ID"
MT5_PASSWORD_ENV = "MT5_PASSWORD"

DESCRIPTION = f"""\
Connect this machine's MetaTrader 5 terminal to a Tripwire server as a device.

The bridge logs in to the server with the device's id and secret (a signed hello), reports
every position, the deals that closed positions while it was away and the account, then
executes the server's signed commands through the terminal (order_send) and answers each with
its real fill. It reconnects by itself, with backoff, whenever the server or the terminal goes
away, and never executes a command twice, even across a crash: the ids it executed are kept in
--state-dir, and a command it was executing when it died is looked up in the terminal's
history instead of being sent again.

The device secret is never given on the command line (other users can read command lines):
put it in the environment variable {SECRET_ENV}, or in a file only you can read
(chmod 600; --secret-file or {SECRET_FILE_ENV}).
"""

EPILOG = """\
example (PowerShell):
  $env:TRIPWIRE_DEVICE_SECRET = "<the secret printed by `tripwire device add`>"
  tripwire-ea --server wss://tripwire.example.com --device-id d-7f3a

docs/bridge.md explains installation, provisioning and the result codes.
"""


def _default_state_dir() -> Path:
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA", Path.home())) / "tripwire-ea"
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "tripwire-ea"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tripwire-ea",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=VERSION)
    p.add_argument(
        "--server",
        required=True,
        metavar="URL",
        help="the Tripwire server: wss://host[:port] (the path /ws/device is added if missing)",
    )
    p.add_argument(
        "--device-id",
        default=os.environ.get(DEVICE_ENV),
        help=f"the device id printed by `tripwire device add` (default: ${DEVICE_ENV})",
    )
    p.add_argument(
        "--secret-file",
        metavar="PATH",
        help=f"read the device secret from this file, mode 0600 (default: ${SECRET_FILE_ENV}, "
        f"else ${SECRET_ENV})",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=_default_state_dir(),
        help="where the executed command ids are kept (default: %(default)s)",
    )
    mt5 = p.add_argument_group("the terminal")
    mt5.add_argument(
        "--terminal-path",
        metavar="PATH",
        help="terminal64.exe to attach to (default: the running or last used terminal)",
    )
    mt5.add_argument(
        "--login",
        type=int,
        help=f"log the terminal in to this account (password from ${MT5_PASSWORD_ENV})",
    )
    mt5.add_argument("--mt5-server", metavar="NAME", help="the broker's trade server for --login")
    mt5.add_argument(
        "--symbols",
        metavar="A,B",
        help="broker symbols to offer (default: every symbol shown in Market Watch)",
    )
    mt5.add_argument(
        "--magic",
        type=int,
        default=DEFAULT_MAGIC,
        help="the magic number of the bridge's orders (default: %(default)s)",
    )
    mt5.add_argument(
        "--deviation",
        type=int,
        default=20,
        help="slippage in points when a command gives none (default: %(default)s)",
    )
    mt5.add_argument(
        "--utc-offset-min",
        type=int,
        help="the trade server's time minus UTC, in minutes (default: measured from the "
        "newest tick at connect)",
    )
    mt5.add_argument(
        "--deals-days",
        type=float,
        default=7.0,
        help="how far back closing deals are reported on every reconnect (default: %(default)s)",
    )
    link = p.add_argument_group("the connection")
    link.add_argument(
        "--encoding",
        choices=("json", "msgpack"),
        default="msgpack",
        help="the wire encoding (default: %(default)s)",
    )
    link.add_argument(
        "--max-backoff-s",
        type=float,
        default=60.0,
        help="longest wait between reconnection attempts (default: %(default)s)",
    )
    link.add_argument(
        "--poll-ms",
        type=int,
        default=250,
        help="how often the terminal is read for closes and opens of its own "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="(default: %(default)s)",
    )
    return p


def device_url(server: str) -> str:
    """``wss://host`` -> ``wss://host/ws/device``; a URL with a path is kept as it is."""
    if not server.startswith(("ws://", "wss://")):
        raise ConfigError(f"--server must be a ws:// or wss:// URL, not {server!r}")
    rest = server.split("://", 1)[1]
    return server if "/" in rest.rstrip("/") else server.rstrip("/") + "/ws/device"


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(message)s")
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level)
    try:
        if not args.device_id:
            raise ConfigError(f"no device id: --device-id or ${DEVICE_ENV}")
        secret = load_secret(args.secret_file)
        url = device_url(args.server)
        terminal = Terminal(
            load_module(),
            path=args.terminal_path,
            login=args.login,
            password=os.environ.get(MT5_PASSWORD_ENV),
            server=args.mt5_server,
            magic=args.magic,
            deviation_points=args.deviation,
            symbols=[s.strip() for s in args.symbols.split(",") if s.strip()]
            if args.symbols
            else None,
            deals_lookback_ms=int(args.deals_days * DAY_MS),
            utc_offset_ms=None if args.utc_offset_min is None else args.utc_offset_min * 60_000,
        )
        window = CommandWindow(args.state_dir / f"{args.device_id}.commands.json")
    except (ConfigError, OSError) as exc:
        message = exc.message if isinstance(exc, TripwireError) else str(exc)
        print(f"tripwire-ea: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    codec = device_client_codec(args.encoding)
    bridge = Bridge(
        url,
        args.device_id,
        secret,
        Dispatcher(terminal, window, codec),
        codec,
        encoding=args.encoding,
        ea_build=VERSION,
        poll_s=args.poll_ms / 1000,
        max_backoff_s=args.max_backoff_s,
    )
    try:
        trio.run(bridge.run)
    except Stop as exc:
        print(f"tripwire-ea: {exc}", file=sys.stderr)
        raise SystemExit(3) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None

"""The operator's commands: ``tripwire user``, ``tripwire device``, ``tripwire strategy``.

Users and devices are written to the engine's database (``DATABASE_URL``, or the embedded
Postgres under ``TRIPWIRE_STATE_DIR/pg``), through the same :class:`~gateway.registry.Registry`
the engine uses. Every write notifies (``pg_notify``), and every running engine, each node of a
cluster, re-reads the changed row within moments (``Registry.follow``): a disabled user or a
revoked device is refused at its next handshake or request. A session already open stays
open until it reconnects; end it at once with the admin REST API (the device routes).

A secret (a device's, a strategy's, a generated password) is printed once, on standard output,
and never logged. Strategies are configuration, not data (``TRIPWIRE_STRATEGIES``):
``strategy add`` generates a secret and prints the setting's new value to put in the
environment or the TOML file; the engine reads it at its next start.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

__all__ = ["add_admin_commands", "run_admin"]

ADMIN_COMMANDS = ("user", "device", "strategy")


def add_admin_commands(commands: Any) -> None:
    """Add the admin sub-commands to the ``tripwire`` parser's sub-parsers."""
    user = commands.add_parser(
        "user", help="add or disable a user (database; running engines follow)"
    )
    users = user.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = users.add_parser("add", help="create a user; prints its password if generated")
    add.add_argument("username")
    add.add_argument("--admin", action="store_true", help="an admin, not a trader")
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input (else one is generated and printed once)",
    )
    disable = users.add_parser("disable", help="disable a user (--enable: enable again)")
    disable.add_argument("username")
    disable.add_argument("--enable", action="store_true", help="enable the user again")

    device = commands.add_parser("device", help="add, rotate or revoke a device (database)")
    devices = device.add_subparsers(dest="action", metavar="ACTION", required=True)
    dadd = devices.add_parser("add", help="register a device; prints its id and secret once")
    dadd.add_argument("username", help="the owner")
    dadd.add_argument("name", help="a name the owner recognises (e.g. 'MT5 live')")
    dadd.add_argument("--account-login", default="")
    dadd.add_argument("--broker", default="")
    rotate = devices.add_parser("rotate", help="a new secret, printed once; the old one stays "
                                "valid for --grace-s")  # fmt: skip
    rotate.add_argument("device_id")
    rotate.add_argument("--grace-s", type=float, default=3600.0)
    revoke = devices.add_parser("revoke", help="revoke a device (it can no longer connect)")
    revoke.add_argument("device_id")

    strategy = commands.add_parser("strategy", help="add a signal strategy (configuration)")
    strategies = strategy.add_subparsers(dest="action", metavar="ACTION", required=True)
    sadd = strategies.add_parser(
        "add", help="generate a strategy secret; prints it once with the TRIPWIRE_STRATEGIES line"
    )
    sadd.add_argument("strategy_id")


def run_admin(args: argparse.Namespace) -> int:
    """Run an admin command; 0, or 1 with a one-line message on standard error."""
    from gateway.config import load_settings, parse_strategies
    from protocol.errors import ConfigError, TripwireError

    where = f"tripwire {args.command} {args.action}"
    try:
        settings = load_settings()
        if args.command == "strategy":
            return _strategy_add(args.strategy_id, settings.strategies, parse_strategies)
        password = None
        if args.command == "user" and args.action == "add" and args.password_stdin:
            password = sys.stdin.readline().rstrip("\n")
            if len(password) < 8:
                print(f"{where}: the password must be at least 8 characters", file=sys.stderr)
                return 1
        action = _ACTIONS[(args.command, args.action)]
        _with_registry(settings, lambda registry: action(registry, args, password))
    except ConfigError as exc:
        print(f"{where}: configuration error: {exc.message}", file=sys.stderr)
        return 1
    except TripwireError as exc:
        print(f"{where}: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    return 0


def _with_registry(settings: Any, action: Callable[[Any], Awaitable[None]]) -> None:
    """Run ``action(registry)`` against the engine's database (started if embedded)."""
    import trio

    from gateway.registry import Registry
    from persistence.bridge import open_bridge
    from persistence.db import open_database
    from persistence.embedded import resolve_dsn
    from persistence.migrator import migrate

    async def main(dsn: str) -> None:
        async with open_bridge() as bridge, open_database(bridge, dsn) as db:
            await migrate(db)  # a fresh database works as for `tripwire run`
            registry = Registry(db)
            await registry.load()
            await action(registry)

    dsn, server = resolve_dsn(
        {"DATABASE_URL": settings.database_url or ""}, Path(settings.state_dir) / "pg"
    )
    try:
        trio.run(main, dsn)
    finally:
        if server is not None:
            server.close()


def _user_id(registry: Any, username: str) -> str:
    from protocol.errors import NotFound

    user_id = registry.by_name.get(username.lower())
    if user_id is None:
        raise NotFound(f"no user named {username!r}")
    return str(user_id)


async def _user_add(registry: Any, args: argparse.Namespace, password: str | None) -> None:
    generated = password is None
    password = password or secrets.token_urlsafe(18)
    user = await registry.create_user(
        args.username, password, role="admin" if args.admin else "user"
    )
    print(f"user {user.username} added: id {user.id}, role {user.role}")
    if generated:
        print(f"password (shown once): {password}")


async def _user_disable(registry: Any, args: argparse.Namespace, _: str | None) -> None:
    user = await registry.set_disabled(_user_id(registry, args.username), not args.enable)
    state = "disabled" if user.disabled else "enabled"
    print(f"user {user.username} {state} (running engines follow at once)")


async def _device_add(registry: Any, args: argparse.Namespace, _: str | None) -> None:
    device, secret = await registry.register_device(
        _user_id(registry, args.username),
        args.name,
        account_login=args.account_login,
        broker=args.broker,
    )
    print(f"device {device.id} added for {args.username}")
    print(f"secret (shown once): {secret}")


async def _device_rotate(registry: Any, args: argparse.Namespace, _: str | None) -> None:
    secret = await registry.rotate_secret(args.device_id, args.grace_s)
    print(f"device {args.device_id}: new secret; the old ones expire in {args.grace_s:g} s")
    print(f"secret (shown once): {secret}")


async def _device_revoke(registry: Any, args: argparse.Namespace, _: str | None) -> None:
    registry.device(args.device_id)  # NotFound for an unknown id
    await registry.revoke(args.device_id)
    print(f"device {args.device_id} revoked (running engines follow at once)")


_ACTIONS: dict[tuple[str, str], Callable[..., Awaitable[None]]] = {
    ("user", "add"): _user_add,
    ("user", "disable"): _user_disable,
    ("device", "add"): _device_add,
    ("device", "rotate"): _device_rotate,
    ("device", "revoke"): _device_revoke,
}


def _strategy_add(strategy_id: str, current: str | None, parse: Any) -> int:
    from protocol.errors import ConfigError

    known = parse(current)
    if not strategy_id or any(c in strategy_id for c in "=;| ") or strategy_id in known:
        reason = "is taken" if strategy_id in known else "may not contain = ; | or spaces"
        raise ConfigError(f"strategy id {strategy_id!r} {reason}")
    secret = secrets.token_urlsafe(32)
    value = ";".join(filter(None, [current, f"{strategy_id}={secret}"]))
    print(f"strategy {strategy_id}: secret (shown once): {secret}")
    print("strategies are configuration: set this and restart the engine")
    print(f"TRIPWIRE_STRATEGIES='{value}'")
    return 0

"""A stand-in for the ``MetaTrader5`` package: the same functions, arguments, constants and
named-tuple results, served by the fake terminal process (:mod:`sim.mt5.terminal`).

``initialize(path)`` connects to the terminal whose Unix socket is ``path`` (or
``$MT5_SIM_ADDRESS``). As with the real package, a call the terminal cannot answer returns
None and ``last_error()`` says why. When the terminal asks for it (a test's
``kill_client_after``), the process dies by SIGKILL right after an ``order_send`` answer
arrives: the request executed, and nothing after ``order_send`` in the caller ever runs.
"""

from __future__ import annotations

import os
import signal
import threading
from multiprocessing.connection import Client, Connection
from typing import Any

from sim.mt5.constants import *  # noqa: F403 - the package exports its constants flat
from sim.mt5.types import (
    AccountInfo,
    OrderCheckResult,
    OrderSendResult,
    SymbolInfo,
    TerminalInfo,
    Tick,
    TradeDeal,
    TradeOrder,
    TradePosition,
    TradeRequest,
)

__version__ = "5.0.4620"
__author__ = "MetaQuotes Ltd. (fake: Tripwire's tests)"
__all__ = [
    "AccountInfo",
    "OrderCheckResult",
    "OrderSendResult",
    "SymbolInfo",
    "TerminalInfo",
    "Tick",
    "TradeDeal",
    "TradeOrder",
    "TradePosition",
    "TradeRequest",
]

_NO_IPC = (-10004, "No IPC connection")


class _Channel:
    """The IPC channel to the terminal and the last error, as the real package keeps them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conn: Connection | None = None
        self.error: tuple[int, str] = (1, "Success")


_channel = _Channel()


def _call(name: str, *args: Any, **kwargs: Any) -> Any:
    ch = _channel
    with ch.lock:
        if ch.conn is None:
            ch.error = _NO_IPC
            return None
        try:
            ch.conn.send((name, args, kwargs))
            result, ch.error, die = ch.conn.recv()
        except (EOFError, OSError):
            ch.conn, ch.error = None, _NO_IPC
            return None
    if die:
        os.kill(os.getpid(), signal.SIGKILL)
    return result


def initialize(path: str | None = None, **kwargs: Any) -> bool:
    """Attach to the terminal (``path``: its socket). ``login``/``password``/``server``/
    ``timeout``/``portable`` are accepted as the real function accepts them."""
    ch = _channel
    address = path or os.environ.get("MT5_SIM_ADDRESS")
    if not address:
        ch.error = (-10003, "IPC initialize failed, MetaTrader 5 x64 not found")
        return False
    with ch.lock:
        try:
            ch.conn = Client(address, family="AF_UNIX")
        except OSError:
            ch.conn, ch.error = None, (-10003, "IPC initialize failed, terminal not found")
            return False
    return bool(_call("initialize", **kwargs))


def login(login: int, password: str = "", server: str = "", timeout: int = 60000) -> bool:
    return bool(_call("login", login, password=password, server=server, timeout=timeout))


def shutdown() -> None:
    ch = _channel
    with ch.lock:
        if ch.conn is not None:
            ch.conn.close()
            ch.conn = None


def last_error() -> tuple[int, str]:
    return _channel.error


def version() -> Any:
    return _call("version")


def terminal_info() -> Any:
    return _call("terminal_info")


def account_info() -> Any:
    return _call("account_info")


def symbols_total() -> Any:
    return _call("symbols_total")


def symbols_get(group: str | None = None) -> Any:
    return _call("symbols_get", group)


def symbol_info(symbol: str) -> Any:
    return _call("symbol_info", symbol)


def symbol_info_tick(symbol: str) -> Any:
    return _call("symbol_info_tick", symbol)


def symbol_select(symbol: str, enable: bool = True) -> Any:
    return _call("symbol_select", symbol, enable)


def positions_total() -> Any:
    return _call("positions_total")


def positions_get(
    *, symbol: str | None = None, group: str | None = None, ticket: int | None = None
) -> Any:
    return _call("positions_get", symbol=symbol, group=group, ticket=ticket)


def orders_total() -> Any:
    return _call("orders_total")


def orders_get(
    *, symbol: str | None = None, group: str | None = None, ticket: int | None = None
) -> Any:
    return _call("orders_get", symbol=symbol, group=group, ticket=ticket)


def history_deals_total(date_from: Any, date_to: Any) -> Any:
    return _call("history_deals_total", date_from, date_to)


def history_deals_get(
    date_from: Any = None,
    date_to: Any = None,
    *,
    group: str | None = None,
    ticket: int | None = None,
    position: int | None = None,
) -> Any:
    """A period (``date_from``, ``date_to``: datetimes or epoch seconds), or ``ticket=`` (the
    deals of that ORDER), or ``position=`` (the deals of that position)."""
    if ticket is None and position is None and (date_from is None or date_to is None):
        _channel.error = (-2, "Invalid arguments")
        return None
    return _call(
        "history_deals_get", date_from, date_to, group=group, ticket=ticket, position=position
    )


def history_orders_total(date_from: Any, date_to: Any) -> Any:
    return _call("history_orders_total", date_from, date_to)


def history_orders_get(
    date_from: Any = None,
    date_to: Any = None,
    *,
    group: str | None = None,
    ticket: int | None = None,
    position: int | None = None,
) -> Any:
    return _call(
        "history_orders_get", date_from, date_to, group=group, ticket=ticket, position=position
    )


def order_check(request: dict[str, Any]) -> Any:
    return _call("order_check", dict(request))


def order_send(request: dict[str, Any]) -> Any:
    return _call("order_send", dict(request))

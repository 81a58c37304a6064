"""A test's hand on the fake terminal (:mod:`sim.mt5.terminal`): move the market, script
answers, break the IPC channel, kill the client after an ``order_send``, read the history."""

from __future__ import annotations

from multiprocessing.connection import Client
from typing import Any

__all__ = ["TerminalControl"]


class TerminalControl:
    def __init__(self, address: str) -> None:
        self._conn = Client(address, family="AF_UNIX")

    def close(self) -> None:
        self._conn.close()

    def _call(self, name: str, *args: Any) -> Any:
        self._conn.send((name, args, {}))
        result, _error, _die = self._conn.recv()
        return result

    def step(self, ticks: int = 1) -> dict[str, tuple[float, float]]:
        """Replay ``ticks`` more ticks of the day; the quotes (canonical symbol: bid, ask) now."""
        return dict(self._call("ctl_step", ticks))

    def quotes(self) -> dict[str, tuple[float, float]]:
        return dict(self._call("ctl_quotes"))

    def script(self, retcode: int, count: int = 1, action: int | None = None) -> None:
        """Answer the next ``count`` ``order_send`` calls (of ``action``, or any) with
        ``retcode``, executing nothing."""
        self._call("ctl_script", retcode, count, action)

    def ipc(self, up: bool) -> None:
        """Break (or restore) the client's channel: its calls return None, as with the
        terminal closed."""
        self._call("ctl_ipc", up)

    def broker_stops(self, on: bool) -> None:
        self._call("ctl_broker_stops", on)

    def kill_client_after(self, nth: int = 1, closes_only: bool = True) -> None:
        """SIGKILL the client right after the ``nth`` executed ``order_send`` (closes only:
        those naming a position) has been answered."""
        self._call("ctl_kill_after", nth, closes_only)

    def state(self) -> dict[str, Any]:
        """``positions``, ``deals``, ``orders`` (named tuples), ``balance``, ``kills``."""
        return dict(self._call("ctl_state"))

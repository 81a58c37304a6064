"""The terminal, through the ``MetaTrader5`` package: what it holds, and how commands execute.

``MetaTrader5`` is a thin client of the terminal process (an IPC channel to ``terminal64.exe``):
every call returns a named tuple, or ``None`` when the channel failed (``last_error()`` says
why). The module is imported by name at run time (:func:`load_module`), never at import time,
so the bridge imports on machines without it and tests substitute the fake in ``sim/mt5``.

The terminal's clock is the trade server's, often a few hours ahead of UTC; every time it gives
is converted to UTC milliseconds with :attr:`Terminal.utc_offset_ms` before it goes on the wire.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from protocol.common import Side
from protocol.device import (
    AccountState,
    Ack,
    CloseCommand,
    Command,
    Deal,
    DealsReport,
    EventKind,
    HelloBody,
    ModifyCommand,
    OpenCommand,
    OrderType,
    PartialCloseCommand,
    PositionEvent,
    PositionsSnapshot,
    SymbolSpec,
    TerminalPosition,
)
from protocol.errors import ConfigError, TripwireError
from tripwire_ea import retcodes as rc
from tripwire_ea.window import Entry

__all__ = ["Terminal", "TerminalUnavailable", "load_module"]

# MetaTrader 5's constants (the package's own names). Spelled out here so that the bridge needs
# nothing from the module but its functions; tests compare them with the fake's.
TRADE_ACTION_DEAL, TRADE_ACTION_PENDING, TRADE_ACTION_SLTP = 1, 5, 6
ORDER_TYPE_BUY, ORDER_TYPE_SELL = 0, 1
ORDER_TYPE_BUY_LIMIT, ORDER_TYPE_SELL_LIMIT, ORDER_TYPE_BUY_STOP, ORDER_TYPE_SELL_STOP = 2, 3, 4, 5
ORDER_FILLING_FOK, ORDER_FILLING_IOC, ORDER_FILLING_RETURN = 0, 1, 2
ORDER_TIME_GTC, ORDER_TIME_SPECIFIED = 0, 2
POSITION_TYPE_BUY = 0
DEAL_ENTRY_IN, DEAL_ENTRY_OUT, DEAL_ENTRY_INOUT, DEAL_ENTRY_OUT_BY = 0, 1, 2, 3
DEAL_TYPE_BUY, DEAL_TYPE_SELL = 0, 1
DEAL_REASON_CLIENT, DEAL_REASON_MOBILE, DEAL_REASON_WEB, DEAL_REASON_EXPERT = 0, 1, 2, 3
DEAL_REASON_SL, DEAL_REASON_TP, DEAL_REASON_SO = 4, 5, 6
SYMBOL_FILLING_FOK, SYMBOL_FILLING_IOC = 1, 2
SYMBOL_TRADE_EXECUTION_MARKET = 2
RES_E_NOT_FOUND = -4
_TRADE_MODES = {0: "disabled", 1: "long_only", 2: "short_only", 3: "close_only", 4: "full"}
_CLOSE_KINDS = {
    DEAL_REASON_SL: EventKind.CLOSED_SL,
    DEAL_REASON_TP: EventKind.CLOSED_TP,
    DEAL_REASON_SO: EventKind.CLOSED_STOPOUT,
    DEAL_REASON_CLIENT: EventKind.CLOSED_MANUAL,
    DEAL_REASON_MOBILE: EventKind.CLOSED_MANUAL,
    DEAL_REASON_WEB: EventKind.CLOSED_MANUAL,
}
_EXITS = (DEAL_ENTRY_OUT, DEAL_ENTRY_OUT_BY, DEAL_ENTRY_INOUT)
COMMENT_MAX = 31
"""MT5 keeps at most 31 characters of an order comment."""
DEFAULT_MAGIC = 20_260_101
DAY_MS = 86_400_000


class TerminalUnavailable(TripwireError):
    """The terminal did not answer (``MetaTrader5`` returned None): not running, not logged in,
    or the IPC channel broke. Whether a request in flight executed is unknown."""

    code = "terminal_unavailable"


def load_module(name: str = "MetaTrader5") -> Any:
    """Import the ``MetaTrader5`` package (or a stand-in of the same name).

    Raises:
        ConfigError: it is not installed.
    """
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(
            f"the {name} package is not installed: on Windows, `pip install MetaTrader5` "
            "(or `pip install 'tripwire[ea]'`) in the same Python as tripwire-ea"
        ) from None


@dataclass
class Terminal:
    """One terminal, as the bridge uses it. Every method blocks (IPC); call from one thread."""

    mt: Any
    path: str | None = None
    login: int | None = None
    password: str | None = None
    server: str | None = None
    magic: int = DEFAULT_MAGIC
    deviation_points: int = 20
    """Slippage allowed when a command says 0."""
    symbols: list[str] | None = None
    """The broker symbols to advertise; None: every symbol shown in Market Watch."""
    deals_lookback_ms: int = 7 * DAY_MS
    utc_offset_ms: int | None = None
    """Trade server time minus UTC; None: measured at connect from the newest tick."""
    clock: Callable[[], int] = field(default=lambda: time.time_ns() // 1_000_000)
    _offset: int = 0

    # -- the channel ---------------------------------------------------------------------------

    def connect(self) -> None:
        """``initialize`` (and ``login`` when one is configured).

        Raises:
            TerminalUnavailable: the terminal did not start or log in.
        """
        options: dict[str, Any] = {}
        if self.login is not None:
            options.update(login=self.login, password=self.password or "", server=self.server or "")
        args = (self.path,) if self.path else ()
        if not self.mt.initialize(*args, **options):
            raise TerminalUnavailable(f"initialize failed: {self.mt.last_error()}")
        self._offset = self.utc_offset_ms if self.utc_offset_ms is not None else self._measure()

    def shutdown(self) -> None:
        self.mt.shutdown()

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.mt, name)(*args, **kwargs)
        if result is None:
            raise TerminalUnavailable(f"{name} failed: {self.mt.last_error()}")
        return result

    def _measure(self) -> int:
        """The server's offset from UTC: the newest tick's time, to the nearest 15 minutes (time
        zones are whole quarters of an hour). 0 when no symbol has a tick."""
        ticks = [self.mt.symbol_info_tick(name) for name in self._symbol_names()]
        newest = max((t.time_msc for t in ticks if t is not None), default=None)
        if newest is None:
            return 0
        quarter = 15 * 60_000
        return round((int(newest) - self.clock()) / quarter) * quarter

    def utc(self, terminal_ms: int) -> int:
        return max(0, int(terminal_ms) - self._offset)

    # -- what the terminal says ---------------------------------------------------------------

    def _symbol_names(self) -> list[str]:
        if self.symbols is not None:
            return list(self.symbols)
        return [s.name for s in self._call("symbols_get") if s.visible]

    def hello(self, ea_build: str) -> HelloBody:
        account = self._call("account_info")
        specs = []
        for name in self._symbol_names():
            info = self._symbol_info(name)
            if info is not None:
                specs.append(_spec(info))
        return HelloBody(
            ea_build=ea_build,
            platform="mt5",
            account_login=str(account.login),
            broker=account.company[:64],
            server_name=account.server[:64],
            terminal_time_ms=self.clock() + self._offset,
            currency=account.currency[:64],
            symbols=specs,
        )

    def positions(self) -> list[TerminalPosition]:
        return [self._position(p) for p in self._call("positions_get")]

    def snapshot(self) -> PositionsSnapshot:
        return PositionsSnapshot(time_ms=self.clock(), positions=self.positions())

    def _position(self, p: Any) -> TerminalPosition:
        deals = self._call("history_deals_get", position=p.ticket)
        return TerminalPosition(
            ticket=p.ticket,
            symbol=p.symbol,
            side=Side.BUY if p.type == POSITION_TYPE_BUY else Side.SELL,
            volume=p.volume,
            open_price=p.price_open,
            open_time_ms=self.utc(p.time_msc),
            sl=p.sl or None,
            tp=p.tp or None,
            comment=p.comment[:64],
            magic=max(0, p.magic),
            profit=p.profit,
            commission=round(sum(d.commission for d in deals), 2),
            swap=p.swap,
        )

    def deals(self) -> list[DealsReport]:
        """The last exit deal of every position closed in the lookback period, in messages of at
        most 1,000: sent after every snapshot, so a close whose ack was lost keeps its fill."""
        now = self.clock() + self._offset
        history = self._call(
            "history_deals_get",
            (now - self.deals_lookback_ms) // 1000,
            (now + DAY_MS) // 1000,
        )
        open_tickets = {p.ticket for p in self._call("positions_get")}
        by_position: dict[int, list[Any]] = {}
        for d in history:
            if d.position_id and d.position_id not in open_tickets:
                by_position.setdefault(d.position_id, []).append(d)
        closing = []
        for ticket, deals in by_position.items():
            exits = [d for d in deals if d.entry in _EXITS]
            if exits:
                closing.append(self._deal(ticket, max(exits, key=lambda d: d.time_msc), deals))
        closing.sort(key=lambda d: d.time_ms)
        now_utc = self.clock()
        reports = [
            DealsReport(time_ms=now_utc, deals=closing[i : i + 1000])
            for i in range(0, len(closing), 1000)
        ]
        return reports or [DealsReport(time_ms=now_utc)]

    def _deal(self, position: int, exit_deal: Any, deals: Iterable[Any]) -> Deal:
        deals = list(deals)
        return Deal(
            ticket=exit_deal.ticket,
            position=position,
            price=exit_deal.price,
            time_ms=self.utc(exit_deal.time_msc),
            volume=exit_deal.volume,
            profit=exit_deal.profit,
            commission=round(sum(d.commission for d in deals), 2),
            swap=round(sum(d.swap for d in deals), 2),
        )

    def account(self) -> AccountState:
        a = self._call("account_info")
        return AccountState(
            balance=a.balance,
            equity=a.equity,
            margin=a.margin,
            free_margin=a.margin_free,
            currency=a.currency[:64],
            leverage=a.leverage,
            time_ms=self.clock(),
        )

    def closed_event(self, known: TerminalPosition) -> PositionEvent | None:
        """The event for a position that left the terminal without a command of ours: the
        broker's SL or TP, a person, a stop-out. None if its closing deal is not (yet) there."""
        deals = list(self._call("history_deals_get", position=known.ticket))
        exits = [d for d in deals if d.entry in _EXITS]
        if not exits:
            return None
        last = max(exits, key=lambda d: d.time_msc)
        return PositionEvent(
            kind=_CLOSE_KINDS.get(last.reason, EventKind.CLOSED_OTHER),
            ticket=known.ticket,
            symbol=known.symbol,
            side=known.side,
            volume=sum(d.volume for d in exits),
            price=last.price,
            time_ms=self.utc(last.time_msc),
            sl=known.sl,
            tp=known.tp,
            comment=known.comment,
            profit=round(sum(d.profit for d in exits), 2),
            commission=round(sum(d.commission for d in deals), 2),
            swap=round(sum(d.swap for d in deals), 2),
        )

    def opened_event(self, p: TerminalPosition, kind: EventKind) -> PositionEvent:
        return PositionEvent(
            kind=kind,
            ticket=p.ticket,
            symbol=p.symbol,
            side=p.side,
            volume=p.volume,
            price=p.open_price,
            time_ms=p.open_time_ms,
            sl=p.sl,
            tp=p.tp,
            comment=p.comment,
            commission=p.commission,
            swap=p.swap,
        )

    # -- commands ------------------------------------------------------------------------------

    def execute(self, command: Command) -> Ack:
        """Run one verified command through ``order_send`` and answer it with the real fill.

        Raises:
            TerminalUnavailable: the channel failed; the request may or may not have reached
                the broker (the caller leaves the command *started* and resolves it later).
        """
        if isinstance(command, OpenCommand):
            return self._open(command)
        position = self._held(command.ticket)
        if position is None:
            return _refused(
                command.command_id, rc.TRADE_RETCODE_POSITION_CLOSED, "no such position"
            )
        if position.symbol != command.symbol:
            return _refused(
                command.command_id,
                rc.EA_REJECTED,
                f"ticket {command.ticket} is {position.symbol}, not {command.symbol}",
            )
        if isinstance(command, ModifyCommand):
            return self._modify(command, position)
        return self._close(command, position)

    def _held(self, ticket: int) -> Any | None:
        found = self._call("positions_get", ticket=ticket)
        return found[0] if found else None

    def _filling(self, info: Any) -> int:
        if info.filling_mode & SYMBOL_FILLING_IOC:
            return ORDER_FILLING_IOC
        if info.filling_mode & SYMBOL_FILLING_FOK:
            return ORDER_FILLING_FOK
        return ORDER_FILLING_RETURN

    def _symbol_info(self, name: str) -> Any | None:
        """``symbol_info``, None when the terminal has no such symbol.

        Raises:
            TerminalUnavailable: the call failed for another reason (a broken channel must not
                be mistaken for an unknown symbol: the command would be refused for good).
        """
        info = self.mt.symbol_info(name)
        if info is None and self.mt.last_error()[0] != RES_E_NOT_FOUND:
            raise TerminalUnavailable(f"symbol_info failed: {self.mt.last_error()}")
        return info

    def _open(self, c: OpenCommand) -> Ack:
        info = self._symbol_info(c.symbol)
        if info is None:
            return _refused(c.command_id, rc.EA_REJECTED, f"the terminal has no {c.symbol}")
        buy = c.side is Side.BUY
        request: dict[str, Any] = {
            "symbol": c.symbol,
            "volume": float(c.volume),
            "sl": float(c.sl or 0.0),
            "tp": float(c.tp or 0.0),
            "deviation": c.deviation_points or self.deviation_points,
            "magic": self.magic,
            "comment": c.client_id[:COMMENT_MAX],
            "type_filling": self._filling(info),
            "type_time": ORDER_TIME_GTC,
        }
        if c.order_type is OrderType.MARKET:
            tick = self._call("symbol_info_tick", c.symbol)
            request.update(
                action=TRADE_ACTION_DEAL,
                type=ORDER_TYPE_BUY if buy else ORDER_TYPE_SELL,
                price=tick.ask if buy else tick.bid,
            )
        else:
            limit = c.order_type is OrderType.LIMIT
            kinds = (ORDER_TYPE_BUY_LIMIT, ORDER_TYPE_SELL_LIMIT, ORDER_TYPE_BUY_STOP,
                     ORDER_TYPE_SELL_STOP)  # fmt: skip
            request.update(
                action=TRADE_ACTION_PENDING,
                type=kinds[(0 if limit else 2) + (0 if buy else 1)],
                price=float(c.price or 0.0),
            )
            if c.expires_ms is not None:
                request.update(
                    type_time=ORDER_TIME_SPECIFIED, expiration=(c.expires_ms + self._offset) // 1000
                )
        result = self._call("order_send", request)
        return self._answer(c.command_id, result, position=None)

    def _close(self, c: CloseCommand | PartialCloseCommand, p: Any) -> Ack:
        tick = self._call("symbol_info_tick", p.symbol)
        info = self._call("symbol_info", p.symbol)
        buy = p.type == POSITION_TYPE_BUY
        volume = p.volume if isinstance(c, CloseCommand) else float(c.volume)
        request = {
            "action": TRADE_ACTION_DEAL,
            "position": p.ticket,
            "symbol": p.symbol,
            "volume": volume,
            "type": ORDER_TYPE_SELL if buy else ORDER_TYPE_BUY,
            "price": tick.bid if buy else tick.ask,
            "deviation": c.deviation_points or self.deviation_points,
            "magic": self.magic,
            # The command id in the comment is how a restarted bridge finds its own deal.
            "comment": c.command_id[:COMMENT_MAX],
            "type_filling": self._filling(info),
            "type_time": ORDER_TIME_GTC,
        }
        result = self._call("order_send", request)
        return self._answer(c.command_id, result, position=p.ticket)

    def _modify(self, c: ModifyCommand, p: Any) -> Ack:
        request = {
            "action": TRADE_ACTION_SLTP,
            "position": p.ticket,
            "symbol": p.symbol,
            "sl": float(c.sl or 0.0),
            "tp": float(c.tp or 0.0),
            "magic": self.magic,
        }
        result = self._call("order_send", request)
        code = rc.outcome(result.retcode)
        return Ack(
            command_id=c.command_id,
            retcode=result.retcode,
            result_text=str(result.comment)[:1024],
            category=code.outcome.value,
            ticket=p.ticket,
            executed=code.executed,
        )

    def _answer(self, command_id: str, result: Any, position: int | None) -> Ack:
        code = rc.outcome(result.retcode)
        ack = Ack(
            command_id=command_id,
            retcode=result.retcode,
            result_text=str(result.comment)[:1024],
            category=code.outcome.value,
            ticket=position,
            executed=code.executed,
        )
        if result.retcode == rc.TRADE_RETCODE_PLACED:
            return _replace(ack, ticket=result.order or None)
        if code.outcome is not rc.Outcome.DONE or not result.deal:
            return ack
        deal = self._find_deal(result.order, result.deal)
        if deal is None:  # the history lags the answer: the result's own figures, then
            return _replace(
                ack,
                ticket=position or result.order or None,
                fill_price=result.price or None,
                fill_volume=result.volume or None,
                fill_time_ms=self.clock(),
            )
        return self._filled(ack, deal)

    def _find_deal(self, order: int, deal_ticket: int) -> Any | None:
        # The deal reaches the terminal's history a moment after order_send answers.
        for _ in range(20):
            for d in self._call("history_deals_get", ticket=order):
                if d.ticket == deal_ticket:
                    return d
            time.sleep(0.05)
        return None

    def _filled(self, ack: Ack, deal: Any) -> Ack:
        deals = list(self._call("history_deals_get", position=deal.position_id))
        return _replace(
            ack,
            ticket=deal.position_id,
            fill_price=deal.price,
            fill_volume=deal.volume,
            fill_time_ms=self.utc(deal.time_msc),
            commission=round(sum(d.commission for d in deals), 2),
            swap=round(sum(d.swap for d in deals), 2),
        )

    # -- after a crash -------------------------------------------------------------------------

    def resolve(self, entry: Entry, command: Command | None = None) -> Ack:
        """The answer to a command the bridge started and never answered (it died inside
        ``order_send``), read from the terminal instead of sending the request again.

        A deal carrying the command's comment is its fill; with no trace of the request, the
        answer is ``TIMEOUT`` with ``executed: false`` (proof it did not run), which the server
        retries under a new id. A modify only sets levels, so it is simply run (again).
        """
        cid = entry.command_id
        if entry.kind == "modify" and isinstance(command, ModifyCommand):
            return self.execute(command)
        now = self.clock() + self._offset
        if entry.kind == "open" and entry.client_id:
            comment = entry.client_id[:COMMENT_MAX]
            history = self._call(
                "history_deals_get",
                (entry.started_ms + self._offset) // 1000 - 60,
                now // 1000 + 60,
            )
            for d in history:
                if d.comment.startswith(comment) and d.entry == DEAL_ENTRY_IN:
                    ack = Ack(command_id=cid, retcode=rc.TRADE_RETCODE_DONE, result_text="done",
                              category=rc.Outcome.DONE.value, executed=True)  # fmt: skip
                    return self._filled(ack, d)
            for o in self._call("orders_get"):
                if o.comment.startswith(comment):
                    return Ack(command_id=cid, retcode=rc.TRADE_RETCODE_PLACED,
                               result_text="placed", category=rc.Outcome.DONE.value,
                               ticket=o.ticket, executed=True)  # fmt: skip
        elif entry.ticket is not None:
            comment = cid[:COMMENT_MAX]
            deals = list(self._call("history_deals_get", position=entry.ticket))
            mine = [d for d in deals if d.entry in _EXITS and d.comment.startswith(comment)]
            if mine:
                ack = Ack(command_id=cid, retcode=rc.TRADE_RETCODE_DONE, result_text="done",
                          category=rc.Outcome.DONE.value, executed=True)  # fmt: skip
                return self._filled(ack, mine[-1])
            if self._held(entry.ticket) is None:
                return _refused(cid, rc.TRADE_RETCODE_POSITION_CLOSED, "closed by another order")
        return Ack(
            command_id=cid,
            retcode=rc.TRADE_RETCODE_TIMEOUT,
            result_text="the bridge stopped inside order_send; the terminal has no trace of it",
            category=rc.Outcome.UNKNOWN.value,
            executed=False,
        )


def _refused(command_id: str, retcode: int, text: str) -> Ack:
    code = rc.outcome(retcode)
    return Ack(
        command_id=command_id,
        retcode=retcode,
        result_text=text,
        category=code.outcome.value,
        executed=False,
    )


def _replace(ack: Ack, **changes: Any) -> Ack:
    return msgspec.structs.replace(ack, **changes)


def _spec(info: Any) -> SymbolSpec:
    modes: list[Any] = []
    if info.filling_mode & SYMBOL_FILLING_FOK:
        modes.append("fok")
    if info.filling_mode & SYMBOL_FILLING_IOC:
        modes.append("ioc")
    if info.trade_exemode != SYMBOL_TRADE_EXECUTION_MARKET:
        modes.append("return")
    return SymbolSpec(
        name=info.name,
        digits=info.digits,
        contract_size=info.trade_contract_size or 1.0,
        volume_min=info.volume_min,
        volume_step=info.volume_step,
        volume_max=info.volume_max,
        stops_level=info.trade_stops_level,
        freeze_level=info.trade_freeze_level,
        filling_modes=modes,
        trade_mode=_TRADE_MODES.get(info.trade_mode, "disabled"),  # type: ignore[arg-type]
    )

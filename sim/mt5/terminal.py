"""The fake MetaTrader 5 terminal: a process holding an account at a simulated broker.

``python -m sim.mt5.terminal --address /tmp/t.sock`` listens on a Unix socket. Clients are the
fake ``MetaTrader5`` package (the bridge's calls: ``positions_get``, ``order_send``...) and
:class:`sim.mt5.control.TerminalControl` (a test steering the world: ``ctl_*`` calls). The
broker's market is the repository's real tick data (``data/``), replayed one step at a time by
``ctl_step``; orders fill at the replayed bid/ask of that moment. The account is a hedging
account with a commission per lot and side, like a raw-spread one.

What a test can make the terminal do: answer the next ``order_send`` calls with any retcode
(a requote, a reject, a timeout that did execute...), lose the IPC channel (every client call
returns None, as when the terminal is closed), run or not the broker's own SL/TP, and kill the
client process right after an ``order_send`` it executed (SIGKILL, before the client can act on
the answer).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, Listener
from pathlib import Path
from typing import Any

from sim.mt5 import constants as C  # noqa: N812 - the package's own constant names
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

__all__ = ["FakeTerminal", "main"]

DATA = Path(__file__).resolve().parents[2] / "data"
DATA_FILES = {
    "XAUUSD": ("xauusd_2014-05-02_oanda_ticks.csv.gz", 3, 100.0),
    "EURUSD": ("eurusd_2014-05-08_oanda_ticks.csv.gz", 5, 100_000.0),
}
NO_IPC = (C.RES_E_INTERNAL_FAIL_CONNECT, "No IPC connection")
OK = (C.RES_S_OK, "Success")
CLIENT_CALLS = frozenset({
    "initialize", "login", "shutdown", "version", "terminal_info", "account_info",
    "symbols_total", "symbols_get", "symbol_info", "symbol_info_tick", "symbol_select",
    "positions_total", "positions_get", "orders_total", "orders_get", "history_deals_total",
    "history_deals_get", "history_orders_total", "history_orders_get", "order_send",
    "order_check",
})  # fmt: skip


def _load(name: str) -> list[tuple[float, float]]:
    with gzip.open(DATA / name, "rt") as fh:
        rows = csv.reader(fh)
        next(rows)
        return [(float(bid), float(ask)) for _, bid, ask in rows]


@dataclass
class _Market:
    canonical: str
    digits: int
    contract_size: float
    ticks: list[tuple[float, float]]
    cursor: int = 0

    @property
    def quote(self) -> tuple[float, float]:
        return self.ticks[min(self.cursor, len(self.ticks) - 1)]


@dataclass
class _Position:
    ticket: int
    symbol: str
    buy: bool
    volume: float
    price_open: float
    time_msc: int
    sl: float
    tp: float
    magic: int
    comment: str
    reason: int
    swap: float = 0.0


@dataclass
class FakeTerminal:
    """The terminal's state. Every method runs under :attr:`lock` (several clients share it)."""

    suffix: str = ""
    symbols: tuple[str, ...] = ("XAUUSD",)
    broker_stops: bool = True
    balance: float = 10_000.0
    commission_per_lot_side: float = 3.5
    account_login: int = 5_012_345
    start_tick: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.markets: dict[str, _Market] = {}
        for s in self.symbols:
            name, digits, contract = DATA_FILES[s]
            self.markets[s + self.suffix] = _Market(s, digits, contract, _load(name),
                                                    self.start_tick)  # fmt: skip
        self.positions: dict[int, _Position] = {}
        self.orders: dict[int, TradeOrder] = {}  # pending
        self.history_orders: list[TradeOrder] = []
        self.deals: list[TradeDeal] = []
        self._tickets = 250_000_000
        self._deal_tickets = 380_000_000
        self._request_id = 0
        self.scripted: list[tuple[int, int | None]] = []  # (retcode, action or None)
        self.ipc_down = False
        self.kill_after: tuple[int, bool] | None = None  # (nth matching send, closes only)
        self._sends = 0
        self.kills = 0

    # -- time and prices -----------------------------------------------------------------------

    @staticmethod
    def now_ms() -> int:
        return time.time_ns() // 1_000_000

    def _market(self, symbol: str) -> _Market | None:
        return self.markets.get(symbol)

    def _point(self, m: _Market) -> float:
        return float(10.0**-m.digits)

    # -- the client API ------------------------------------------------------------------------

    def initialize(self, *args: Any, **kwargs: Any) -> bool:
        return True

    def login(self, *args: Any, **kwargs: Any) -> bool:
        return True

    def shutdown(self) -> None:
        return None

    def version(self) -> tuple[int, int, str]:
        return (500, 4620, "20 Sep 2024")

    def terminal_info(self) -> TerminalInfo:
        flags = (False, False, True, False, True, False, False, False, False, False)
        return TerminalInfo(*flags, 4620, 100000, 0, 20, 0.0, 0.0, "Tripwire Sim Broker",
                            "MetaTrader 5 (fake)", "English", "/f", "/f", "/f")  # fmt: skip

    def _floating(self, p: _Position) -> float:
        m = self.markets[p.symbol]
        bid, ask = m.quote
        close = bid if p.buy else ask
        return round((close - p.price_open) * (1 if p.buy else -1) * p.volume * m.contract_size, 2)

    def account_info(self) -> AccountInfo:
        profit = sum(self._floating(p) for p in self.positions.values())
        margin = sum(
            p.volume * self.markets[p.symbol].contract_size * p.price_open / 500
            for p in self.positions.values()
        )
        equity = round(self.balance + profit, 2)
        return AccountInfo(
            login=self.account_login, trade_mode=C.ACCOUNT_TRADE_MODE_DEMO, leverage=500,
            limit_orders=200, margin_so_mode=0, trade_allowed=True, trade_expert=True,
            margin_mode=C.ACCOUNT_MARGIN_MODE_RETAIL_HEDGING, currency_digits=2, fifo_close=False,
            balance=round(self.balance, 2), credit=0.0, profit=round(profit, 2), equity=equity,
            margin=round(margin, 2), margin_free=round(equity - margin, 2),
            margin_level=round(100 * equity / margin, 2) if margin else 0.0, margin_so_call=50.0,
            margin_so_so=30.0, margin_initial=0.0, margin_maintenance=0.0, assets=0.0,
            liabilities=0.0, commission_blocked=0.0, name="Tripwire Test",
            server="TripwireSim-Demo",
            currency="USD", company="Tripwire Sim Broker",
        )  # fmt: skip

    def _symbol_info(self, name: str, m: _Market) -> SymbolInfo:
        bid, ask = m.quote
        point = self._point(m)
        return SymbolInfo(
            select=True, visible=True, time=self.now_ms() // 1000, digits=m.digits,
            spread=round((ask - bid) / point), spread_float=True,
            trade_calc_mode=2, trade_mode=C.SYMBOL_TRADE_MODE_FULL,
            trade_exemode=C.SYMBOL_TRADE_EXECUTION_MARKET,
            filling_mode=C.SYMBOL_FILLING_FOK | C.SYMBOL_FILLING_IOC, order_mode=127,
            bid=bid, ask=ask, point=point, trade_tick_size=point,
            trade_tick_value=point * m.contract_size, trade_contract_size=m.contract_size,
            volume_min=0.01, volume_max=100.0, volume_step=0.01, currency_base=m.canonical[:3],
            currency_profit="USD", currency_margin="USD", description=m.canonical, name=name,
            path=f"Sim\\{name}",
        )  # fmt: skip

    def symbols_total(self) -> int:
        return len(self.markets)

    def symbols_get(self, group: str | None = None) -> tuple[SymbolInfo, ...]:
        return tuple(self._symbol_info(n, m) for n, m in self.markets.items())

    def symbol_info(self, symbol: str) -> SymbolInfo | None:
        m = self._market(symbol)
        return None if m is None else self._symbol_info(symbol, m)

    def symbol_select(self, symbol: str, enable: bool = True) -> bool:
        return symbol in self.markets

    def symbol_info_tick(self, symbol: str) -> Tick | None:
        m = self._market(symbol)
        if m is None:
            return None
        bid, ask = m.quote
        now = self.now_ms()
        return Tick(now // 1000, bid, ask, 0.0, 0, now, 6, 0.0)

    def _view(self, p: _Position) -> TradePosition:
        m = self.markets[p.symbol]
        bid, ask = m.quote
        return TradePosition(
            ticket=p.ticket, time=p.time_msc // 1000, time_msc=p.time_msc,
            time_update=p.time_msc // 1000, time_update_msc=p.time_msc,
            type=C.POSITION_TYPE_BUY if p.buy else C.POSITION_TYPE_SELL, magic=p.magic,
            identifier=p.ticket, reason=p.reason, volume=round(p.volume, 2),
            price_open=p.price_open, sl=p.sl, tp=p.tp, price_current=bid if p.buy else ask,
            swap=p.swap, profit=self._floating(p), symbol=p.symbol, comment=p.comment,
            external_id="",
        )  # fmt: skip

    def positions_total(self) -> int:
        return len(self.positions)

    def positions_get(
        self, symbol: str | None = None, group: str | None = None, ticket: int | None = None
    ) -> tuple[TradePosition, ...]:
        return tuple(
            self._view(p)
            for p in self.positions.values()
            if (symbol is None or p.symbol == symbol) and (ticket is None or p.ticket == ticket)
        )

    def orders_total(self) -> int:
        return len(self.orders)

    def orders_get(
        self, symbol: str | None = None, group: str | None = None, ticket: int | None = None
    ) -> tuple[TradeOrder, ...]:
        return tuple(
            o
            for o in self.orders.values()
            if (symbol is None or o.symbol == symbol) and (ticket is None or o.ticket == ticket)
        )

    @staticmethod
    def _seconds(value: Any) -> float:
        return value.timestamp() if hasattr(value, "timestamp") else float(value)

    def history_deals_get(
        self,
        date_from: Any = None,
        date_to: Any = None,
        group: str | None = None,
        ticket: int | None = None,
        position: int | None = None,
    ) -> tuple[TradeDeal, ...]:
        """As the real one: a period, or ``ticket=`` (the ORDER's ticket), or ``position=``."""
        if ticket is not None:
            return tuple(d for d in self.deals if d.order == ticket)
        if position is not None:
            return tuple(d for d in self.deals if d.position_id == position)
        lo, hi = self._seconds(date_from), self._seconds(date_to)
        return tuple(d for d in self.deals if lo <= d.time <= hi)

    def history_deals_total(self, date_from: Any, date_to: Any) -> int:
        return len(self.history_deals_get(date_from, date_to))

    def history_orders_get(
        self,
        date_from: Any = None,
        date_to: Any = None,
        group: str | None = None,
        ticket: int | None = None,
        position: int | None = None,
    ) -> tuple[TradeOrder, ...]:
        if ticket is not None:
            return tuple(o for o in self.history_orders if o.ticket == ticket)
        if position is not None:
            return tuple(o for o in self.history_orders if o.position_id == position)
        lo, hi = self._seconds(date_from), self._seconds(date_to)
        return tuple(o for o in self.history_orders if lo <= o.time_setup <= hi)

    def history_orders_total(self, date_from: Any, date_to: Any) -> int:
        return len(self.history_orders_get(date_from, date_to))

    def order_check(self, request: dict[str, Any]) -> OrderCheckResult:
        a = self.account_info()
        return OrderCheckResult(0, a.balance, a.equity, a.profit, a.margin, a.margin_free,
                                a.margin_level, "Done", TradeRequest(**request))  # fmt: skip

    # -- order_send ----------------------------------------------------------------------------

    def order_send(self, request: dict[str, Any]) -> OrderSendResult:
        req = TradeRequest(**request)
        self._request_id += 1
        scripted = next(
            (i for i, (_, action) in enumerate(self.scripted) if action in (None, req.action)),
            None,
        )
        if scripted is not None:
            retcode, _ = self.scripted.pop(scripted)
            return self._result(req, retcode, comment=f"scripted {retcode}")
        if req.action == C.TRADE_ACTION_SLTP:
            return self._sltp(req)
        if req.action == C.TRADE_ACTION_PENDING:
            return self._pending(req)
        if req.action != C.TRADE_ACTION_DEAL:
            return self._result(req, C.TRADE_RETCODE_INVALID, comment="Invalid request")
        m = self._market(req.symbol)
        if m is None:
            return self._result(req, C.TRADE_RETCODE_INVALID, comment="Unknown symbol")
        if req.volume < 0.01 or abs(round(req.volume / 0.01) * 0.01 - req.volume) > 1e-9:
            return self._result(req, C.TRADE_RETCODE_INVALID_VOLUME, comment="Invalid volume")
        if req.type_filling not in (C.ORDER_FILLING_FOK, C.ORDER_FILLING_IOC):
            return self._result(req, C.TRADE_RETCODE_INVALID_FILL, comment="Unsupported filling")
        if req.position:
            return self._close(req, m)
        return self._open(req, m)

    def _result(self, req: TradeRequest, retcode: int, *, deal: int = 0, order: int = 0,
                volume: float = 0.0, price: float = 0.0,
                comment: str = "") -> OrderSendResult:  # fmt: skip
        m = self._market(req.symbol)
        bid, ask = m.quote if m else (0.0, 0.0)
        return OrderSendResult(retcode, deal, order, volume, price, bid, ask, comment,
                               self._request_id, 0, req)  # fmt: skip

    def _valid_stops(self, buy: bool, price: float, sl: float, tp: float) -> bool:
        if buy:
            return (not sl or sl < price) and (not tp or tp > price)
        return (not sl or sl > price) and (not tp or tp < price)

    def _book(self, req: TradeRequest, m: _Market, *, buy: bool, volume: float, price: float,
              entry: int, position: int, reason: int, comment: str) -> TradeDeal:  # fmt: skip
        now = self.now_ms()
        self._tickets += 1
        order = self._tickets
        self._deal_tickets += 1
        commission = -round(self.commission_per_lot_side * volume, 2)
        profit = 0.0
        if entry == C.DEAL_ENTRY_OUT:
            p = self.positions[position]
            profit = round((price - p.price_open) * (1 if p.buy else -1) * volume
                           * m.contract_size, 2)  # fmt: skip
        deal = TradeDeal(
            ticket=self._deal_tickets, order=order, time=now // 1000, time_msc=now,
            type=C.DEAL_TYPE_BUY if buy else C.DEAL_TYPE_SELL, entry=entry, magic=req.magic,
            position_id=position or order, reason=reason, volume=volume, price=price,
            commission=commission, swap=0.0, profit=profit, fee=0.0, symbol=req.symbol,
            comment=comment, external_id="",
        )  # fmt: skip
        self.deals.append(deal)
        self.history_orders.append(TradeOrder(
            ticket=order, time_setup=now // 1000, time_setup_msc=now, time_done=now // 1000,
            time_done_msc=now, time_expiration=0,
            type=C.ORDER_TYPE_BUY if buy else C.ORDER_TYPE_SELL, type_time=C.ORDER_TIME_GTC,
            type_filling=req.type_filling, state=C.ORDER_STATE_FILLED, magic=req.magic,
            position_id=deal.position_id, position_by_id=0, reason=reason, volume_initial=volume,
            volume_current=0.0, price_open=price, sl=req.sl, tp=req.tp, price_current=price,
            price_stoplimit=0.0, symbol=req.symbol, comment=comment, external_id="",
        ))  # fmt: skip
        self.balance += profit + commission
        return deal

    def _open(self, req: TradeRequest, m: _Market) -> OrderSendResult:
        buy = req.type == C.ORDER_TYPE_BUY
        if req.type not in (C.ORDER_TYPE_BUY, C.ORDER_TYPE_SELL):
            return self._result(req, C.TRADE_RETCODE_INVALID_ORDER, comment="Invalid order type")
        bid, ask = m.quote
        price = ask if buy else bid
        if not self._valid_stops(buy, bid if buy else ask, req.sl, req.tp):
            return self._result(req, C.TRADE_RETCODE_INVALID_STOPS, comment="Invalid stops")
        deal = self._book(req, m, buy=buy, volume=req.volume, price=price, entry=C.DEAL_ENTRY_IN,
                          position=0, reason=C.DEAL_REASON_EXPERT, comment=req.comment)  # fmt: skip
        self.positions[deal.order] = _Position(
            deal.order,
            req.symbol,
            buy,
            req.volume,
            price,
            deal.time_msc,
            req.sl,
            req.tp,
            req.magic,
            req.comment,
            C.POSITION_REASON_EXPERT,
        )
        return self._result(req, C.TRADE_RETCODE_DONE, deal=deal.ticket, order=deal.order,
                            volume=req.volume, price=price, comment="Request executed")  # fmt: skip

    def _close(self, req: TradeRequest, m: _Market) -> OrderSendResult:
        p = self.positions.get(req.position)
        if p is None or p.symbol != req.symbol:
            return self._result(req, C.TRADE_RETCODE_POSITION_CLOSED, comment="Position closed")
        if req.type != (C.ORDER_TYPE_SELL if p.buy else C.ORDER_TYPE_BUY):
            return self._result(req, C.TRADE_RETCODE_INVALID, comment="Invalid order type")
        if req.volume > p.volume + 1e-9:
            return self._result(req, C.TRADE_RETCODE_INVALID_CLOSE_VOLUME,
                                comment="Invalid close volume")  # fmt: skip
        deal = self._exit(p, req, req.volume, C.DEAL_REASON_EXPERT, req.comment)
        return self._result(req, C.TRADE_RETCODE_DONE, deal=deal.ticket, order=deal.order,
                            volume=req.volume, price=deal.price,
                            comment="Request executed")  # fmt: skip

    def _exit(self, p: _Position, req: TradeRequest, volume: float, reason: int,
              comment: str) -> TradeDeal:  # fmt: skip
        m = self.markets[p.symbol]
        bid, ask = m.quote
        deal = self._book(req, m, buy=not p.buy, volume=volume, price=bid if p.buy else ask,
                          entry=C.DEAL_ENTRY_OUT, position=p.ticket, reason=reason,
                          comment=comment)  # fmt: skip
        p.volume = round(p.volume - volume, 2)
        if p.volume <= 1e-9:
            del self.positions[p.ticket]
        return deal

    def _sltp(self, req: TradeRequest) -> OrderSendResult:
        p = self.positions.get(req.position)
        if p is None:
            return self._result(req, C.TRADE_RETCODE_POSITION_CLOSED, comment="Position closed")
        if (p.sl, p.tp) == (req.sl, req.tp):
            return self._result(req, C.TRADE_RETCODE_NO_CHANGES, comment="No changes")
        bid, ask = self.markets[p.symbol].quote
        if not self._valid_stops(p.buy, bid if p.buy else ask, req.sl, req.tp):
            return self._result(req, C.TRADE_RETCODE_INVALID_STOPS, comment="Invalid stops")
        p.sl, p.tp = req.sl, req.tp
        return self._result(req, C.TRADE_RETCODE_DONE, comment="Request executed")

    def _pending(self, req: TradeRequest) -> OrderSendResult:
        if self._market(req.symbol) is None:
            return self._result(req, C.TRADE_RETCODE_INVALID, comment="Unknown symbol")
        self._tickets += 1
        now = self.now_ms()
        order = TradeOrder(
            ticket=self._tickets, time_setup=now // 1000, time_setup_msc=now, time_done=0,
            time_done_msc=0, time_expiration=req.expiration, type=req.type,
            type_time=req.type_time, type_filling=req.type_filling, state=C.ORDER_STATE_PLACED,
            magic=req.magic, position_id=0, position_by_id=0, reason=C.ORDER_REASON_EXPERT,
            volume_initial=req.volume, volume_current=req.volume, price_open=req.price, sl=req.sl,
            tp=req.tp, price_current=req.price, price_stoplimit=0.0, symbol=req.symbol,
            comment=req.comment, external_id="",
        )  # fmt: skip
        self.orders[order.ticket] = order
        return self._result(req, C.TRADE_RETCODE_PLACED, order=order.ticket,
                            volume=req.volume, price=req.price,
                            comment="Request executed")  # fmt: skip

    # -- the market moves ----------------------------------------------------------------------

    def step(self, n: int = 1) -> dict[str, tuple[float, float]]:
        """Advance every market ``n`` ticks; fill pending orders and run the broker's SL/TP."""
        for m in self.markets.values():
            m.cursor = min(m.cursor + n, len(m.ticks) - 1)
        self._fill_pending()
        if self.broker_stops:
            self._run_stops()
        return {m.canonical: m.quote for m in self.markets.values()}

    def _fill_pending(self) -> None:
        for order in list(self.orders.values()):
            m = self.markets[order.symbol]
            bid, ask = m.quote
            buy = order.type in (C.ORDER_TYPE_BUY_LIMIT, C.ORDER_TYPE_BUY_STOP)
            price = ask if buy else bid
            hit = {
                C.ORDER_TYPE_BUY_LIMIT: price <= order.price_open,
                C.ORDER_TYPE_SELL_LIMIT: price >= order.price_open,
                C.ORDER_TYPE_BUY_STOP: price >= order.price_open,
                C.ORDER_TYPE_SELL_STOP: price <= order.price_open,
            }.get(order.type, False)
            if not hit:
                continue
            del self.orders[order.ticket]
            req = TradeRequest(action=C.TRADE_ACTION_DEAL, magic=order.magic, symbol=order.symbol,
                               volume=order.volume_current, sl=order.sl, tp=order.tp,
                               type=C.ORDER_TYPE_BUY if buy else C.ORDER_TYPE_SELL,
                               type_filling=C.ORDER_FILLING_IOC, comment=order.comment)  # fmt: skip
            deal = self._book(req, m, buy=buy, volume=req.volume, price=price,
                              entry=C.DEAL_ENTRY_IN, position=0, reason=C.DEAL_REASON_EXPERT,
                              comment=order.comment)  # fmt: skip
            self.positions[deal.order] = _Position(
                deal.order,
                order.symbol,
                buy,
                req.volume,
                price,
                deal.time_msc,
                order.sl,
                order.tp,
                order.magic,
                order.comment,
                C.POSITION_REASON_EXPERT,
            )

    def _run_stops(self) -> None:
        for p in list(self.positions.values()):
            bid, ask = self.markets[p.symbol].quote
            close = bid if p.buy else ask
            sign = 1 if p.buy else -1
            reason = None
            if p.sl and (close - p.sl) * sign <= 0:
                reason, level = C.DEAL_REASON_SL, p.sl
            elif p.tp and (close - p.tp) * sign >= 0:
                reason, level = C.DEAL_REASON_TP, p.tp
            if reason is None:
                continue
            tag = "sl" if reason == C.DEAL_REASON_SL else "tp"
            req = TradeRequest(action=C.TRADE_ACTION_DEAL, symbol=p.symbol, magic=p.magic,
                               volume=p.volume, position=p.ticket)  # fmt: skip
            self._exit(p, req, p.volume, reason, f"[{tag} {level}]")

    # -- the test's hand -----------------------------------------------------------------------

    def control(self, name: str, args: tuple[Any, ...]) -> Any:
        if name == "ctl_step":
            return self.step(*args)
        if name == "ctl_quotes":
            return {m.canonical: m.quote for m in self.markets.values()}
        if name == "ctl_script":  # (retcode, count, action or None)
            retcode, count, action = args
            self.scripted.extend([(retcode, action)] * count)
            return None
        if name == "ctl_ipc":  # (up,)
            self.ipc_down = not args[0]
            return None
        if name == "ctl_broker_stops":
            self.broker_stops = bool(args[0])
            return None
        if name == "ctl_kill_after":  # (nth matching order_send, closes only)
            self.kill_after, self._sends = (args[0], args[1]), 0
            return None
        if name == "ctl_state":
            return {
                "positions": self.positions_get(),
                "deals": tuple(self.deals),
                "orders": self.orders_get(),
                "balance": self.balance,
                "kills": self.kills,
            }
        raise ValueError(f"unknown control call {name}")

    def _kill_now(self, name: str, args: tuple[Any, ...], result: Any) -> bool:
        """Should the client die right after this answer (``ctl_kill_after``)?"""
        if self.kill_after is None or name != "order_send" or result is None:
            return False
        request = args[0] if args else {}
        nth, closes_only = self.kill_after
        if closes_only and not request.get("position"):
            return False
        if result.retcode != C.TRADE_RETCODE_DONE:
            return False
        self._sends += 1
        if self._sends < nth:
            return False
        self.kill_after = None
        self.kills += 1
        return True

    def serve_call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """One request: ``(result, last_error, die)``."""
        with self.lock:
            if name.startswith("ctl_"):
                return self.control(name, args), OK, False
            if name not in CLIENT_CALLS:
                return None, (C.RES_E_INVALID_PARAMS, f"unknown function {name}"), False
            if self.ipc_down:
                return None, NO_IPC, False
            try:
                result = getattr(self, name)(*args, **kwargs)
            except TypeError as exc:
                return None, (C.RES_E_INVALID_PARAMS, f"Invalid arguments: {exc}"), False
            if result is None and name in ("symbol_info", "symbol_info_tick"):
                return None, (C.RES_E_NOT_FOUND, "Terminal: Not found"), False
            return result, OK, self._kill_now(name, args, result)


def _serve_connection(terminal: FakeTerminal, conn: Connection) -> None:
    with contextlib.closing(conn):
        while True:
            try:
                name, args, kwargs = conn.recv()
            except (EOFError, OSError):
                return  # the client is gone (killed, shut down): the terminal carries on
            try:
                conn.send(terminal.serve_call(name, args, kwargs))
            except (BrokenPipeError, OSError):
                return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sim.mt5.terminal", description=__doc__)
    parser.add_argument("--address", required=True, help="the Unix socket to listen on")
    parser.add_argument("--symbols", default="XAUUSD", help="canonical symbols (bundled data)")
    parser.add_argument("--suffix", default="", help="broker suffix: XAUUSD -> XAUUSDm")
    parser.add_argument("--no-broker-stops", action="store_true",
                        help="the broker does not run the positions' SL/TP itself")  # fmt: skip
    parser.add_argument("--start-tick", type=int, default=0, help="where the replay starts")
    args = parser.parse_args(argv)
    terminal = FakeTerminal(
        suffix=args.suffix,
        symbols=tuple(args.symbols.split(",")),
        broker_stops=not args.no_broker_stops,
        start_tick=args.start_tick,
    )
    with Listener(args.address, family="AF_UNIX") as listener:
        print("ready", flush=True)
        while True:
            conn = listener.accept()
            threading.Thread(target=_serve_connection, args=(terminal, conn), daemon=True).start()


if __name__ == "__main__":
    main()

"""The paper device: a simulated MetaTrader terminal speaking the device protocol.

:class:`PaperTerminal` is the terminal's state (positions, pending orders, balance, the window of
executed command ids) as a plain object: it answers server messages with device messages, fills
at the current bid/ask with configurable latency, slippage and a rejection rate, and runs its
own broker-side SL/TP (which sometimes beat the engine's triggers, as a real broker's do). It is
the default device of ``tripwire run``, the device of many tests, and (behind a WebSocket) the
simulated EA of the end-to-end harness.

Every full close is kept as a deal (the terminal's history, newest ``deal_history`` of them):
:meth:`PaperTerminal.deals` reports them, as an EA does right after its positions snapshot on a
reconnect, so a close whose ack was lost (the EA crashed first) still reaches the server with its
fill.

Costs are a raw-spread account's: a commission per lot round turn (7.00 by default), half
charged to the balance when a position opens and half when it closes, and a swap per lot for
each full day a position is held (``swap_period_ms``), booked to the balance when it closes and
counted in the equity meanwhile. Every report carries the position's totals so far (the
positions snapshot, the ack of an open or a close, the close events), as docs/protocol.md asks;
when a day's swap is charged the terminal sends its positions again.

:func:`run_paper_device` connects one to a node in-process (no socket): it is the peer of the
engine, so it receives exactly what a real EA receives.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
import trio

from engine.instruments import Instrument
from protocol.common import Side
from protocol.device import (
    AccountState,
    Ack,
    CloseCommand,
    Deal,
    DealsReport,
    DeviceMessage,
    EventKind,
    Heartbeat,
    HelloBody,
    ModifyCommand,
    OpenCommand,
    OrderType,
    PartialCloseCommand,
    PositionEvent,
    PositionsSnapshot,
    ServerMessage,
    SymbolSpec,
    TerminalPosition,
    Welcome,
    command_hash,
)

if TYPE_CHECKING:
    from actors.node import Node

__all__ = ["PaperConfig", "PaperTerminal", "run_paper_device"]

DONE, REQUOTE, INVALID_STOPS, INVALID_VOLUME, POSITION_CLOSED = 10009, 10004, 10016, 10014, 10036


class PaperConfig(msgspec.Struct, frozen=True, kw_only=True):
    latency_ms: float = 5.0
    """Delay between receiving a command and answering it."""
    slippage_points: int = 0
    """Fills are this many points worse than the quote (at most)."""
    reject_rate: float = 0.0
    """Fraction of opens and closes answered with a requote (retryable)."""
    balance: float = 10_000.0
    currency: str = "USD"
    broker_stops: bool = True
    """Run the broker-side SL/TP the engine sends with its opens."""
    suffix: str = ""
    """Broker symbol suffix (``m`` turns XAUUSD into XAUUSDm), to exercise symbol mapping."""
    window: int = 1000
    """How many executed command ids the terminal remembers (the idempotency window)."""
    seed: int = 7
    commission_per_lot: float = 7.0
    """Commission per lot, round turn, in the account currency: half when a position opens,
    half when it closes (reported negative: a cost)."""
    swap_long_per_lot: float = -6.0
    """Swap of a buy, per lot and per day held, in the account currency (signed)."""
    swap_short_per_lot: float = -2.0
    """Swap of a sell, per lot and per day held, in the account currency (signed)."""
    swap_period_ms: int = 86_400_000
    """A position is charged its swap once for each full period it is held (a day; tests
    shorten it to see the rollover)."""
    deal_history: int = 1000
    """How many closing deals the terminal keeps (and reports on a reconnect)."""


class PaperTerminal:
    """A simulated terminal. Prices come from ``quote(symbol) -> (bid, ask) | None``."""

    def __init__(
        self,
        instruments: Mapping[str, Instrument],
        quote: Callable[[str], tuple[float, float] | None],
        config: PaperConfig | None = None,
        login: str = "1000001",
    ) -> None:
        self.config = config or PaperConfig()
        self.instruments = dict(instruments)
        self.quote = quote
        self.login = login
        self.rng = random.Random(self.config.seed)
        self.positions: dict[int, TerminalPosition] = {}
        self.orders: dict[int, tuple[OpenCommand, str]] = {}  # pending orders: ticket -> order
        self.executed: OrderedDict[str, Ack] = OrderedDict()
        self.balance = self.config.balance
        self._swap_days: dict[int, int] = {}  # ticket -> the days of swap charged so far
        self._swap_booked: dict[int, float] = {}  # ticket -> swap already in the balance
        self._tickets = 100_000
        self.history: OrderedDict[int, Deal] = OrderedDict()
        """Closing deals by the ticket of the position each closed, oldest first."""
        self.now_ms = 0
        """The time of the last command or price check (the time of a deal it books)."""
        self.executions = 0
        """Trades actually performed (a repeated command id is answered, not executed)."""
        self._by_hand: list[DeviceMessage] = []
        """Events of trades made at the terminal by hand, reported with the next price check."""

    # -- names ---------------------------------------------------------------------------------

    def broker(self, canonical: str) -> str:
        return canonical + self.config.suffix

    def canonical(self, broker: str) -> str:
        suffix = self.config.suffix
        return broker[: -len(suffix)] if suffix and broker.endswith(suffix) else broker

    def _next_ticket(self) -> int:
        self._tickets += 1
        return self._tickets

    # -- what a terminal says ------------------------------------------------------------------

    def hello(self, now_ms: int) -> HelloBody:
        specs = [
            SymbolSpec(
                name=self.broker(s),
                digits=i.digits,
                contract_size=i.contract_size,
                volume_min=i.volume_min,
                volume_step=i.volume_step,
                volume_max=i.volume_max,
                stops_level=i.stops_level,
                filling_modes=["ioc"],
            )
            for s, i in self.instruments.items()
        ]
        return HelloBody(
            ea_build="paper-1",
            platform="mt5",
            account_login=self.login,
            broker="Tripwire Paper",
            server_name="paper",
            terminal_time_ms=now_ms,
            currency=self.config.currency,
            symbols=specs,
        )

    def snapshot(self, now_ms: int) -> PositionsSnapshot:
        return PositionsSnapshot(time_ms=now_ms, positions=list(self.positions.values()))

    def deals(self, now_ms: int) -> DealsReport:
        """The closing deals the terminal remembers (sent right after the snapshot)."""
        return DealsReport(time_ms=now_ms, deals=list(self.history.values())[-1000:])

    def account(self, now_ms: int) -> AccountState:
        floating = sum(
            (self._profit(p, self._close_price(p)) or 0.0)
            + (p.swap or 0.0)
            - self._swap_booked.get(p.ticket, 0.0)
            for p in self.positions.values()
        )
        return AccountState(
            balance=round(self.balance, 2),
            equity=round(self.balance + floating, 2),
            currency=self.config.currency,
            time_ms=now_ms,
        )

    # -- commands --------------------------------------------------------------------------------

    def handle(self, message: ServerMessage, now_ms: int) -> list[DeviceMessage]:
        """The terminal's answer to a server message (commands are acked exactly once each)."""
        if not isinstance(
            message, OpenCommand | CloseCommand | PartialCloseCommand | ModifyCommand
        ):
            return []
        self.now_ms = now_ms
        earlier = self.executed.get(message.command_id)
        if earlier is not None:  # the idempotency rule: a repeat gets the earlier answer
            return [msgspec.structs.replace(earlier, repeat=True)]
        # The hash of the command executed goes with its ack, and with every repeat of it.
        ack = msgspec.structs.replace(
            self._execute(message, now_ms), command_hash=command_hash(message)
        )
        if ack.retcode != REQUOTE:  # a requote did nothing: the same id may be tried again
            self.executed[message.command_id] = ack
            while len(self.executed) > self.config.window:
                self.executed.popitem(last=False)
        return [ack]

    def _execute(self, command: Any, now_ms: int) -> Ack:
        cid = command.command_id
        symbol = self.canonical(command.symbol)
        quote = self.quote(symbol)
        if quote is None:
            return Ack(command_id=cid, retcode=10021, result_text="off quotes")
        rejectable = isinstance(command, OpenCommand | CloseCommand)
        if rejectable and self.rng.random() < self.config.reject_rate:
            return Ack(command_id=cid, retcode=REQUOTE, result_text="requote", executed=False)
        bid, ask = quote
        instrument = self.instruments[symbol]
        slip = self.rng.randint(0, self.config.slippage_points) * instrument.point
        if isinstance(command, OpenCommand):
            return self._open(command, symbol, bid, ask, slip, now_ms)
        if isinstance(command, ModifyCommand):
            p = self.positions.get(command.ticket)
            if p is None:
                return Ack(command_id=cid, retcode=POSITION_CLOSED, result_text="no position")
            self.positions[p.ticket] = msgspec.structs.replace(p, sl=command.sl, tp=command.tp)
            self.executions += 1
            return Ack(command_id=cid, retcode=DONE, ticket=p.ticket)
        p = self.positions.get(command.ticket)
        if p is None:
            return Ack(command_id=cid, retcode=POSITION_CLOSED, result_text="position closed")
        price = round((bid - slip) if p.side is Side.BUY else (ask + slip), instrument.digits)
        volume = min(command.volume, p.volume)
        if isinstance(command, PartialCloseCommand) and volume >= p.volume:
            return Ack(command_id=cid, retcode=INVALID_VOLUME, result_text="invalid volume")
        self.executions += 1
        _, commission, swap = self._book(p, price, volume)
        return Ack(
            command_id=cid,
            retcode=DONE,
            ticket=p.ticket,
            fill_price=price,
            fill_volume=volume,
            fill_time_ms=now_ms,
            commission=commission,
            swap=swap,
        )

    def _open(
        self, command: OpenCommand, symbol: str, bid: float, ask: float, slip: float, now_ms: int
    ) -> Ack:
        cid = command.command_id
        if command.order_type is not OrderType.MARKET:
            ticket = self._next_ticket()
            self.orders[ticket] = (command, symbol)
            self.executions += 1
            return Ack(command_id=cid, retcode=10008, ticket=ticket, result_text="placed")
        digits = self.instruments[symbol].digits
        price = round(ask + slip if command.side is Side.BUY else bid - slip, digits)
        market = bid if command.side is Side.BUY else ask
        for level, below in (
            (command.sl, command.side is Side.BUY),
            (command.tp, command.side is Side.SELL),
        ):
            if level is not None and (level >= market if below else level <= market):
                return Ack(command_id=cid, retcode=INVALID_STOPS, result_text="invalid stops")
        ticket = self._next_ticket()
        opened = self._opened(
            TerminalPosition(
                ticket=ticket,
                symbol=command.symbol,
                side=command.side,
                volume=command.volume,
                open_price=price,
                open_time_ms=now_ms,
                sl=command.sl,
                tp=command.tp,
                comment=command.client_id,
            )
        )
        self.executions += 1
        return Ack(
            command_id=cid,
            retcode=DONE,
            ticket=ticket,
            fill_price=price,
            fill_volume=command.volume,
            fill_time_ms=now_ms,
            commission=opened.commission,
            swap=opened.swap,
        )

    def open_by_hand(
        self,
        symbol: str,
        side: Side,
        volume: float,
        *,
        sl: float | None = None,
        tp: float | None = None,
        now_ms: int | None = None,
    ) -> TerminalPosition:
        """A trader opens a position in the terminal itself (no command): held at the current
        quote, and reported as an ``opened_manual`` event with the next price check.

        Raises:
            ValueError: no quote for ``symbol`` yet.
        """
        quote = self.quote(symbol)
        if quote is None:
            raise ValueError(f"no quote for {symbol}")
        now = self.now_ms if now_ms is None else now_ms
        price = quote[1] if side is Side.BUY else quote[0]
        held = self._opened(
            TerminalPosition(
                ticket=self._next_ticket(),
                symbol=self.broker(symbol),
                side=side,
                volume=volume,
                open_price=price,
                open_time_ms=now,
                sl=sl,
                tp=tp,
            )
        )
        self._by_hand.append(
            PositionEvent(
                kind=EventKind.OPENED_MANUAL,
                ticket=held.ticket,
                symbol=held.symbol,
                side=side,
                volume=volume,
                price=price,
                time_ms=now,
                sl=sl,
                tp=tp,
                commission=held.commission,
                swap=held.swap,
            )
        )
        return held

    # -- money ---------------------------------------------------------------------------------

    def _half_commission(self, volume: float) -> float:
        """One side's commission of ``volume`` lots (negative: a cost)."""
        return -round(self.config.commission_per_lot / 2 * volume, 2)

    def _opened(self, p: TerminalPosition) -> TerminalPosition:
        """Hold ``p`` with its entry commission charged (to the balance, as MT5 does)."""
        commission = self._half_commission(p.volume)
        self.balance += commission
        opened = msgspec.structs.replace(p, commission=commission, swap=0.0)
        self.positions[p.ticket] = opened
        self._swap_days[p.ticket] = 0
        self._swap_booked[p.ticket] = 0.0
        return opened

    def accrue_swap(self, now_ms: int) -> bool:
        """Charge each position the swap of the full periods it has been held and not yet paid
        for. True when a position's swap changed (the terminal then reports its positions)."""
        changed = False
        period = self.config.swap_period_ms
        for p in list(self.positions.values()):
            days = max(0, now_ms - p.open_time_ms) // period
            # A position the terminal did not open (a harness planted it) is charged from the
            # day it is first seen here, not for a past it did not hold.
            charged = self._swap_days.setdefault(p.ticket, days)
            if days <= charged:
                continue
            rate = (
                self.config.swap_long_per_lot
                if p.side is Side.BUY
                else self.config.swap_short_per_lot
            )
            swap = round((p.swap or 0.0) + (days - charged) * rate * p.volume, 2)
            self._swap_days[p.ticket] = days
            if swap != p.swap:
                self.positions[p.ticket] = msgspec.structs.replace(p, swap=swap)
                changed = True
        return changed

    def _book(self, p: TerminalPosition, price: float, volume: float) -> tuple[float, float, float]:
        """Close ``volume`` lots of ``p`` at ``price``: the deal's profit, and the position's
        commission and swap totals after it. The balance takes the profit, the exit commission
        and the swap accrued since the last close of this position."""
        profit = (self._profit(p, price) or 0.0) * volume / p.volume
        exit_commission = self._half_commission(volume)
        commission = round((p.commission or 0.0) + exit_commission, 2)
        swap = p.swap or 0.0
        booked = self._swap_booked.get(p.ticket, 0.0)
        self.balance += profit + exit_commission + swap - booked
        left = round(p.volume - volume, 8)
        if left > 0:
            self.positions[p.ticket] = msgspec.structs.replace(
                p, volume=left, commission=commission
            )
            self._swap_booked[p.ticket] = swap
        else:
            del self.positions[p.ticket]
            self._swap_days.pop(p.ticket, None)
            self._swap_booked.pop(p.ticket, None)
            self.history[p.ticket] = Deal(
                ticket=self._next_ticket(),
                position=p.ticket,
                price=price,
                time_ms=self.now_ms,
                volume=volume,
                profit=round(profit, 2),
                commission=commission,
                swap=swap,
            )
            while len(self.history) > self.config.deal_history:
                self.history.popitem(last=False)
        return round(profit, 2), commission, swap

    def _close_price(self, p: TerminalPosition) -> float | None:
        quote = self.quote(self.canonical(p.symbol))
        if quote is None:
            return None
        return quote[0] if p.side is Side.BUY else quote[1]

    def _profit(self, p: TerminalPosition, price: float | None) -> float | None:
        if price is None:
            return None
        contract = self.instruments[self.canonical(p.symbol)].contract_size
        return (price - p.open_price) * p.side.sign * p.volume * contract

    # -- the broker's own stops and pending orders --------------------------------------------

    def check_prices(self, now_ms: int) -> list[DeviceMessage]:
        """Close positions whose broker-side SL/TP the market reached; fill pending orders;
        charge the swap that has come due (and then report the positions, with their swap)."""
        events: list[DeviceMessage] = self._by_hand
        self._by_hand = []
        self.now_ms = now_ms
        if self.accrue_swap(now_ms):
            events.append(self.snapshot(now_ms))
        if self.config.broker_stops:
            for p in list(self.positions.values()):
                price = self._close_price(p)
                if price is None:
                    continue
                buy = p.side is Side.BUY
                if p.sl is not None and (price <= p.sl if buy else price >= p.sl):
                    kind = EventKind.CLOSED_SL
                elif p.tp is not None and (price >= p.tp if buy else price <= p.tp):
                    kind = EventKind.CLOSED_TP
                else:
                    continue
                profit, commission, swap = self._book(p, price, p.volume)
                events.append(
                    PositionEvent(
                        kind=kind,
                        ticket=p.ticket,
                        symbol=p.symbol,
                        side=p.side,
                        volume=p.volume,
                        price=price,
                        time_ms=now_ms,
                        comment=p.comment,
                        profit=profit,
                        commission=commission,
                        swap=swap,
                    )
                )
        for ticket, (order, symbol) in list(self.orders.items()):
            quote = self.quote(symbol)
            if quote is None or order.price is None:
                continue
            market = quote[1] if order.side is Side.BUY else quote[0]
            better = market <= order.price if order.side is Side.BUY else market >= order.price
            if better == (order.order_type is OrderType.LIMIT):
                del self.orders[ticket]
                opened = self._opened(
                    TerminalPosition(
                        ticket=ticket,
                        symbol=order.symbol,
                        side=order.side,
                        volume=order.volume,
                        open_price=market,
                        open_time_ms=now_ms,
                        sl=order.sl,
                        tp=order.tp,
                        comment=order.client_id,
                    )
                )
                events.append(
                    PositionEvent(
                        kind=EventKind.OPENED_PENDING,
                        ticket=ticket,
                        symbol=order.symbol,
                        side=order.side,
                        volume=order.volume,
                        price=market,
                        time_ms=now_ms,
                        sl=order.sl,
                        tp=order.tp,
                        comment=order.client_id,
                        commission=opened.commission,
                        swap=opened.swap,
                    )
                )
        return events


class _MemoryLink:
    """The in-process transport: server messages go straight into the terminal's inbox."""

    def __init__(self, inbox: trio.MemorySendChannel[ServerMessage]) -> None:
        self.inbox = inbox
        self.closed: tuple[int, str] | None = None

    async def send(self, message: ServerMessage) -> None:
        await self.inbox.send(message)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)
        await self.inbox.aclose()


async def run_paper_device(
    node: Node,
    device_id: str,
    config: PaperConfig | None = None,
    *,
    task_status: trio.TaskStatus[PaperTerminal] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Connect a paper terminal to ``node`` as ``device_id`` and run it until cancelled."""
    log = structlog.get_logger().bind(device_id=device_id)
    config = config or PaperConfig()

    def quote(symbol: str) -> tuple[float, float] | None:
        q = node.prices.get(symbol)
        return None if q is None else (q[0], q[1])

    terminal = PaperTerminal(node.instruments, quote, config)
    actor = node.device(device_id)
    send, receive = trio.open_memory_channel[ServerMessage](1 << 16)
    link = _MemoryLink(send)
    session = await actor.open_session(terminal.hello(node.clock.now_ms()), link)
    task_status.started(terminal)
    heartbeat_s = 5.0
    try:
        async with trio.open_nursery() as nursery:

            async def answer(message: ServerMessage) -> None:
                await trio.sleep(config.latency_ms / 1000)
                for reply in terminal.handle(message, node.clock.now_ms()):
                    actor.inbound(session, reply)

            async def watch() -> None:
                seq = 0
                next_beat = trio.current_time()
                while True:
                    await trio.sleep(0.05)
                    now = node.clock.now_ms()
                    for event in terminal.check_prices(now):
                        actor.inbound(session, event)
                    if trio.current_time() >= next_beat:
                        seq += 1
                        actor.inbound(session, Heartbeat(seq=seq, time_ms=now))
                        actor.inbound(session, terminal.account(now))
                        next_beat = trio.current_time() + heartbeat_s

            async for message in receive:
                if isinstance(message, Welcome):
                    heartbeat_s = float(message.heartbeat_s)
                    now = node.clock.now_ms()
                    actor.inbound(session, terminal.snapshot(now))
                    actor.inbound(session, terminal.deals(now))
                    actor.inbound(session, terminal.account(now))
                    nursery.start_soon(watch)
                else:
                    nursery.start_soon(answer, message)
            nursery.cancel_scope.cancel()
    finally:
        log.info("paper device stopped")
        actor.close_session(session)

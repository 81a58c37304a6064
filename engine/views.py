"""What clients see of a position: floats at the instrument's digits and a live P&L.

The P&L here is for display, in floats (it is recomputed on every delta a client gets). Money
that is recorded (a realised P&L) goes through the exact ``engine.money`` functions.
"""

from __future__ import annotations

from typing import Protocol

from engine.guards import DrawdownGuard
from engine.instruments import Instrument
from engine.lifecycle import FINAL_STATES
from engine.positions import Position
from engine.stoprules import break_even_spec, trailing_spec
from protocol.client import AccountView, PositionView

__all__ = ["Account", "account_view", "display_pl", "net_pl", "position_view"]


class Account(Protocol):
    """What an account view is made of (a :class:`~engine.user.UserCore` is one)."""

    @property
    def user_id(self) -> str: ...
    @property
    def balance(self) -> float | None: ...
    @property
    def equity(self) -> float | None: ...
    @property
    def currency(self) -> str: ...
    @property
    def guard(self) -> DrawdownGuard: ...


def display_pl(instrument: Instrument, position: Position, current: int | None) -> float | None:
    """Floating (or realised) P&L in the profit currency, rounded to cents."""
    reference = position.close_price if position.close_price is not None else current
    if position.open_price is None or reference is None:
        return None
    diff = (reference - position.open_price) * position.side.sign / instrument.scale
    return round(diff * position.volume * instrument.contract_size, 2)


def net_pl(pl: float | None, commission: float | None, swap: float | None) -> float | None:
    """What the trader nets: ``pl`` (the price P&L, like MT5's position profit, which excludes
    them) plus commission and swap. Costs not reported count as zero; None without a ``pl``."""
    if pl is None:
        return None
    return round(pl + (commission or 0.0) + (swap or 0.0), 2)


def position_view(
    instrument: Instrument, position: Position, bid: int | None = None, ask: int | None = None
) -> PositionView:
    """A client's view of ``position`` at the current quote (a long is valued at the bid)."""
    current = bid if position.side.sign > 0 else ask
    to_price = instrument.to_price

    def price(points: int | None) -> float | None:
        return None if points is None else to_price(points)

    if position.realized_pl is not None:
        pl = position.realized_pl
    elif position.state in FINAL_STATES and position.close_price is None:
        pl = None  # closed with its fill not known (fill_pending): no P&L, not today's quote's
    else:
        pl = display_pl(instrument, position, current)
    return PositionView(
        id=position.id,
        symbol=position.symbol,
        side=position.side,
        volume=position.volume,
        state=position.state.value,
        origin=position.origin,
        device_id=position.device_id,
        ticket=position.ticket,
        open_price=price(position.open_price),
        open_time_ms=position.open_time_ms,
        sl=price(position.sl),
        tp=price(position.tp),
        current_price=price(current),
        pl=pl,
        close_price=price(position.close_price),
        close_time_ms=position.close_time_ms,
        close_reason=position.close_reason,
        signal_id=position.signal_id,
        flags=list(position.flags),
        updated_ms=position.updated_ms,
        trailing=trailing_spec(instrument, position.trailing),
        break_even=break_even_spec(instrument, position.break_even),
        commission=position.commission,
        swap=position.swap,
        net_pl=net_pl(pl, position.commission, position.swap),
        fill_pending=position.fill_pending,
        adopted=position.adopted,
    )


def account_view(core: Account) -> AccountView:
    """A client's view of ``core``'s account: the device's last report and the guard's state."""
    guard = core.guard
    return AccountView(
        user_id=core.user_id,
        balance=core.balance,
        equity=core.equity,
        currency=core.currency,
        drawdown=round(guard.drawdown, 6),
        guard_level=guard.level.name.lower(),  # type: ignore[arg-type]
        opens_blocked=guard.opens_blocked,
    )

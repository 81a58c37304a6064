"""Client streams: what each connected client of a user is yet to receive.

A client subscribes to channels (``positions``, ``prices``, ``alerts``, ``devices``) and gets a
:class:`~protocol.client.Snapshot`, then deltas. Each subscription has its own
:class:`~actors.mailbox.StreamBuffer`: updates coalesce by key (a position's latest state
replaces one not yet sent), and a client that overruns its buffer too often is dropped; a slow
client never slows the engine or another client. Prices are not pushed per tick (that would put
O(clients) work on the tick path): a pusher samples the price board a few times a second.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING

import trio

from actors.mailbox import StreamBuffer
from engine.lifecycle import PositionState
from engine.positions import Position
from engine.user import UserCore
from engine.views import position_view
from protocol.client import (
    AccountView,
    AlertMessage,
    DeviceStatus,
    DeviceView,
    PositionDelta,
    PositionView,
    PriceUpdate,
    ServerClientMessage,
    Snapshot,
)
from protocol.common import Alert

if TYPE_CHECKING:
    from actors.node import Node

__all__ = ["ClientHub", "Subscription"]

_alert_keys = itertools.count()


class Subscription:
    def __init__(
        self,
        user_id: str,
        channels: Iterable[str],
        symbols: Iterable[str],
        capacity: int,
        max_overruns: int,
    ) -> None:
        self.user_id = user_id
        self.channels = frozenset(channels)
        self.symbols = frozenset(symbols)
        self.buffer: StreamBuffer[ServerClientMessage] = StreamBuffer(capacity, max_overruns)

    @property
    def dropped(self) -> bool:
        return self.buffer.closed


class ClientHub:
    def __init__(self, node: Node) -> None:
        self.node = node
        self._subs: dict[str, set[Subscription]] = defaultdict(set)
        self._watched: dict[str, set[str]] = defaultdict(set)  # user -> symbols of its positions
        self.dropped = 0

    @property
    def clients(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def views(self, positions: Iterable[Position]) -> list[PositionView]:
        prices = self.node.prices
        out = []
        for p in positions:
            instrument = self.node.instruments.get(p.symbol)
            if instrument is None:
                continue
            bid, ask = prices.points(p.symbol, instrument.scale)
            out.append(position_view(instrument, p, bid, ask))
        return out

    async def subscribe(
        self, user_id: str, channels: Iterable[str], symbols: Iterable[str] = ()
    ) -> tuple[Subscription, Snapshot]:
        """Register a client and build its snapshot (inside the user actor, so it is consistent)."""
        config = self.node.config
        sub = Subscription(
            user_id, channels, symbols, config.client_capacity, config.client_max_overruns
        )
        self._subs[user_id].add(sub)  # before the snapshot: no delta can fall in between

        def snapshot(core: UserCore) -> tuple[Snapshot, None]:
            live = list(core.positions.values()) + list(core.recent_closed.values())[-50:]
            account = AccountView(
                user_id=user_id,
                balance=core.balance,
                equity=core.equity,
                currency=core.currency,
                drawdown=round(core.guard.drawdown, 6),
                guard_level=core.guard.level.name.lower(),  # type: ignore[arg-type]
                opens_blocked=core.guard.opens_blocked,
            )
            return Snapshot(
                time_ms=self.node.clock.now_ms(),
                positions=self.views(live),
                account=account,
                devices=self.node.device_views(user_id),
            ), None

        snap = await self.node.user(user_id).call(snapshot)
        return sub, snap

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs[sub.user_id].discard(sub)
        if sub.dropped:
            self.dropped += 1

    # -- fan-out -----------------------------------------------------------------------------

    def positions_changed(self, user_id: str, positions: list[Position]) -> None:
        watched = self._watched[user_id]
        for p in positions:
            if p.state is PositionState.OPEN:
                watched.add(p.symbol)
        subs = self._subs.get(user_id)
        if not subs:
            return
        for view in self.views(positions):
            delta = PositionDelta(position=view)
            for sub in subs:
                if "positions" in sub.channels:
                    sub.buffer.offer(("p", view.id), delta)

    def device_changed(self, user_id: str, view: DeviceView) -> None:
        message = DeviceStatus(device=view)
        for sub in self._subs.get(user_id, ()):
            if "devices" in sub.channels:
                sub.buffer.offer(("d", view.device_id), message)

    def publish_alerts(self, alerts: Iterable[Alert]) -> None:
        for alert in alerts:
            message = AlertMessage(alert=alert)
            targets = (
                self._subs.get(alert.user_id, ())
                if alert.user_id
                else [s for subs in self._subs.values() for s in subs]
            )
            for sub in targets:
                if "alerts" in sub.channels:
                    sub.buffer.offer(("a", next(_alert_keys)), message)

    async def push_prices(self) -> None:
        """Sample the price board and push prices to subscribed clients, forever."""
        period = self.node.config.price_push_ms / 1000
        while True:
            await trio.sleep(period)
            board = self.node.prices
            for user_id, subs in self._subs.items():
                for sub in subs:
                    if "prices" not in sub.channels:
                        continue
                    for symbol in sub.symbols or self._watched.get(user_id, ()):
                        quote = board.get(symbol)
                        if quote is not None:
                            sub.buffer.offer(
                                ("q", symbol),
                                PriceUpdate(
                                    symbol=symbol, bid=quote[0], ask=quote[1], time_ms=quote[2]
                                ),
                            )

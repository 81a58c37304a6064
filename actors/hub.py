"""Client streams: what each connected client of a user is yet to receive.

A client subscribes to channels (``positions``, ``prices``, ``alerts``, ``devices``) and gets a
:class:`~protocol.client.Snapshot`, then deltas. Each subscription has its own
:class:`~actors.mailbox.StreamBuffer`: updates coalesce by key (a position's latest state
replaces one not yet sent), and a client that overruns its buffer too often is dropped; a slow
client never slows the engine or another client. Prices are not pushed per tick (that would put
O(clients) work on the tick path): a pusher samples the price board a few times a second.

A subscription's symbols are a subset of the node's instruments (:meth:`ClientHub.update`
refuses the others), so what a pusher walks per client is bounded by the instrument list, and
a subscribe changes the sets in place, never copying them. A subscription is ended from
outside (:meth:`ClientHub.end_user`: its user was disabled) through its ``ended`` event;
:meth:`ClientHub.unsubscribe` forgets it entirely, so the hub keeps nothing of a closed client.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable

import trio

from actors.mailbox import StreamBuffer
from actors.messages import ClientSnapshot, Reply
from actors.ports import HubNode
from engine.lifecycle import PositionState
from engine.positions import Position
from engine.views import position_view
from protocol.client import (
    AccountDelta,
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
from protocol.errors import TripwireError
from protocol.redirects import Moved

__all__ = ["ClientHub", "Subscription"]

_alert_keys = itertools.count()

_DONE = frozenset({PositionState.CLOSED, PositionState.REJECTED})
"""States of a position that no longer concerns its user's market alerts."""


class Subscription:
    """One client stream: what it wants (``channels``, ``symbols``) and what it has yet to get."""

    def __init__(
        self, user_id: str, channels: Iterable[str], capacity: int, max_overruns: int
    ) -> None:
        self.user_id = user_id
        self.channels: set[str] = set(channels)
        self.symbols: set[str] = set()
        """Symbols for ``prices`` (empty: those of the user's positions); instruments only."""
        self.buffer: StreamBuffer[ServerClientMessage] = StreamBuffer(capacity, max_overruns)
        self.ended = trio.Event()
        self.ended_by: TripwireError | None = None
        """Why the stream was ended from outside (set with ``ended``)."""
        self.moved: Moved | None = None
        """Where the user went, when this node stopped serving it (set with ``ended``)."""

    @property
    def dropped(self) -> bool:
        """The client read too slowly (its buffer overran) and is being disconnected."""
        return self.buffer.closed

    def end(self, reason: TripwireError) -> None:
        """Ask the connection to close with ``reason`` (its error frame and close code)."""
        if not self.ended.is_set():
            self.ended_by = reason
            self.ended.set()

    def move(self, frame: Moved) -> None:
        """Ask the connection to send ``frame`` and close with 4301 (the user left this node)."""
        if not self.ended.is_set():
            self.moved = frame
            self.ended.set()


class ClientHub:
    def __init__(self, node: HubNode) -> None:
        self.node = node
        self._subs: dict[str, set[Subscription]] = {}  # no empty sets: a closed user leaves
        self._watched: dict[str, set[str]] = defaultdict(set)  # user -> symbols of its positions
        self._holding: dict[str, dict[str, set[str]]] = {}
        """user -> symbol -> ids of its positions there that are not closed: who a market
        alert concerns (no empty sets, no empty users)."""
        self._accounts: dict[str, AccountView] = {}  # user -> the account view last sent
        self._subscribed = trio.Event()  # set by a subscribe: the price push waits on it when idle
        self.dropped = 0

    @property
    def clients(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def subscriptions(self, user_id: str) -> tuple[Subscription, ...]:
        """The user's live subscriptions."""
        return tuple(self._subs.get(user_id, ()))

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
        self, user_id: str, channels: Iterable[str]
    ) -> tuple[Subscription, Snapshot]:
        """Register a client and build its snapshot (inside the user actor, so it is consistent).

        Symbols for ``prices`` are added with :meth:`update`, which says which it refused.
        """
        config = self.node.config
        sub = Subscription(user_id, channels, config.client_capacity, config.client_max_overruns)
        # Before the snapshot: no delta can fall in between.
        self._subs.setdefault(user_id, set()).add(sub)
        self._subscribed.set()
        reply: Reply[Snapshot] = Reply()
        try:
            self.node.user(user_id).deliver(ClientSnapshot(reply))
            snap = await reply.wait()
        except BaseException:  # cancelled (the client left) or failed: keep nothing of it
            self.unsubscribe(sub)
            raise
        return sub, snap

    def snapshot(
        self,
        user_id: str,
        live: Iterable[Position],
        recent_closed: Iterable[Position],
        account: AccountView,
    ) -> Snapshot:
        """A new stream's snapshot of the user's state (called by the user actor, which answers
        a :class:`~actors.messages.ClientSnapshot` with it): the live positions, the last 50
        closed ones, the account and the devices."""
        live = list(live)
        self._hold(user_id, live)
        self._accounts[user_id] = account  # what every stream of the user now knows
        return Snapshot(
            time_ms=self.node.clock.now_ms(),
            positions=self.views(live + list(recent_closed)[-50:]),
            account=account,
            devices=self.node.device_views(user_id),
        )

    def update(
        self, sub: Subscription, channels: Iterable[str] = (), symbols: Iterable[str] = ()
    ) -> list[str]:
        """Add ``channels`` and ``symbols`` to ``sub`` in place; returns the symbols refused
        because no instrument has them (the rest are added)."""
        instruments = self.node.instruments
        sub.channels.update(channels)
        refused = []
        for symbol in symbols:
            if symbol in instruments:
                sub.symbols.add(symbol)
            else:
                refused.append(symbol)
        return refused

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget ``sub`` (its connection closed): the hub keeps no reference to it."""
        subs = self._subs.get(sub.user_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.user_id]
                self._accounts.pop(sub.user_id, None)
        if sub.dropped:
            self.dropped += 1

    def end_user(self, user_id: str, reason: TripwireError) -> int:
        """End every live stream of ``user_id`` (disabled) with ``reason``; returns how many."""
        subs = self.subscriptions(user_id)
        for sub in subs:
            sub.end(reason)
        return len(subs)

    def move_user(self, user_id: str, frame: Moved) -> int:
        """Send every live stream of ``user_id`` to ``frame``'s node (cluster mode: its
        partition was handed over or lost); returns how many."""
        subs = self.subscriptions(user_id)
        for sub in subs:
            sub.move(frame)
        return len(subs)

    # -- fan-out -----------------------------------------------------------------------------

    def _hold(self, user_id: str, positions: Iterable[Position]) -> None:
        """Keep :attr:`_holding` up to date with these positions' states."""
        holding = self._holding.get(user_id)
        for p in positions:
            if p.state in _DONE:
                if holding is not None and p.symbol in holding:
                    ids = holding[p.symbol]
                    ids.discard(p.id)
                    if not ids:
                        del holding[p.symbol]
                        if not holding:
                            del self._holding[user_id]
                            holding = None
            else:
                if holding is None:
                    holding = self._holding.setdefault(user_id, {})
                holding.setdefault(p.symbol, set()).add(p.id)

    def positions_changed(self, user_id: str, positions: list[Position]) -> None:
        watched = self._watched[user_id]
        for p in positions:
            if p.state is PositionState.OPEN:
                watched.add(p.symbol)
        self._hold(user_id, positions)
        subs = self._subs.get(user_id)
        if not subs:
            return
        for view in self.views(positions):
            delta = PositionDelta(position=view)
            for sub in subs:
                if "positions" in sub.channels:
                    sub.buffer.offer(("p", view.id), delta)

    def watches(self, user_id: str) -> bool:
        """Whether ``user_id`` has a live stream (callers skip building views otherwise)."""
        return user_id in self._subs

    def account_changed(self, user_id: str, view: AccountView) -> None:
        """Send the user's account view to its streams if it differs from the one last sent
        (coalesced: a stream that has not yet sent the previous one sends only this)."""
        subs = self._subs.get(user_id)
        if not subs or self._accounts.get(user_id) == view:
            return
        self._accounts[user_id] = view
        message = AccountDelta(account=view, time_ms=self.node.clock.now_ms())
        for sub in subs:
            sub.buffer.offer(("acct",), message)

    def device_changed(self, user_id: str, view: DeviceView) -> None:
        message = DeviceStatus(device=view)
        for sub in self._subs.get(user_id, ()):
            if "devices" in sub.channels:
                sub.buffer.offer(("d", view.device_id), message)

    def concerned(self, alert: Alert) -> list[Subscription]:
        """The streams an alert concerns: its user's; for a market alert (a symbol, no user),
        those of users with a position in the symbol and those subscribed to its prices; for
        an alert of neither (the engine's own: storage), everyone's."""
        if alert.user_id:
            return list(self._subs.get(alert.user_id, ()))
        symbol = alert.symbol
        if symbol is None:
            return [s for subs in self._subs.values() for s in subs]
        return [
            sub
            for user_id, subs in self._subs.items()
            for sub in subs
            if symbol in sub.symbols or symbol in self._holding.get(user_id, ())
        ]

    def publish_alerts(self, alerts: Iterable[Alert]) -> None:
        for alert in alerts:
            message = AlertMessage(alert=alert)
            for sub in self.concerned(alert):
                if "alerts" in sub.channels:
                    sub.buffer.offer(("a", next(_alert_keys)), message)

    async def push_prices(self) -> None:
        """Sample the price board and push prices to subscribed clients, forever; with no
        client connected, wait for one instead of waking every period for nothing."""
        period = self.node.config.price_push_ms / 1000
        while True:
            if not self._subs:
                self._subscribed = trio.Event()
                await self._subscribed.wait()
            await trio.sleep(period)
            self._push_prices_once()

    def _push_prices_once(self) -> None:
        # Its own frame: the loop's last ``sub`` must not outlive the push (held across the
        # sleep, a closed stream's subscription and its buffer stayed alive until the next
        # push, or for good once no stream was left).
        board = self.node.prices
        for user_id, subs in self._subs.items():
            for sub in subs:
                if "prices" not in sub.channels:
                    continue
                for symbol in sub.symbols or self._watched.get(user_id) or ():
                    quote = board.get(symbol)
                    if quote is not None:
                        sub.buffer.offer(
                            ("q", symbol),
                            PriceUpdate(
                                symbol=symbol, bid=quote[0], ask=quote[1], time_ms=quote[2]
                            ),
                        )

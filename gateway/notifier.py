"""The notifier: tells users about fills, closes, their alerts and devices gone silent.

It is never on the tick path. Actors hand it notices (``Node.notify``, from the user actor)
and alerts (``Node.on_alerts``) with :meth:`Notifier.offer` / :meth:`Notifier.offer_alerts`,
which only look the user up in memory and append to a bounded queue: when the queue is full
the oldest entry is dropped and counted, and nothing ever waits. ``workers`` tasks of their
own take entries off the queue, build the :class:`~protocol.notifications.Notification` and
deliver it to each of the user's channels at once (a hung webhook does not hold back the
Telegram message), over one pooled HTTP client with a timeout per attempt.

A failed attempt (a network error, a timeout, a 408, 429 or 5xx) is retried after an
exponential backoff with jitter (``engine.notices.retry_delay_s``; a 429's ``retry_after`` is
honoured up to the cap), at most ``attempts`` times in all; any other answer is final. Then
the notification is given up for that channel and counted as failed: the queue is memory, and
a notification is worth less than the engine's time (a restart forgets what was queued).

A webhook's host is resolved before each attempt and refused if it is internal (see
``gateway.notifications``), unless ``allow_internal``; redirects are not followed.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog
import trio

from actors.clock import Clock
from engine.instruments import Instrument
from engine.notices import Notice, alert_notification, position_notification, retry_delay_s
from gateway.notifications import NotificationStore, is_internal_address
from protocol.common import Alert
from protocol.notifications import (
    USER_HEADER,
    Notification,
    encode_notification,
    sign_notification,
)

__all__ = ["Notifier", "NotifierConfig", "NotifierStats"]

# httpx logs every request's URL at INFO, and a Bot API URL holds the bot's token.
logging.getLogger("httpx").setLevel(logging.WARNING)

_RETRYABLE = {408, 425, 429}


@dataclass(frozen=True, slots=True)
class NotifierConfig:
    """Sizes and periods (``gateway.config``'s ``notify_*`` settings)."""

    queue: int = 1000
    workers: int = 4
    timeout_s: float = 5.0
    attempts: int = 5
    backoff_s: float = 0.5
    backoff_cap_s: float = 30.0
    telegram_api: str = "https://api.telegram.org"
    allow_internal: bool = False


@dataclass
class NotifierStats:
    """Plain counters, read by ``gateway.metrics`` at scrape time."""

    delivered: Counter[str] = field(default_factory=Counter)
    """By channel (``webhook``, ``telegram``)."""
    failed: Counter[str] = field(default_factory=Counter)
    """Given up, by channel: retries exhausted, a final answer, or an internal address."""
    retries: int = 0
    dropped: int = 0
    """Entries the full queue dropped (the oldest first)."""


class _Final(Exception):
    """An attempt's outcome that no retry can change."""


class _Retry(Exception):
    """A failed attempt worth another; ``after_s`` is what the receiver asked to wait."""

    def __init__(self, reason: str, after_s: float | None = None) -> None:
        super().__init__(reason)
        self.after_s = after_s


class Notifier:
    def __init__(
        self,
        store: NotificationStore,
        instruments: Mapping[str, Instrument],
        clock: Clock,
        config: NotifierConfig | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.instruments = instruments
        self.clock = clock
        self.config = config or NotifierConfig()
        self.stats = NotifierStats()
        self._queue: deque[Notice | Alert] = deque()
        self._waiting = trio.lowlevel.ParkingLot()
        self._rng = rng or random.Random()
        self.log = structlog.get_logger().bind(component="notifier")

    # -- the offer side: called by actors, never blocks -------------------------------------

    def offer(self, user_id: str, notices: Iterable[Notice]) -> None:
        """Queue the fills and closes ``user_id`` has subscribed to (``Node.notify``)."""
        channels = self.store.get(user_id)
        if channels is None or not channels.active:
            return
        for notice in notices:
            if notice.kind in channels.events:
                self._push(notice)

    def offer_alerts(self, alerts: Iterable[Alert]) -> None:
        """Queue the alerts whose user subscribed to them (a ``Node.on_alerts`` listener)."""
        for alert in alerts:
            if alert.user_id is None:
                continue  # a market alert concerns no one user
            channels = self.store.get(alert.user_id)
            if channels is None or not channels.active:
                continue
            event = "device_offline" if alert.kind == "device_stale" else "alert"
            if event in channels.events:
                self._push(alert)

    def _push(self, item: Notice | Alert) -> None:
        queue = self._queue
        if len(queue) >= self.config.queue:
            queue.popleft()
            self.stats.dropped += 1
        queue.append(item)
        self._waiting.unpark()

    @property
    def depth(self) -> int:
        return len(self._queue)

    # -- the delivery side: its own tasks ---------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver until cancelled (``workers`` tasks sharing one HTTP client)."""
        timeout = httpx.Timeout(self.config.timeout_s)
        limits = httpx.Limits(max_connections=max(4, self.config.workers * 2))
        async with (
            httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False) as http,
            trio.open_nursery() as nursery,
        ):
            for _ in range(self.config.workers):
                nursery.start_soon(self._work, http)
            task_status.started()

    async def _work(self, http: httpx.AsyncClient) -> None:
        while True:
            while not self._queue:
                await self._waiting.park()
            item = self._queue.popleft()
            try:
                notification = self._build(item)
                if notification is not None:
                    await self._deliver(http, notification)
            except Exception:  # a bug here must not stop notifying everyone else
                self.log.exception("notification failed unexpectedly")

    def _build(self, item: Notice | Alert) -> Notification | None:
        if isinstance(item, Notice):
            instrument = self.instruments.get(item.position.symbol)
            return None if instrument is None else position_notification(item, instrument)
        return alert_notification(item)

    async def _deliver(self, http: httpx.AsyncClient, notification: Notification) -> None:
        channels = self.store.get(notification.user_id)  # as configured now
        if channels is None or notification.event not in channels.events:
            return
        async with trio.open_nursery() as nursery:
            if channels.webhook_url and channels.webhook_secret:
                url, secret = channels.webhook_url, channels.webhook_secret
                nursery.start_soon(
                    self._with_retries,
                    "webhook",
                    notification,
                    lambda: self._post_webhook(http, url, secret, notification),
                )
            if channels.telegram_chat_id and channels.telegram_token:
                chat, token = channels.telegram_chat_id, channels.telegram_token
                nursery.start_soon(
                    self._with_retries,
                    "telegram",
                    notification,
                    lambda: self._send_telegram(http, token, chat, notification),
                )

    async def _with_retries(
        self, channel: str, notification: Notification, attempt: Callable[[], Awaitable[None]]
    ) -> None:
        config = self.config
        for number in range(1, config.attempts + 1):
            try:
                await attempt()
            except _Final as exc:
                reason = str(exc)
                break
            except (_Retry, httpx.HTTPError) as exc:
                reason = f"{type(exc).__name__}: {exc}"[:200]
                if number == config.attempts:
                    break
                delay = retry_delay_s(
                    number, config.backoff_s, config.backoff_cap_s, self._rng.random()
                )
                asked = getattr(exc, "after_s", None)
                if asked is not None:
                    delay = max(delay, min(asked, config.backoff_cap_s))
                self.stats.retries += 1
                await trio.sleep(delay)
            else:
                self.stats.delivered[channel] += 1
                self.log.debug(
                    "notification delivered", channel=channel, id=notification.id, attempt=number
                )
                return
        self.stats.failed[channel] += 1
        self.log.warning(
            "notification given up",
            channel=channel,
            id=notification.id,
            user_id=notification.user_id,
            attempts=number,
            reason=reason,
        )

    async def _post_webhook(
        self, http: httpx.AsyncClient, url: str, secret: bytes, notification: Notification
    ) -> None:
        if not self.config.allow_internal:
            await self._refuse_internal(url)
        body = encode_notification(notification)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "tripwire-notifier/1",
            "X-Signature": sign_notification(
                body, notification.user_id, secret, self.clock.now_ms()
            ),
            USER_HEADER: notification.user_id,
        }
        _judge(await http.post(url, content=body, headers=headers))

    async def _send_telegram(
        self, http: httpx.AsyncClient, token: str, chat_id: str, notification: Notification
    ) -> None:
        url = f"{self.config.telegram_api.rstrip('/')}/bot{token}/sendMessage"
        payload = {"chat_id": chat_id, "text": notification.text, "disable_web_page_preview": True}
        try:
            response = await http.post(url, json=payload)
        except httpx.HTTPError as exc:  # its message may quote the URL, and the URL the token
            raise _Retry(type(exc).__name__) from None
        _judge(response)

    async def _refuse_internal(self, url: str) -> None:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            found = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
        except OSError as exc:
            raise _Retry(f"cannot resolve {host}: {exc}") from None
        if any(is_internal_address(str(sockaddr[0])) for *_, sockaddr in found):
            raise _Final(f"{host} resolves to an internal address")


def _judge(response: httpx.Response) -> None:
    """Return on a 2xx; raise what the status means otherwise."""
    status = response.status_code
    if 200 <= status < 300:
        return
    if status >= 500 or status in _RETRYABLE:
        raise _Retry(f"HTTP {status}", _retry_after(response))
    raise _Final(f"HTTP {status}")


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds the receiver asked us to wait: ``Retry-After``, or the Bot API's own field."""
    header = response.headers.get("Retry-After")
    if header is not None and header.strip().isdigit():
        return float(header.strip())
    try:
        body: Any = response.json()
        value = body.get("parameters", {}).get("retry_after")
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) and value >= 0 else None

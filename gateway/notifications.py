"""Notification settings: which events a user is told about, and through which channels.

Two channels, either or both:

* a **webhook**: an ``http(s)`` URL that receives each notification as a signed JSON POST
  (:mod:`protocol.notifications`). Its secret is generated here (32 random bytes, URL-safe),
  returned once in the answer that set the URL (or rotated it), and never again;
* a **Telegram bot**: the bot's token and the chat id it writes to (``sendMessage``). The token
  is write-only: reads say only whether one is set.

Like the trading settings (``gateway.registry``), a change is written to Postgres first, then
to the in-memory map the notifier reads, so what was acknowledged survives a restart. Without a
database (tests) the map is all there is.

A webhook URL may not name a loopback, private, link-local or otherwise internal address
unless ``notify_private_urls`` is on: users must not make the engine call into its own
network. The notifier checks the resolved address again at every delivery.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, replace
from typing import Annotated
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from persistence import notification_channels
from persistence.db import Database
from protocol.errors import DecodeError
from protocol.notifications import EVENTS, EventName

__all__ = [
    "Channels",
    "NotificationStore",
    "NotificationsIn",
    "NotificationsOut",
    "check_webhook_url",
    "is_internal_address",
]

ChatId = Annotated[str, Meta(pattern=r"^(-?[0-9]{1,20}|@[A-Za-z][A-Za-z0-9_]{4,31})$")]
"""A Telegram chat: a numeric id (negative for groups) or ``@channelusername``."""

BotToken = Annotated[str, Meta(pattern=r"^[0-9]{1,20}:[A-Za-z0-9_-]{30,64}$")]
"""A Telegram bot token as BotFather issues it (``123456789:AA...``)."""


class NotificationsIn(msgspec.Struct, frozen=True, kw_only=True):
    """``PUT /me/notifications``: the whole configuration (a field left out is its default).

    ``telegram_bot_token`` may be left out to keep the stored one (it is never read back);
    setting ``telegram_chat_id`` to null removes the Telegram channel, and ``webhook_url``
    null the webhook (and its secret).
    """

    events: Annotated[list[EventName], Meta(max_length=8)] = msgspec.field(
        default_factory=lambda: list(EVENTS)
    )
    webhook_url: Annotated[str, Meta(min_length=1, max_length=2048)] | None = None
    rotate_webhook_secret: bool = False
    """Generate a new webhook secret even though one is set (the old one stops at once)."""
    telegram_chat_id: ChatId | None = None
    telegram_bot_token: BotToken | None = None


class NotificationsOut(msgspec.Struct, frozen=True, kw_only=True):
    """What a user reads back: never a secret, except ``webhook_secret`` once."""

    events: list[EventName]
    webhook_url: str | None = None
    webhook_secret_set: bool = False
    telegram_chat_id: str | None = None
    telegram_bot_token_set: bool = False
    webhook_secret: str | None = None
    """Only in the answer that generated it: keep it, it is not shown again."""


@dataclass(frozen=True, slots=True)
class Channels:
    """One user's notification configuration, as the notifier reads it."""

    user_id: str
    events: frozenset[str]
    webhook_url: str | None = None
    webhook_secret: bytes | None = None
    telegram_chat_id: str | None = None
    telegram_token: str | None = None

    @property
    def active(self) -> bool:
        return bool(self.events) and bool(self.webhook_url or self.telegram_chat_id)

    def view(self, new_secret: str | None = None) -> NotificationsOut:
        return NotificationsOut(
            events=[e for e in EVENTS if e in self.events],
            webhook_url=self.webhook_url,
            webhook_secret_set=self.webhook_secret is not None,
            telegram_chat_id=self.telegram_chat_id,
            telegram_bot_token_set=self.telegram_token is not None,
            webhook_secret=new_secret,
        )


def is_internal_address(address: str) -> bool:
    """True for an address the engine must not be made to call (its own network)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def check_webhook_url(url: str, *, allow_internal: bool) -> None:
    """Refuse a webhook URL that is no absolute ``http(s)`` URL, or names an internal host.

    Raises:
        DecodeError: naming what is wrong (a 400).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise DecodeError("webhook_url is not a valid URL", field="webhook_url") from None
    host = parts.hostname
    if parts.scheme not in {"http", "https"} or not host:
        raise DecodeError("webhook_url must be an absolute http or https URL", field="webhook_url")
    if parts.username is not None or parts.password is not None:
        raise DecodeError("webhook_url may not carry credentials", field="webhook_url")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise DecodeError("webhook_url may not contain spaces or controls", field="webhook_url")
    if port == 0:
        raise DecodeError("webhook_url has no valid port", field="webhook_url")
    internal = host.lower() == "localhost" or host.lower().endswith(".localhost")
    if not allow_internal and (internal or is_internal_address(host)):
        raise DecodeError(
            "webhook_url names an internal address (loopback, private or link-local)",
            field="webhook_url",
        )


def new_webhook_secret() -> str:
    return secrets.token_urlsafe(32)


class NotificationStore:
    """Every user's :class:`Channels`, from Postgres (``db``) or in memory (``db=None``)."""

    def __init__(self, db: Database | None = None) -> None:
        self.db = db
        self._channels: dict[str, Channels] = {}

    async def load(self) -> None:
        if self.db is None:
            return
        for row in await notification_channels.all_channels(self.db):
            self._channels[row.user_id] = Channels(
                user_id=row.user_id,
                events=frozenset(row.events),
                webhook_url=row.webhook_url,
                webhook_secret=row.webhook_secret,
                telegram_chat_id=row.telegram_chat_id,
                telegram_token=row.telegram_token,
            )

    def get(self, user_id: str) -> Channels | None:
        """The user's channels if any is set up (a dictionary lookup: the offer path's cost)."""
        return self._channels.get(user_id)

    def of(self, user_id: str) -> Channels:
        return self._channels.get(user_id) or Channels(user_id=user_id, events=frozenset(EVENTS))

    async def update(self, user_id: str, data: NotificationsIn) -> tuple[Channels, str | None]:
        """Store ``data`` as the user's configuration: ``(channels, new webhook secret)``.

        Raises:
            DecodeError: a bot token is needed (a chat id without one stored or given).
        """
        current = self.of(user_id)
        secret: str | None = None
        webhook_secret: bytes | None = None
        if data.webhook_url is not None:
            webhook_secret = current.webhook_secret
            if webhook_secret is None or data.rotate_webhook_secret:
                secret = new_webhook_secret()
                webhook_secret = secret.encode()
        token: str | None = None
        if data.telegram_chat_id is not None:
            token = data.telegram_bot_token or current.telegram_token
            if token is None:
                raise DecodeError(
                    "telegram_chat_id needs a telegram_bot_token", field="telegram_bot_token"
                )
        channels = replace(
            current,
            events=frozenset(data.events),
            webhook_url=data.webhook_url,
            webhook_secret=webhook_secret,
            telegram_chat_id=data.telegram_chat_id,
            telegram_token=token,
        )
        if self.db is not None:
            await notification_channels.store_channels(
                self.db,
                notification_channels.ChannelsRow(
                    user_id,
                    sorted(channels.events),
                    channels.webhook_url,
                    channels.webhook_secret,
                    channels.telegram_chat_id,
                    channels.telegram_token,
                ),
            )
        self._channels[user_id] = channels
        return channels, secret

"""Where each user's notifications go: the ``notification_settings`` table, read and written.

The gateway (``gateway.notifications``) validates a configuration, generates the webhook
secret and keeps every user's channels in memory for the notifier; this module stores and
loads them, one row per user.
"""

from __future__ import annotations

from typing import NamedTuple

from persistence.db import Database

__all__ = ["ChannelsRow", "all_channels", "store_channels"]


class ChannelsRow(NamedTuple):
    user_id: str
    events: list[str]
    webhook_url: str | None
    webhook_secret: bytes | None
    telegram_chat_id: str | None
    telegram_token: str | None


async def all_channels(db: Database) -> list[ChannelsRow]:
    """Every user's row (a user who never configured notifications has none)."""
    return [
        ChannelsRow(
            row["user_id"],
            list(row["events"]),
            row["webhook_url"],
            bytes(row["webhook_secret"]) if row["webhook_secret"] is not None else None,
            row["telegram_chat_id"],
            row["telegram_token"],
        )
        for row in await db.fetch(
            "SELECT user_id, events, webhook_url, webhook_secret, telegram_chat_id, "
            "telegram_token FROM notification_settings"
        )
    ]


async def store_channels(db: Database, row: ChannelsRow) -> None:
    """Insert the user's row or replace every field of it."""
    await db.execute(
        "INSERT INTO notification_settings (user_id, events, webhook_url, "
        "webhook_secret, telegram_chat_id, telegram_token) "
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (user_id) DO UPDATE SET "
        "events = $2, webhook_url = $3, webhook_secret = $4, telegram_chat_id = $5, "
        "telegram_token = $6, updated_at = now()",
        *row,
    )

-- Per-user notifications (gateway/notifications.py): which events to send, and where.
--
-- The webhook secret and the bot token must be usable (the engine signs with one and calls the
-- Bot API with the other), so they are stored as they are, like device secrets: never
-- returned after the answer that created them, never logged. No row: no notifications.
CREATE TABLE notification_settings (
    user_id          text PRIMARY KEY REFERENCES users (id),
    events           text[] NOT NULL,
    webhook_url      text,
    webhook_secret   bytea CHECK (webhook_secret IS NULL OR length(webhook_secret) >= 16),
    telegram_chat_id text,
    telegram_token   text,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((webhook_url IS NULL) = (webhook_secret IS NULL)),
    CHECK ((telegram_chat_id IS NULL) = (telegram_token IS NULL))
);

"""The caller's notifications: which events to be told about, by webhook and/or Telegram.

``PUT /me/notifications`` replaces the configuration. Like ``PUT /me/settings`` it is stored
first (Postgres), then live (the notifier reads it at the next event), and audited, with the
channels and events but never a secret; the 200 means all three happened. A new webhook secret
(the first for a URL, or ``rotate_webhook_secret``) is in that 200 answer and nowhere else.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint
from quart_schema import document_response, validate_request

from gateway.notifications import NotificationsIn, NotificationsOut, check_webhook_url
from gateway.notifier import Notifier
from gateway.rest.common import audited, ctx, identity, require_token
from gateway.rest.docs import bearer, errors, json_response
from gateway.rest.placement import serve_here
from protocol.errors import StorageError

__all__ = ["blueprint"]

blueprint = Blueprint("notifications", __name__, url_prefix="/api/v1")
require_token(blueprint)


def _notifier() -> Notifier:
    notifier = ctx().notifier
    if notifier is None:
        raise StorageError("this node delivers no notifications")
    return notifier


@blueprint.get("/me/notifications")
@bearer
@document_response(NotificationsOut, 200)
@errors(401)
async def get_notifications() -> Any:
    """The caller's notification settings (secrets only as "set" flags)."""
    serve_here(identity().user_id)
    return json_response(_notifier().store.of(identity().user_id).view())


@blueprint.put("/me/notifications")
@bearer
@validate_request(NotificationsIn)
@document_response(NotificationsOut, 200)
@errors(400, 401, 413)
async def put_notifications(data: NotificationsIn) -> Any:
    """Replace the caller's notification settings; a new webhook secret is shown once."""
    who = identity()
    serve_here(who.user_id)
    context = ctx()
    if data.webhook_url is not None:
        check_webhook_url(data.webhook_url, allow_internal=context.settings.notify_private_urls)
    async with audited("notifications.update", "user", who.user_id, "200") as note:
        channels, secret = await _notifier().store.update(who.user_id, data)
        note.detail.update(
            events=",".join(sorted(channels.events)),
            webhook=channels.webhook_url is not None,
            webhook_secret_issued=secret is not None,
            telegram=channels.telegram_chat_id is not None,
        )
    return json_response(channels.view(secret))

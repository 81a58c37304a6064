"""Closing what a revoked device or a disabled user still has open on this node.

The REST calls that revoke a device or disable a user (``gateway.rest.devices``,
``gateway.rest.users``) close the live session and streams on the node that serves the user.
A change made anywhere else (another node of a cluster, ``tripwire admin`` in its own process)
reaches this node as a registry change (``Registry.follow``), and :func:`on_access_ended` closes
the same things here: a revoked device must not keep trading on a session opened before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.closecodes import CloseCode
from protocol.errors import AuthError

if TYPE_CHECKING:
    from gateway.context import GatewayContext

__all__ = ["close_device", "close_user", "on_access_ended"]


async def close_device(ctx: GatewayContext, device_id: str, reason: str) -> bool:
    """End the device's live session here, if it has one (policy violation, ``reason``)."""
    actor = ctx.node.devices.get(device_id)
    return actor is not None and await actor.end_session(CloseCode.POLICY_VIOLATION, reason)


async def close_user(ctx: GatewayContext, user_id: str) -> tuple[int, int]:
    """Close a disabled user's client streams, then its devices' sessions; how many of each."""
    streams = ctx.node.hub.end_user(user_id, AuthError("the account is disabled"))
    sessions = 0
    for device in ctx.registry.devices_of(user_id):
        if await close_device(ctx, device.id, "user disabled"):
            sessions += 1
    return streams, sessions


async def on_access_ended(ctx: GatewayContext, kind: str, key: str) -> None:
    """The registry's :meth:`~gateway.registry.Registry.on_access_ended` handler."""
    if kind == "device":
        await close_device(ctx, key, "device revoked")
    elif kind == "user":
        await close_user(ctx, key)

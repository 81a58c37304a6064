"""Devices: register a terminal (its secret is shown once), list them, rotate, revoke.

A device's secret leaves the server exactly twice in its life: in the 201 of its registration
and in the answer to a rotation (the new one; the old stays valid for a grace period so the EA
can be updated without downtime). It is never listed, logged or audited.

Revoking is immediate: the registry refuses the device's next handshake and its live session,
if any, is closed with 1008 (policy violation). Owners act on their own devices, admins on
anyone's; reading or acting on another user's device is a 404, as for one that does not exist
(a 403 would tell that it does).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta
from quart import Blueprint
from quart_schema import document_response, validate_querystring, validate_request

from gateway.access import close_device
from gateway.context import GatewayContext
from gateway.registry import DeviceRecord
from gateway.rest.common import Label, audited, ctx, identity, require_token, scope_user
from gateway.rest.docs import bearer, errors, json_response
from gateway.rest.placement import serve_here
from protocol.errors import NotFound
from protocol.types import Id

__all__ = ["DeviceOut", "blueprint", "device_out"]

blueprint = Blueprint("devices", __name__, url_prefix="/api/v1")
require_token(blueprint)

ROTATION_GRACE_S = 3600.0
"""How long a rotated-out secret keeps working."""


class NewDevice(msgspec.Struct, frozen=True, kw_only=True):
    name: Annotated[Label, Meta(min_length=1)]
    account_login: Label = ""
    """The MetaTrader account number."""
    broker: Label = ""


class DeviceOut(msgspec.Struct, frozen=True, kw_only=True):
    """A device as its owner sees it (never its secret), with its live status."""

    id: str
    user_id: str
    name: str
    account_login: str
    broker: str
    created_at: str
    """ISO 8601, UTC."""
    revoked: bool
    connected: bool
    stale: bool
    healthy: bool
    last_seen_ms: int | None


class Registered(msgspec.Struct, frozen=True, kw_only=True):
    device: DeviceOut
    secret: str
    """The device's HMAC secret: shown this once, store it in the EA's settings."""


class Rotated(msgspec.Struct, frozen=True, kw_only=True):
    device_id: str
    secret: str
    """The new secret (shown this once)."""
    previous_valid_s: float
    """The previous secrets keep working this many seconds more."""


class DeviceList(msgspec.Struct, frozen=True, kw_only=True):
    devices: list[DeviceOut]


class DevicesQuery(msgspec.Struct, frozen=True, kw_only=True):
    user_id: Id | None = None
    """Admins: one user's devices (by default an admin sees every device)."""


def device_out(context: GatewayContext, record: DeviceRecord) -> DeviceOut:
    """The registry's record and the device actor's live status (not connected if none)."""
    actor = context.node.devices.get(record.id)
    live = actor.view() if actor is not None else None
    return DeviceOut(
        id=record.id,
        user_id=record.user_id,
        name=record.name,
        account_login=record.account_login,
        broker=record.broker,
        created_at=record.created_at.isoformat(),
        revoked=record.revoked,
        connected=bool(live and live.connected),
        stale=bool(live and live.stale),
        healthy=live.healthy if live else True,
        last_seen_ms=live.last_seen_ms if live else None,
    )


def devices_in_scope(context: GatewayContext, user_id: str | None) -> list[DeviceRecord]:
    """The devices of ``user_id`` (None: every device), oldest first."""
    registry = context.registry
    found = list(registry.devices.values()) if user_id is None else registry.devices_of(user_id)
    return sorted(found, key=lambda d: (d.created_at, d.id))


def _owned(context: GatewayContext, device_id: str) -> DeviceRecord:
    """A device the caller may act on (404 if none, or somebody else's: the same answer)."""
    record = context.registry.devices.get(device_id)
    if record is None or not identity().may_act_for(record.user_id):
        raise NotFound("no such device")
    return record


@blueprint.post("/devices")
@bearer
@validate_request(NewDevice)
@document_response(Registered, 201)
@errors(400, 401, 413)
async def register_device(data: NewDevice) -> Any:
    """Register a device for the caller; the answer holds its secret, the only time it is shown."""
    who = identity()
    context = ctx()
    async with audited("device.register", "device", "", "201") as note:
        record, secret = await context.registry.register_device(
            who.user_id, data.name, data.account_login, data.broker
        )
        note.target_id = record.id
    return json_response(Registered(device=device_out(context, record), secret=secret), 201)


@blueprint.get("/devices")
@bearer
@validate_querystring(DevicesQuery)
@document_response(DeviceList, 200)
@errors(400, 401, 403)
async def list_devices(query_args: DevicesQuery) -> Any:
    """The caller's devices with their live status (admins: every device)."""
    context = ctx()
    user_id = scope_user(query_args.user_id)
    serve_here(user_id)  # the device actors' live state
    records = devices_in_scope(context, user_id)
    return json_response(DeviceList(devices=[device_out(context, d) for d in records]))


@blueprint.get("/devices/<device_id>")
@bearer
@document_response(DeviceOut, 200)
@errors(401, 404)
async def get_device(device_id: str) -> Any:
    """One of the caller's devices (404 for anyone else's)."""
    context = ctx()
    record = context.registry.devices.get(device_id)
    if record is None or not identity().may_act_for(record.user_id):
        raise NotFound("no such device")
    serve_here(record.user_id)  # the device actor's live state
    return json_response(device_out(context, record))


@blueprint.post("/devices/<device_id>/rotate")
@bearer
@document_response(Rotated, 200)
@errors(401, 404, 409)
async def rotate_secret(device_id: str) -> Any:
    """A new secret for the device; the current ones keep working for a grace period."""
    context = ctx()
    async with audited("device.rotate", "device", device_id, "200") as note:
        _owned(context, device_id)
        secret = await context.registry.rotate_secret(device_id, grace_s=ROTATION_GRACE_S)
        note.detail["grace_s"] = ROTATION_GRACE_S
    return json_response(
        Rotated(device_id=device_id, secret=secret, previous_valid_s=ROTATION_GRACE_S)
    )


@blueprint.post("/devices/<device_id>/revoke")
@bearer
@document_response(DeviceOut, 200)
@errors(401, 404)
async def revoke_device(device_id: str) -> Any:
    """Revoke the device: no handshake succeeds any more and its live session is closed."""
    context = ctx()
    async with audited("device.revoke", "device", device_id, "200") as note:
        record = _owned(context, device_id)
        serve_here(record.user_id)  # ends the device actor's session
        await context.registry.revoke(device_id)
        if context.node.devices.get(device_id) is not None:
            note.detail["session_closed"] = await close_device(context, device_id, "device revoked")
    return json_response(device_out(context, record))

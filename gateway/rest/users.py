"""Users: the caller's trading settings, and accounts an admin creates and disables.

Settings are the user's :class:`~engine.sizing.UserSettings` (sizing, late and deviation
limits, protective stops, drawdown guard). A change is stored first (the registry writes
Postgres) and then pushed into the live user actor, so the next decision and the next equity
report already use it; the 200 means both happened.

Disabling a user takes effect before the 200: its tokens are refused on the next request
(``gateway.rest.common.identity`` asks the registry), its live ``/ws/client`` streams and its
devices' sessions are closed, and neither it nor its devices can log in or connect again.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta
from quart import Blueprint
from quart_schema import document_response, validate_request

from actors.messages import ApplySettings, Reply
from engine.sizing import UserSettings
from gateway.access import close_user
from gateway.auth import require_role
from gateway.context import GatewayContext
from gateway.rest.auth import UserOut
from gateway.rest.common import AuditNote, audited, ctx, identity, require_token
from gateway.rest.docs import bearer, errors, json_response
from gateway.rest.placement import serve_here
from protocol.errors import Conflict, DecodeError

__all__ = ["blueprint", "check_settings"]

blueprint = Blueprint("users", __name__, url_prefix="/api/v1")
require_token(blueprint)

# field -> (lowest, highest, lowest allowed itself): what a sane trading setting can be.
_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "fixed_volume": (0.0, 1e6, False),
    "multiple": (0.0, 1e3, False),
    "risk_percent": (0.0, 100.0, False),
    "max_delay_ms": (0, 86_400_000, True),
    "max_deviation_pips": (0.0, 1e6, True),
    "pending_expiry_ms": (1_000, 30 * 86_400_000, True),
    "deviation_points": (0, 1_000_000, True),
    "disaster_distance_pips": (0.0, 1e6, False),
}


class UserStatus(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    username: str
    role: Literal["user", "admin"]
    disabled: bool


class NewUser(msgspec.Struct, frozen=True, kw_only=True):
    username: Annotated[
        str, Meta(min_length=1, max_length=64, pattern="^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
    ]
    password: Annotated[str, Meta(min_length=8, max_length=256)]
    role: Literal["user", "admin"] = "user"


def check_settings(settings: UserSettings) -> None:
    """Refuse numbers no account should trade with (a negative volume, a NaN, a 0 % risk).

    Raises:
        DecodeError: naming the first field out of its bounds (a 400).
    """
    for field, (low, high, inclusive) in _BOUNDS.items():
        value = getattr(settings, field)
        above_low = value >= low if inclusive else value > low
        if not (math.isfinite(value) and above_low and value <= high):
            side = "at least" if inclusive else "more than"
            raise DecodeError(
                f"settings.{field} must be {side} {low:g} and at most {high:g}", field=field
            )
    _check_rules(settings)


# A default rule's pips: (lowest, lowest allowed itself); at most _MAX_PIPS.
_RULE_BOUNDS: dict[str, tuple[float, bool]] = {
    "trailing.distance_pips": (0.0, False),
    "trailing.step_pips": (0.0, True),
    "trailing.activation_pips": (0.0, True),
    "break_even.trigger_pips": (0.0, False),
    "break_even.offset_pips": (0.0, True),
}
_MAX_PIPS = 1e6


def _check_rules(settings: UserSettings) -> None:
    """The default trailing and break-even rules (pips): finite, in bounds, able to act.

    Whether a rule suits a symbol's broker (its stops level) is judged when a position gets it.
    """
    for path, (low, inclusive) in _RULE_BOUNDS.items():
        group, name = path.split(".")
        rule = getattr(settings, group)
        if rule is None:
            continue
        value = getattr(rule, name)
        above_low = value >= low if inclusive else value > low
        if not (math.isfinite(value) and above_low and value <= _MAX_PIPS):
            side = "at least" if inclusive else "more than"
            raise DecodeError(
                f"settings.{path} must be {side} {low:g} and at most {_MAX_PIPS:g}", field=path
            )
    be = settings.break_even
    if be is not None and be.offset_pips >= be.trigger_pips:
        raise DecodeError(
            "settings.break_even.offset_pips must be less than trigger_pips (the SL moves "
            "behind the price that triggers it)",
            field="break_even.offset_pips",
        )


@blueprint.get("/me/settings")
@bearer
@document_response(UserSettings, 200)
@errors(401)
async def get_settings() -> Any:
    """The caller's trading settings."""
    return json_response(ctx().registry.user(identity().user_id).settings)


@blueprint.put("/me/settings")
@bearer
@validate_request(UserSettings)
@document_response(UserSettings, 200)
@errors(400, 401, 413)
async def put_settings(data: UserSettings) -> Any:
    """Replace the caller's trading settings (stored, then applied to the live actor)."""
    who = identity()
    serve_here(who.user_id)
    check_settings(data)
    context = ctx()
    async with audited("settings.update", "user", who.user_id, "200"):
        await context.registry.update_settings(who.user_id, data)
        applied: Reply[None] = Reply()
        context.node.user(who.user_id).deliver(ApplySettings(data, applied))
        await applied.wait()
    return json_response(data)


@blueprint.post("/users")
@bearer
@validate_request(NewUser)
@document_response(UserOut, 201)
@errors(400, 401, 403, 409, 413)
async def create_user(data: NewUser) -> Any:
    """Create a user (admins only)."""
    require_role(identity(), "admin")
    async with audited("user.create", "user", data.username, "201") as note:
        user = await ctx().registry.create_user(data.username, data.password, role=data.role)
        note.target_id = user.id
        note.detail["role"] = data.role
    return json_response(UserOut(id=user.id, username=user.username, role=user.role), 201)


async def _end_live(context: GatewayContext, user_id: str, note: AuditNote) -> None:
    """Close what a disabled user still has open: client streams, then device sessions."""
    streams, sessions = await close_user(context, user_id)
    note.detail["streams_closed"] = streams
    note.detail["sessions_closed"] = sessions


@blueprint.post("/users/<user_id>/disable")
@bearer
@document_response(UserStatus, 200)
@errors(401, 403, 404, 409)
async def disable_user(user_id: str) -> Any:
    """Disable a user (admins only): its tokens stop working at once, its live streams and
    device sessions are closed, and it cannot log in or connect a device until enabled."""
    who = identity()
    require_role(who, "admin")
    serve_here(user_id)
    context = ctx()
    async with audited("user.disable", "user", user_id, "200") as note:
        if user_id == who.user_id:
            raise Conflict("an admin cannot disable their own account")
        user = await context.registry.set_disabled(user_id, True)
        await _end_live(context, user_id, note)
    return json_response(
        UserStatus(id=user.id, username=user.username, role=user.role, disabled=True)
    )


@blueprint.post("/users/<user_id>/enable")
@bearer
@document_response(UserStatus, 200)
@errors(401, 403, 404)
async def enable_user(user_id: str) -> Any:
    """Enable a disabled user again (admins only): it can log in and connect its devices
    again. Its tokens issued before the disable are honoured again until they expire."""
    require_role(identity(), "admin")
    async with audited("user.enable", "user", user_id, "200"):
        user = await ctx().registry.set_disabled(user_id, False)
    return json_response(
        UserStatus(id=user.id, username=user.username, role=user.role, disabled=False)
    )

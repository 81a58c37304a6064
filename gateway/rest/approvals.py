"""Approvals: a user's decision on a signal, and the history of decisions.

A decision runs inside the user's actor (a :class:`~actors.messages.DecideSignal` request,
``UserCore.decide``), with the price board's current bid and ask and the clock read there,
so it is judged against the market at the moment it is taken. A signal the caller may not
see (not in its audience) is a 404, as for one that does not exist (a 403 would tell that it
does; an admin, who sees every signal, gets the core's 403). The core answers every other
case the API promises: a second decision on any version of the signal (409), and the
refusals of a trading rule (422 with the rule's code: ``guard_blocked``, ``late_signal``,
``price_deviation``, ``sizing_refused``, ``refused``). An expired signal is ``late_signal``
whatever the decision. An approval may override the lot size (``volume``), checked against
the instrument's min, max and step as typed.

Every attempt by an authenticated user is audited with its address and user agent, refusals
included; the 201 is sent once the audit entry, and with it the approval and the position it
opened, is committed.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta
from quart import Blueprint
from quart_schema import document_response, validate_querystring, validate_request

from actors.messages import DecideSignal, Reply
from engine.records import Approval, signal_key
from gateway.rest.common import Before, audited, caller, ctx, require_token, scope_user
from gateway.rest.docs import bearer, errors, json_response
from gateway.rest.placement import serve_here
from gateway.rest.signals import find_signal
from persistence import projection_reads
from persistence.projection_reads import ApprovalRow
from persistence.projections import to_time
from protocol.errors import DecodeError, NotFound
from protocol.types import Id

__all__ = ["blueprint"]

blueprint = Blueprint("approvals", __name__, url_prefix="/api/v1")
require_token(blueprint)


class DecisionIn(msgspec.Struct, frozen=True, kw_only=True):
    decision: Literal["approve", "reject"]
    volume: Annotated[float, Meta(gt=0, le=1_000_000)] | None = None
    """Approvals only: the lot size to open instead of what the sizing rule gives. It must be
    a whole number of the instrument's steps between its minimum and maximum (else 422
    ``sizing_refused`` with ``min``, ``max`` and ``step``); it is never rounded."""


class ApprovalOut(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    decision: Literal["approve", "reject"]
    decided_ms: int
    position_id: str | None
    """The position an approval opened (null for a rejection)."""
    signal: str = ""
    """``strategy/signal/version`` decided on."""
    expires_at_ms: int | None = None
    """When the opened position is closed by the signal's expiry (if the user wants that)."""


class DecisionOut(msgspec.Struct, frozen=True, kw_only=True):
    approval: ApprovalOut


class ApprovalList(msgspec.Struct, frozen=True, kw_only=True):
    approvals: list[ApprovalRow]


class ApprovalQuery(msgspec.Struct, frozen=True, kw_only=True):
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100
    before_ms: Before | None = None
    """Only decisions taken before this time (paging back through the history)."""
    user_id: Id | None = None
    """Admins: one user's decisions (others may only name themselves)."""


@blueprint.post("/signals/<strategy_id>/<signal_id>/<int:version>/decision")
@bearer
@validate_request(DecisionIn)
@document_response(DecisionOut, 201)
@errors(400, 401, 403, 404, 409, 413, 422)
async def decide(strategy_id: str, signal_id: str, version: int, data: DecisionIn) -> Any:
    """Approve (open a position) or reject a signal, for the caller."""
    who, address, agent = caller()
    serve_here(who.user_id)
    context = ctx()
    key = signal_key(strategy_id, signal_id, version)
    if data.volume is not None and data.decision != "approve":
        raise DecodeError("volume applies to an approval only", field="volume")
    async with audited("approval." + data.decision, "signal", key, "201") as note:
        saved = await find_signal(context, key)
        if not who.is_admin and who.user_id not in saved.signal.audience:
            raise NotFound("no such signal", signal=key[:200])  # as find_signal's
        decided: Reply[Approval] = Reply()
        context.node.user(who.user_id).deliver(
            DecideSignal(
                saved.signal, data.decision, str(uuid.uuid4()), address, agent, data.volume, decided
            )
        )
        approval = await decided.wait()
        note.detail.update(approval_id=approval.id, position_id=approval.position_id)
        if data.volume is not None:
            note.detail["volume"] = data.volume
    out = ApprovalOut(
        id=approval.id,
        decision=approval.decision,
        decided_ms=approval.decided_ms,
        position_id=approval.position_id,
        signal=approval.signal,
        expires_at_ms=approval.expires_at_ms,
    )
    return json_response(DecisionOut(approval=out), 201)


@blueprint.get("/approvals")
@bearer
@validate_querystring(ApprovalQuery)
@document_response(ApprovalList, 200)
@errors(400, 401, 403)
async def list_approvals(query_args: ApprovalQuery) -> Any:
    """The caller's decisions, newest first (admins: everyone's, or one user's)."""
    user_id = scope_user(query_args.user_id)
    approvals = await projection_reads.approvals(
        ctx().database, user_id, to_time(query_args.before_ms), query_args.limit
    )
    return json_response(ApprovalList(approvals=approvals))

"""Strategy signals: posted by strategy engines (HMAC-signed), read by the users they are for.

``POST /signals`` is authenticated by the strategy's signature, not by a user token
(docs/protocol.md, "Strategy signals"): ``X-Strategy-Id`` picks the strategy's secrets,
``X-Signature`` must verify over the raw body within the handshake window, and the body must
speak for that same strategy. An unknown strategy gets exactly the answer of a bad signature.
Signals are deduplicated by ``(strategy_id, signal_id, version)``: 201 the first time, 200 with
the signal recorded then for every repeat. A ``created_at_ms`` further ahead of the clock than
the signature window is refused (400 ``future_timestamp``, ``gateway.services.accept_signal``).

Reads come from the engine's live state (signals stay there for a week after they stop
mattering; in a cluster, from Postgres, where every node's signals are) and show a user only
the signals whose ``audience`` names them; anything else is a 404, so a signal's existence is
not revealed. Admins see every signal.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta
from quart import Blueprint, request
from quart_schema import document_headers, document_request, document_response, validate_querystring

from engine.records import SignalSaved, decision_key, signal_key
from gateway.auth import Identity
from gateway.context import GatewayContext
from gateway.rest.common import client_address, ctx, identity, require_token, user_agent
from gateway.rest.docs import bearer, errors, json_response
from gateway.rest.metrics import count_action
from gateway.rest.placement import serve_here
from gateway.services import accept_signal, audit
from protocol.codec import MAX_SIGNAL_BYTES, decode_signal
from protocol.common import Side
from protocol.device import OrderType
from protocol.errors import AuthError, DecodeError, FrameTooLarge, NotFound, UnknownPrincipal
from protocol.signals import Signal
from protocol.signing import SIGNATURE_HEADER, STRATEGY_HEADER, verify_signal_header

__all__ = ["SignalOut", "blueprint", "find_signal", "signal_out"]

blueprint = Blueprint("signals", __name__, url_prefix="/api/v1")
require_token(blueprint, exempt=("signals.post_signal",))

_UNKNOWN_STRATEGY_SECRET = [secrets.token_bytes(32)]
"""Verified against when the strategy is unknown, so that case costs what a real one does."""


class SignalOut(msgspec.Struct, frozen=True, kw_only=True):
    """A signal as its audience sees it, with the caller's own decision on it."""

    key: str
    """``strategy/signal/version``."""
    strategy_id: str
    signal_id: str
    version: int
    symbol: str
    side: Side
    order_type: OrderType
    entry: float
    sl: float | None
    tp: float | None
    volume: float | None
    risk_percent: float | None
    created_at_ms: int
    expires_at_ms: int | None
    comment: str
    decision: Literal["approve", "reject"] | None
    """The caller's decision on this signal (whichever version it was taken on)."""
    position_id: str | None
    """The position the caller's approval opened."""
    decided_version: int | None = None
    """The version the caller decided on (one decision covers every version of a signal)."""
    received_ms: int = 0


class SignalList(msgspec.Struct, frozen=True, kw_only=True):
    signals: list[SignalOut]


class SignalQuery(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["pending", "decided", "all"] = "pending"
    """``pending``: not expired, not decided by the caller, newest version only."""
    limit: Annotated[int, Meta(ge=1, le=1000)] = 200


class SignatureHeaders(msgspec.Struct, frozen=True, kw_only=True):
    x_strategy_id: str
    """The strategy that signs (its secrets verify the signature)."""
    x_signature: str
    """``t=<ms>,v1=<hex HMAC-SHA256>[,v1=...]`` over the raw body (docs/protocol.md)."""


def signal_out(saved: SignalSaved, user_id: str, context: GatewayContext) -> SignalOut:
    """The view of a recorded signal for ``user_id``."""
    s = saved.signal
    key = signal_key(s.strategy_id, s.signal_id, s.version)
    approval = context.node.state.approvals.get((user_id, decision_key(key)))
    return SignalOut(
        key=key,
        strategy_id=s.strategy_id,
        signal_id=s.signal_id,
        version=s.version,
        symbol=s.symbol,
        side=s.side,
        order_type=s.order_type,
        entry=s.entry,
        sl=s.sl,
        tp=s.tp,
        volume=s.volume,
        risk_percent=s.risk_percent,
        created_at_ms=s.created_at_ms,
        expires_at_ms=s.expires_at_ms,
        comment=s.comment,
        decision=approval.decision if approval else None,
        position_id=approval.position_id if approval else None,
        decided_version=int(approval.signal.rsplit("/", 1)[1]) if approval else None,
        received_ms=saved.received_ms,
    )


async def find_signal(context: GatewayContext, key: str) -> SignalSaved:
    """The recorded signal ``key`` (``context.signals``: in a cluster, one any node recorded).

    Raises:
        NotFound: no such signal (or it is older than the engine keeps).
        StorageError: the record cannot be read now.
    """
    saved = await context.signals.get(key)
    if saved is None:
        raise NotFound("no such signal", signal=key[:200])
    return saved


def _visible(who: Identity, signal: Signal) -> bool:
    return who.is_admin or who.user_id in signal.audience


@blueprint.post("/signals")
@document_headers(SignatureHeaders)
@document_request(Signal)
@document_response(SignalOut, 201)
@document_response(SignalOut, 200)
@errors(400, 401, 403, 413)
async def post_signal() -> Any:
    """Record a signed strategy signal (201 new; 200 a repeat, answered with the first one)."""
    context = ctx()
    strategy_id = request.headers.get(STRATEGY_HEADER, "")
    header = request.headers.get(SIGNATURE_HEADER, "")
    if not strategy_id or not header:
        raise AuthError(f"{STRATEGY_HEADER} and {SIGNATURE_HEADER} headers are required")
    body = await request.get_data(cache=True, as_text=False, parse_form_data=False)
    if len(body) > MAX_SIGNAL_BYTES:
        raise FrameTooLarge("signal body is too large", size=len(body), limit=MAX_SIGNAL_BYTES)
    known = context.strategies.get(strategy_id)
    verify_signal_header(
        header,
        body,
        strategy_id,
        known or _UNKNOWN_STRATEGY_SECRET,
        context.clock.now_ms(),
        context.settings.handshake_window_ms,
    )
    if not known:
        raise UnknownPrincipal("unknown strategy")
    incoming = decode_signal(body, strategy_id=strategy_id)
    if "\x00" in incoming.comment:  # valid JSON, but no database stores a NUL in text
        raise DecodeError("comment may not contain NUL characters")
    signal, new = await accept_signal(context, incoming)
    key = signal_key(signal.strategy_id, signal.signal_id, signal.version)
    status = 201 if new else 200
    count_action(context, "signal.create", str(status))
    await audit(
        context,
        actor_id=f"strategy:{strategy_id}",
        action="signal.create",
        target_type="signal",
        target_id=key,
        outcome=str(status),
        ip=client_address(),
        user_agent=user_agent(),
        audience=len(signal.audience),
    )
    saved = await find_signal(context, key)
    return json_response(signal_out(saved, "", context), status)


@blueprint.get("/signals")
@bearer
@validate_querystring(SignalQuery)
@document_response(SignalList, 200)
@errors(400, 401)
async def list_signals(query_args: SignalQuery) -> Any:
    """Signals for the caller (admins: every signal), newest first."""
    who = identity()
    serve_here(who.user_id)  # the caller's decisions are its partition's state
    context = ctx()
    now = context.clock.now_ms()
    approvals = context.node.state.approvals
    chosen: dict[str, SignalSaved] = {}
    for saved in await context.signals.recent(now, None if who.is_admin else who.user_id):
        signal = saved.signal
        key = signal_key(signal.strategy_id, signal.signal_id, signal.version)
        if not _visible(who, signal):
            continue
        decided = (who.user_id, decision_key(key)) in approvals
        if query_args.status == "decided" and not decided:
            continue
        if query_args.status == "pending":
            expired = signal.expires_at_ms is not None and signal.expires_at_ms <= now
            if decided or expired:
                continue
            # A newer version supersedes the older ones for whoever has not decided yet.
            earlier = chosen.get(decision_key(key))
            if earlier is not None and earlier.signal.version > signal.version:
                continue
            chosen[decision_key(key)] = saved
        else:
            chosen[key] = saved
    ordered = sorted(
        chosen.values(), key=lambda s: (s.signal.created_at_ms, s.received_ms), reverse=True
    )
    signals = [signal_out(s, who.user_id, context) for s in ordered[: query_args.limit]]
    return json_response(SignalList(signals=signals))


@blueprint.get("/signals/<strategy_id>/<signal_id>/<int:version>")
@bearer
@document_response(SignalOut, 200)
@errors(401, 404)
async def get_signal(strategy_id: str, signal_id: str, version: int) -> Any:
    """One signal, if the caller is in its audience (otherwise 404: existence is not told)."""
    who = identity()
    serve_here(who.user_id)  # the caller's decision is its partition's state
    context = ctx()
    saved = await find_signal(context, signal_key(strategy_id, signal_id, version))
    if not _visible(who, saved.signal):
        raise NotFound("no such signal")
    return json_response(signal_out(saved, who.user_id, context))

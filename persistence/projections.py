"""Projections: the journal's records as rows the REST API can query.

:func:`make_projection` returns the ``project`` function the
:class:`~persistence.journal_writer.JournalWriter` runs in each batch's transaction (inside a
savepoint: a failing projection never blocks the journal, and the tables can be rebuilt from
it). Statements run in dependency order, so a
position row exists before the commands and reconciliation entries that reference it, whatever
the order of the records in the batch; within one statement, rows keep record order, so the
last change of a position in a batch is the one that stays.

Prices are written as the wire's decimal numbers (integer points converted at the
instrument's digits); times as ``timestamptz``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from engine.instruments import Instrument
from engine.lifecycle import FINAL_STATES
from engine.positions import Position, position_document
from engine.records import (
    AlertRaised,
    ApprovalSaved,
    AuditRecorded,
    CommandIssued,
    CommandResolved,
    GuardSaved,
    LevelsMoved,
    PositionSaved,
    ReconciliationRecorded,
    Record,
    SignalSaved,
)

__all__ = ["SIGNAL_INSERT", "make_projection", "signal_row", "to_time"]

Statements = list[tuple[str, list[tuple[Any, ...]]]]

SIGNAL_INSERT = """
INSERT INTO signals (strategy_id, signal_id, version, symbol, side, payload, received_at,
                     expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (strategy_id, signal_id, version) DO NOTHING"""

_APPROVAL = """
INSERT INTO approvals (id, user_id, strategy_id, signal_id, signal_version, decision, decided_at,
                       expires_at, ip, user_agent)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (id) DO NOTHING"""

_POSITION = """
INSERT INTO positions (id, user_id, device_id, symbol, side, state, origin, volume, open_price,
                       sl, tp, ticket, opened_at, closed_at, close_price, close_reason, pl,
                       strategy_id, signal_id, signal_version, approval_id, updated_at, doc)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
        $20, $21, $22, $23)
ON CONFLICT (id) DO UPDATE SET
    state = EXCLUDED.state, volume = EXCLUDED.volume, open_price = EXCLUDED.open_price,
    sl = EXCLUDED.sl, tp = EXCLUDED.tp, ticket = EXCLUDED.ticket, opened_at = EXCLUDED.opened_at,
    closed_at = EXCLUDED.closed_at, close_price = EXCLUDED.close_price,
    close_reason = EXCLUDED.close_reason, pl = EXCLUDED.pl, updated_at = EXCLUDED.updated_at,
    doc = EXCLUDED.doc"""

_LEVELS = """
UPDATE positions SET sl = $2, tp = $3, updated_at = $4,
    doc = doc || jsonb_build_object('sl', $5::bigint, 'tp', $6::bigint, 'updated_ms', $7::bigint)
WHERE id = $1"""

_COMMAND = """
INSERT INTO commands (id, position_id, device_id, kind, payload, issued_at, deadline_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (id) DO UPDATE SET deadline_at = EXCLUDED.deadline_at, acked_at = NULL"""

_RESOLVED = """
UPDATE commands SET acked_at = $2, retcode = $3, category = $4, outcome = $5 WHERE id = $1"""

_RECONCILIATION = """
INSERT INTO reconciliation (device_id, position_id, kind, detail, created_at)
VALUES ($1, $2, $3, $4, $5)"""

_ALERT = """
INSERT INTO alerts (at, kind, level, user_id, device_id, symbol, position_id, message, detail)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"""

_AUDIT = """
INSERT INTO audit_log (at, actor_id, action, target_type, target_id, ip, user_agent, outcome,
                       detail)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"""

# Dependency order: a row is written after everything it references.
_ORDER = (
    SIGNAL_INSERT,
    _APPROVAL,
    _POSITION,
    _LEVELS,
    _COMMAND,
    _RESOLVED,
    _RECONCILIATION,
    _ALERT,
    _AUDIT,
)

_RESULT_CATEGORIES = {"done", "retryable", "final", "already_closed", "unknown"}


def to_time(ms: int | None) -> datetime | None:
    """Epoch milliseconds as an aware UTC datetime (None stays None)."""
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


_LAST_MS = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()) * 1000
"""The last whole second :func:`to_time` can represent, in milliseconds."""


def signal_row(saved: SignalSaved) -> tuple[Any, ...]:
    """The ``signals`` row of a recorded signal, in ``SIGNAL_INSERT``'s column order.

    ``payload`` is the whole :class:`~protocol.signals.Signal` (msgspec builtins), so the
    record reads back exactly (``persistence.signal_store``).
    """
    s = saved.signal
    return (
        s.strategy_id,
        s.signal_id,
        s.version,
        s.symbol,
        s.side.value,
        msgspec.to_builtins(s),
        to_time(saved.received_ms),
        # The wire allows any time up to 2**53 ms, past the last one Python's datetime holds:
        # an expiry that far is "never", stored as the last representable second.
        to_time(None if s.expires_at_ms is None else min(s.expires_at_ms, _LAST_MS)),
    )


def _inet(value: str) -> str | None:
    """A client address Postgres accepts as ``inet`` (None for anything else)."""
    try:
        return str(ipaddress.ip_address(value)) if value else None
    except ValueError:
        return None


def _split_signal(key: str | None) -> tuple[str | None, str | None, int | None]:
    if not key:
        return None, None, None
    strategy, signal, version = key.rsplit("/", 2)
    return strategy, signal, int(version)


def _price(instruments: Mapping[str, Instrument], symbol: str, points: int | None) -> float | None:
    """``points`` as a price in ``symbol``'s digits (points as they are for an unknown one)."""
    if points is None:
        return None
    instrument = instruments.get(symbol)
    return instrument.to_price(points) if instrument else points / 1.0


def _position_row(instruments: Mapping[str, Instrument], p: Position) -> tuple[Any, ...]:
    """The ``positions`` row of ``p``, in ``_POSITION``'s column order."""
    strategy, signal, version = _split_signal(p.signal_id)
    return (
        p.id,
        p.user_id,
        p.device_id,
        p.symbol,
        p.side.value,
        p.state.value,
        p.origin.value,
        p.volume,
        _price(instruments, p.symbol, p.open_price),
        _price(instruments, p.symbol, p.sl),
        _price(instruments, p.symbol, p.tp),
        p.ticket,
        to_time(p.open_time_ms),
        to_time(p.close_time_ms),
        _price(instruments, p.symbol, p.close_price),
        p.close_reason,
        p.realized_pl,
        strategy,
        signal,
        version,
        p.approval_id,
        to_time(p.updated_ms) or datetime.now(UTC),
        position_document(p),
    )


def _inserted(p: Position) -> tuple[Any, ...]:
    """The columns of ``p``'s row that only its INSERT sets (``_POSITION``)."""
    return (p.user_id, p.device_id, p.symbol, p.side, p.origin, p.signal_id, p.approval_id)


def _position_rows(
    instruments: Mapping[str, Instrument], saved: Iterable[tuple[Position, Position]]
) -> list[tuple[Any, ...]]:
    """The rows of each position's first and last save in a batch: the last's alone unless
    the first's INSERT would set a column differently (see ``make_projection``)."""
    rows = []
    for first, last in saved:
        if first is not last and _inserted(first) != _inserted(last):
            rows.append(_position_row(instruments, first))
        rows.append(_position_row(instruments, last))
    return rows


def make_projection(instruments: Mapping[str, Instrument]) -> Callable[[list[Record]], Statements]:
    """The projection of a batch of records, for ``JournalWriter(project=...)``."""

    # A level move carries no symbol: remember each position's (positions live long enough
    # that every move follows the position's first save through this same projection).
    symbols: dict[str, str] = {}

    def project(records: list[Record]) -> Statements:
        rows: dict[str, list[tuple[Any, ...]]] = {sql: [] for sql in _ORDER}
        # A position's saves in one batch (a close's CLOSING and CLOSED, under a burst) are
        # upserts, run in order before any other statement touches the row: the last one alone
        # leaves the same row (one row built and written instead of several) unless a column
        # that only the INSERT sets differs from the first's.
        saved: dict[str, tuple[Position, Position]] = {}
        for r in records:
            if isinstance(r, PositionSaved):
                p = r.position
                if p.state in FINAL_STATES:
                    symbols.pop(p.id, None)
                else:
                    symbols[p.id] = p.symbol
                first = saved.get(p.id)
                saved[p.id] = (p, p) if first is None else (first[0], p)
            elif isinstance(r, LevelsMoved):
                symbol = symbols.get(r.position_id, "")
                rows[_LEVELS].append(
                    (
                        r.position_id,
                        _price(instruments, symbol, r.sl),
                        _price(instruments, symbol, r.tp),
                        to_time(r.time_ms),
                        r.sl,
                        r.tp,
                        r.time_ms,
                    )
                )
            elif isinstance(r, CommandIssued):
                c = r.command
                rows[_COMMAND].append(
                    (
                        c.command_id,
                        r.position_id,
                        r.device_id,
                        c.__struct_config__.tag,
                        msgspec.to_builtins(c),
                        to_time(r.issued_ms),
                        to_time(c.deadline_ms),
                    )
                )
            elif isinstance(r, CommandResolved):
                category = r.outcome if r.outcome in _RESULT_CATEGORIES else None
                rows[_RESOLVED].append(
                    (r.command_id, to_time(r.time_ms), r.retcode, category, r.outcome)
                )
            elif isinstance(r, SignalSaved):
                rows[SIGNAL_INSERT].append(signal_row(r))
            elif isinstance(r, ApprovalSaved):
                a = r.approval
                strategy, signal, version = _split_signal(a.signal)
                rows[_APPROVAL].append(
                    (
                        a.id,
                        a.user_id,
                        strategy,
                        signal,
                        version,
                        a.decision,
                        to_time(a.decided_ms),
                        to_time(a.expires_at_ms),
                        _inet(a.ip),
                        a.user_agent or None,
                    )
                )
            elif isinstance(r, ReconciliationRecorded):
                e = r.entry
                rows[_RECONCILIATION].append(
                    (
                        e.device_id,
                        e.position_id,
                        e.kind,
                        {"detail": e.detail, "ticket": e.ticket},
                        to_time(e.time_ms),
                    )
                )
            elif isinstance(r, AlertRaised):
                a2 = r.alert
                rows[_ALERT].append(
                    (
                        to_time(a2.time_ms),
                        a2.kind,
                        a2.level.value,
                        a2.user_id,
                        a2.device_id,
                        a2.symbol,
                        a2.position_id,
                        a2.message,
                        {"value": a2.value, "threshold": a2.threshold},
                    )
                )
            elif isinstance(r, AuditRecorded):
                e2 = r.entry
                rows[_AUDIT].append(
                    (
                        to_time(e2.time_ms),
                        e2.actor_id,
                        e2.action,
                        e2.target_type,
                        e2.target_id,
                        _inet(e2.ip),
                        e2.user_agent or None,
                        e2.outcome,
                        e2.detail,
                    )
                )
            elif isinstance(r, GuardSaved):
                pass  # engine state only (in snapshots); nothing to query
        rows[_POSITION] = _position_rows(instruments, saved.values())
        return [(sql, rows[sql]) for sql in _ORDER if rows[sql]]

    return project

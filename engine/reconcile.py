"""Reconciliation: what a terminal's positions snapshot proves about the engine's positions.

A device sends its full positions snapshot on every (re)connect. :func:`reconcile` compares it
with the engine's positions on that device and returns :class:`Finding` values; the user core
turns them into transitions, commands and reconciliation records. Rules (docs/architecture.md,
"Close commands"):

=========================  ==================  ==========================================
engine state               terminal has it      terminal lacks it
=========================  ==================  ==========================================
UNKNOWN after an open      OPEN (confirmed)     REJECTED (the open never executed)
UNKNOWN after a close      resend, same id      CLOSED (closed while away)
OPEN                       check volume/levels  CLOSED (closed while away)
CLOSING / CLOSE_FAILED     nothing              CLOSED (closed while away)
PENDING_OPEN               OPEN (filled)        nothing (its open is still to come)
(none)                     list as EXTERNAL     -
=========================  ==================  ==========================================

A position found on the terminal is listed as EXTERNAL, not adopted: never armed, never sent a
command, its volume and SL/TP following the terminal's, until its user adopts it
(``engine.user.terminal.TerminalReconciler.adopt``); from then on it is checked like any other.

A position closed because the terminal lacks it is closed with its fill pending (the absence
proves the close, not its price): the device's ``deals`` message that follows the snapshot gives
it (``engine.user.terminal.TerminalReconciler.on_deals``).

UNKNOWN is never resolved by a blind resend: a close is resent only when the snapshot shows
the position still open (the resend carries the same command id, so it is harmless even if the
first one did execute). Terminal positions are matched by ticket first, then by the client id
the open put in the order comment.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import msgspec

from engine.instruments import Instrument
from engine.lifecycle import PositionState
from engine.positions import Position
from protocol.device import TerminalPosition
from protocol.ids import position_id_from_comment

__all__ = ["Finding", "reconcile"]

FindingKind = Literal[
    "open_confirmed",
    "open_not_found",
    "resend_close",
    "closed_while_away",
    "volume_mismatch",
    "levels_mismatch",
    "external_found",
]


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    kind: FindingKind
    position_id: str | None = None
    terminal: TerminalPosition | None = None
    detail: str = ""


def reconcile(
    positions: Iterable[Position],
    terminal: Iterable[TerminalPosition],
    instruments: Mapping[str, Instrument],
) -> list[Finding]:
    """Findings for one device. ``terminal`` symbols must already be canonical."""
    held = list(terminal)
    by_ticket = {t.ticket: t for t in held}
    by_client: dict[str, TerminalPosition] = {}
    for t in held:
        pid = position_id_from_comment(t.comment)
        if pid is not None:
            by_client.setdefault(pid, t)
    matched: set[int] = set()
    findings: list[Finding] = []

    for p in positions:
        found = by_ticket.get(p.ticket) if p.ticket is not None else None
        if found is None:
            found = by_client.get(p.id)
        if found is not None:
            matched.add(found.ticket)
        state = p.state
        if state is PositionState.UNKNOWN:
            if p.unknown_from is PositionState.PENDING_OPEN:
                kind: FindingKind = "open_confirmed" if found else "open_not_found"
            else:
                kind = "resend_close" if found else "closed_while_away"
            findings.append(Finding(kind=kind, position_id=p.id, terminal=found))
        elif state is PositionState.PENDING_OPEN:
            if found is not None:
                findings.append(Finding(kind="open_confirmed", position_id=p.id, terminal=found))
        elif state in (PositionState.OPEN, PositionState.CLOSING, PositionState.CLOSE_FAILED):
            if found is None:
                findings.append(Finding(kind="closed_while_away", position_id=p.id))
            elif state is PositionState.OPEN:
                findings.extend(_differences(p, found, instruments.get(p.symbol)))

    for t in held:
        if t.ticket not in matched:
            findings.append(
                Finding(
                    kind="external_found",
                    terminal=t,
                    detail=f"ticket {t.ticket} {t.symbol} {t.side.value}",
                )
            )
    return findings


def _differences(p: Position, t: TerminalPosition, instrument: Instrument | None) -> list[Finding]:
    """Volume and level divergences of a position both sides hold."""
    out: list[Finding] = []
    if abs(t.volume - p.volume) > 1e-9:
        out.append(
            Finding(
                kind="volume_mismatch",
                position_id=p.id,
                terminal=t,
                detail=f"engine {p.volume} lots, terminal {t.volume} lots",
            )
        )
    if instrument is not None:
        sl = None if t.sl is None else instrument.to_points(t.sl)
        tp = None if t.tp is None else instrument.to_points(t.tp)
        if not p.adopted:
            # Not the engine's to watch: it lists the broker's levels, whatever they are.
            diverges = (sl, tp) != (p.sl, p.tp)
        else:
            # Broker-side stops may legitimately be wider or present where ours are not (the
            # disaster backstop), or absent (stops the engine alone keeps), so only a stop the
            # broker holds TIGHTER than ours is a divergence: it would close the position first.
            diverges = (sl is not None and p.sl is not None and p.side.sign * (sl - p.sl) > 0) or (
                tp is not None and p.tp is not None and p.side.sign * (tp - p.tp) < 0
            )
        if diverges:
            out.append(
                Finding(
                    kind="levels_mismatch",
                    position_id=p.id,
                    terminal=t,
                    detail=f"engine sl={p.sl} tp={p.tp}, terminal sl={sl} tp={tp}",
                )
            )
    return out

"""The position state machine, as data.

Rules of operation
------------------
* A position is born PENDING_OPEN (we asked a device to open it) or OPEN (adopted: the terminal
  already holds it, origin EXTERNAL).
* Every change of state goes through :func:`next_state` with one :class:`PositionEvent`. The
  table below is the whole truth: a pair it does not list is illegal, raises
  :class:`~protocol.errors.IllegalTransition` and changes nothing.
* CLOSED and REJECTED are final. CLOSE_FAILED is parked: an operator (or the close-all guard)
  may try again, and the terminal may still report the position closed.
* UNKNOWN means "we sent a command and lost the link before its answer". It is left only by
  what the device's positions snapshot proves on reconnect, never by a blind resend:
  found open after a pending open -> OPEN; absent after a pending open -> REJECTED;
  still open after a pending close -> CLOSING (the same command id is sent again);
  absent after a pending close -> CLOSED.
* RETRY keeps the state: a retryable rejection of an open or a close leads to a new attempt.
"""

from __future__ import annotations

import enum

from protocol.errors import IllegalTransition

__all__ = ["FINAL_STATES", "LIVE_STATES", "PositionEvent", "PositionState", "next_state"]


class PositionState(enum.StrEnum):
    PENDING_OPEN = "pending_open"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
    REJECTED = "rejected"
    CLOSE_FAILED = "close_failed"
    UNKNOWN = "unknown"


class PositionEvent(enum.StrEnum):
    OPEN_FILLED = "open_filled"  # the broker filled our open (or a snapshot proves it)
    OPEN_REJECTED = "open_rejected"  # final refusal, retries exhausted, or absent on reconnect
    CLOSE_SENT = "close_sent"  # we sent (or re-send) a close command
    CLOSE_FILLED = "close_filled"  # the broker filled our close
    CLOSE_FAILED = "close_failed"  # final rejection of our close, or retries exhausted
    BROKER_CLOSED = "broker_closed"  # the terminal says it is gone: broker SL/TP, manual, absent
    RETRY = "retry"  # a retryable rejection; a new attempt follows
    LINK_LOST = "link_lost"  # the device went away while a command was outstanding


S, E = PositionState, PositionEvent

_TRANSITIONS: dict[tuple[PositionState, PositionEvent], PositionState] = {
    (S.PENDING_OPEN, E.OPEN_FILLED): S.OPEN,
    (S.PENDING_OPEN, E.OPEN_REJECTED): S.REJECTED,
    (S.PENDING_OPEN, E.RETRY): S.PENDING_OPEN,
    (S.PENDING_OPEN, E.LINK_LOST): S.UNKNOWN,
    (S.OPEN, E.CLOSE_SENT): S.CLOSING,
    (S.OPEN, E.BROKER_CLOSED): S.CLOSED,
    (S.CLOSING, E.CLOSE_FILLED): S.CLOSED,
    (S.CLOSING, E.BROKER_CLOSED): S.CLOSED,
    (S.CLOSING, E.CLOSE_FAILED): S.CLOSE_FAILED,
    (S.CLOSING, E.RETRY): S.CLOSING,
    (S.CLOSING, E.LINK_LOST): S.UNKNOWN,
    (S.CLOSE_FAILED, E.CLOSE_SENT): S.CLOSING,
    (S.CLOSE_FAILED, E.BROKER_CLOSED): S.CLOSED,
    (S.UNKNOWN, E.OPEN_FILLED): S.OPEN,
    (S.UNKNOWN, E.OPEN_REJECTED): S.REJECTED,
    (S.UNKNOWN, E.CLOSE_SENT): S.CLOSING,
    (S.UNKNOWN, E.BROKER_CLOSED): S.CLOSED,
}

del S, E

FINAL_STATES = frozenset({PositionState.CLOSED, PositionState.REJECTED})
"""States no event leaves."""

LIVE_STATES = frozenset(
    {PositionState.OPEN, PositionState.CLOSING, PositionState.UNKNOWN, PositionState.CLOSE_FAILED}
)
"""States in which the terminal may hold the position (it counts for exposure and P&L)."""


def next_state(state: PositionState, event: PositionEvent) -> PositionState:
    """The state ``event`` leads to from ``state``.

    Raises:
        IllegalTransition: the table has no such pair; the caller must change nothing.
    """
    try:
        return _TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(
            f"{event.value} is not allowed in state {state.value}",
            state=state.value,
            event=event.value,
        ) from None


def transitions() -> dict[tuple[PositionState, PositionEvent], PositionState]:
    """A copy of the table (for documentation and tests)."""
    return dict(_TRANSITIONS)

"""The trading log: every trading event at info, with its ids, written off the hot path.

The node notes each record it journals and each alert it publishes here (one ``deque.append``,
after the user actor has put its commands in the device outboxes); :meth:`TradeLog.run`, a
task of the node, turns them into log lines a slice at a time. So a fire costs the tick path
an append, not a formatted line, and a storm of fires is logged over the following scheduler
rounds instead of holding the loop. What is logged, by record:

* ``approval`` (``ApprovalSaved``): user_id, approval_id, signal, decision, position_id;
* ``command issued`` / ``command resolved``: command_id, position_id, device_id, the kind or
  outcome (a ``filled`` outcome is the broker's fill);
* a position's state changes (``PositionSaved``): ``position opening``, ``position opened``
  (with its fill price), ``stop fired`` (the engine's SL/TP, with the trigger price),
  ``position closing`` (any other close), ``position closed``, ``position rejected``, and
  ``close failed`` / ``position unknown`` as warnings;
* every published alert, at info (warning for ``warning`` and ``critical`` levels).

A burst larger than :data:`MAX_BACKLOG` is not kept whole: the overflow is counted and logged
as one line, so the log never holds memory the engine needs.
"""

from __future__ import annotations

import time
from collections import deque

import structlog
import trio

from engine.lifecycle import PositionState
from engine.positions import Position
from engine.records import ApprovalSaved, CommandIssued, CommandResolved, PositionSaved, Record
from protocol.common import Alert

__all__ = ["BUDGET_S", "MAX_BACKLOG", "SLICE", "TradeEvent", "TradeLog"]

TradeEvent = Record | Alert
"""What the log is handed: every journaled record (it picks the trading ones) and every alert."""

MAX_BACKLOG = 200_000
"""Events waiting to be logged at most; past it they are counted, not kept."""

SLICE = 2_000
"""Events logged per scheduler round at most."""

BUDGET_S = 0.00025
"""Time the log may take per scheduler round: rendering a line costs tens of microseconds, so a
count alone (2,000 lines) held the loop for ~60-100 ms a round after a burst, and the quotes and
closes behind it waited (``bench.engine``: tick_to_outbox p50 12.6 ms, storm 2.5 s). A quote
that arrives meanwhile waits at most about this long."""

_PERIOD_S = 0.1

_TERMINAL = frozenset({PositionState.CLOSED, PositionState.REJECTED})


class TradeLog:
    """Noted on the hot path (:meth:`note`), written by :meth:`run`."""

    def __init__(self) -> None:
        self._events: deque[TradeEvent] = deque()
        self._noted = trio.Event()
        """Set by the first event noted while the log is empty: an idle log waits on it, not on a
        timer (an idle node would otherwise wake ten times a second for nothing)."""
        self._states: dict[str, PositionState] = {}
        """The last state logged per live position (terminal ones are forgotten)."""
        self.overflow = 0
        self.log = structlog.get_logger().bind(component="trading")

    def note(self, event: TradeEvent) -> None:
        """A record or an alert to log later (never blocks, never formats)."""
        events = self._events
        if not events:
            self._noted.set()
        if len(events) < MAX_BACKLOG:
            events.append(event)
        else:
            self.overflow += 1

    async def run(self) -> None:
        """Write what was noted, a slice per round, until cancelled."""
        while True:
            if not self._events:
                self._noted = trio.Event()
                await self._noted.wait()
            await trio.sleep(_PERIOD_S)  # what the same burst notes meanwhile goes with it
            while self._events:
                # A short turn, then every other ready task runs before the next one: a
                # burst's closes and the quotes behind it wait at most BUDGET_S for the log.
                self.drain(SLICE, budget_s=BUDGET_S)
                await trio.lowlevel.checkpoint()

    def drain(self, limit: int | None = None, budget_s: float | None = None) -> int:
        """Log up to ``limit`` noted events now, for at most about ``budget_s`` seconds;
        returns how many."""
        events, done = self._events, 0
        deadline = None if budget_s is None else time.perf_counter() + budget_s
        while events and (limit is None or done < limit):
            self._write(events.popleft())
            done += 1
            # The clock is read every 16 lines: cheap next to rendering them.
            if deadline is not None and not done & 15 and time.perf_counter() >= deadline:
                break
        if self.overflow:
            self.log.warning(
                "trading events not logged: burst over the log backlog", count=self.overflow
            )
            self.overflow = 0
        return done

    def _write(self, event: TradeEvent) -> None:
        match event:
            case PositionSaved():
                self._position(event.position)
            case CommandIssued():
                command = event.command
                self.log.info(
                    "command issued",
                    kind=type(command).__name__.removesuffix("Command").lower(),
                    command_id=command.command_id,
                    position_id=event.position_id,
                    user_id=event.user_id,
                    device_id=event.device_id,
                )
            case CommandResolved():
                self.log.info(
                    "command resolved",
                    outcome=event.outcome,
                    command_id=event.command_id,
                    position_id=event.position_id,
                    device_id=event.device_id,
                    retcode=event.retcode,
                )
            case ApprovalSaved():
                a = event.approval
                self.log.info(
                    "approval",
                    decision=a.decision,
                    user_id=a.user_id,
                    approval_id=a.id,
                    signal=a.signal,
                    position_id=a.position_id,
                )
            case Alert():
                method = (
                    self.log.warning if event.level in {"warning", "critical"} else self.log.info
                )
                method(
                    "alert",
                    kind=event.kind,
                    level=str(event.level),
                    message=event.message,
                    user_id=event.user_id,
                    device_id=event.device_id,
                    symbol=event.symbol,
                    position_id=event.position_id,
                )
            case _:
                pass  # not a trading event of its own (levels moved, a signal saved...)

    def _position(self, p: Position) -> None:
        before = self._states.get(p.id)
        state = p.state
        if state in _TERMINAL:
            self._states.pop(p.id, None)
        else:
            self._states[p.id] = state
        if state == before:
            return  # levels moved, an attempt counted: not a trading event of its own
        ids = {
            "user_id": p.user_id,
            "position_id": p.id,
            "device_id": p.device_id,
            "symbol": p.symbol,
            "command_id": p.command_id,
        }
        if state is PositionState.PENDING_OPEN:
            self.log.info("position opening", side=str(p.side), volume=p.volume, **ids)
        elif state is PositionState.OPEN:
            self.log.info("position opened", price_points=p.open_price, ticket=p.ticket, **ids)
        elif state is PositionState.CLOSING:
            if p.close_reason in {"sl", "tp"}:
                self.log.info(
                    "stop fired", reason=p.close_reason, trigger_points=p.trigger_price, **ids
                )
            else:
                self.log.info("position closing", reason=p.close_reason, **ids)
        elif state is PositionState.CLOSED:
            self.log.info(
                "position closed", reason=p.close_reason, price_points=p.close_price, **ids
            )
        elif state is PositionState.REJECTED:
            self.log.info("position rejected", **ids)
        else:
            self.log.warning("position " + str(state).replace("_", " "), **ids)

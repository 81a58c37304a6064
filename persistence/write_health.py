"""How a write-behind writer reports its health: outages, recoveries, failing projections.

The cluster journal (:mod:`persistence.partition_journal`) keeps its counters and raises its
alerts through one :class:`WriteHealth`; the alerts are the single-node journal's
(``journal_unavailable``, ``journal_recovered``, ``journal_projection_failed``), so a dashboard
reads both modes alike. Once per outage and once on recovery, never once per failed attempt.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import trio

from protocol.common import Alert, AlertLevel

__all__ = ["WriteHealth"]


class WriteHealth:
    """Counters and alerts of one writer; call it from the trio thread.

    Attributes: ``healthy`` (False during an outage), ``write_errors`` (failed attempts),
    ``projection_errors``.
    """

    def __init__(self, log: Any, on_alert: Callable[[Alert], None] | None) -> None:
        self._log = log
        self._on_alert = on_alert
        self._outage_since: float | None = None  # trio clock
        self._projection_failing = False
        self.healthy = True
        self.write_errors = 0
        self.projection_errors = 0

    def write_failed(self, error: str, pending: int) -> None:
        self.write_errors += 1
        if self._outage_since is not None:
            return
        self._outage_since = trio.current_time()
        self.healthy = False
        self._log.error("journal writes failing; buffering", error=error)
        self._alert(
            "journal_unavailable",
            AlertLevel.CRITICAL,
            "Postgres is unavailable: journal writes are failing and records are buffered"
            " in memory",
            float(pending),
        )

    def write_succeeded(self) -> None:
        if self._outage_since is None:
            return
        outage_s = trio.current_time() - self._outage_since
        self._outage_since = None
        self.healthy = True
        self._log.info("journal writes recovered", outage_s=round(outage_s, 3))
        self._alert(
            "journal_recovered",
            AlertLevel.INFO,
            f"Postgres is back after {outage_s:.1f} s; the journal is catching up",
            outage_s,
        )

    def projection_failed(self, error: str, pending: int) -> None:
        self.projection_errors += 1
        self._log.error("journal projection failed", error=error)
        if not self._projection_failing:
            self._projection_failing = True
            self._alert(
                "journal_projection_failed",
                AlertLevel.WARNING,
                f"a projection of journal records failed; the journal is intact: {error}",
                float(pending),
            )

    def projection_succeeded(self) -> None:
        if self._projection_failing:
            self._projection_failing = False
            self._log.info("journal projection succeeds again")

    def _alert(self, kind: str, level: AlertLevel, message: str, value: float) -> None:
        if self._on_alert is None:
            return
        now_ms = time.time_ns() // 1_000_000
        alert = Alert(kind=kind, level=level, message=message, time_ms=now_ms, value=value)
        try:
            self._on_alert(alert)
        except Exception as exc:  # an alert sink must never stop the journal
            self._log.error("journal alert callback failed", error=repr(exc), kind=kind)

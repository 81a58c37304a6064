"""Risk guards: drawdown per account and market condition per symbol.

Guards only decide. They take observations (equity, quotes, the time) and return
:class:`~protocol.common.Alert` values and :class:`GuardDecision` values; actors carry them out
(send alerts, refuse opens, close positions). Alerts are emitted on a change of level, not on
every observation, so a guard sitting at WARNING does not flood anyone.

Drawdown (the old platform's thresholds): ``(peak - equity) / peak`` below 10 % is normal,
10-15 % a warning, 15 % and over critical. At critical the configured action applies:
``alert`` only, ``block_opens`` (no new positions until back under the warning level), or
``close_all`` (block opens and close every live position once).

Market condition: a spread far above its recent median, a mid jump beyond a threshold, and a
feed silent for too long.
"""

from __future__ import annotations

import enum
from bisect import bisect_left, insort
from collections import deque

import msgspec

from protocol.common import Alert, AlertLevel

__all__ = [
    "DrawdownGuard",
    "DrawdownLimits",
    "GuardDecision",
    "GuardLevel",
    "MarketGuard",
    "MarketLimits",
]


class GuardLevel(enum.IntEnum):
    NORMAL = 0
    WARNING = 1
    CRITICAL = 2


class GuardDecision(enum.StrEnum):
    BLOCK_OPENS = "block_opens"
    ALLOW_OPENS = "allow_opens"
    CLOSE_ALL = "close_all"


class DrawdownLimits(msgspec.Struct, frozen=True, kw_only=True):
    warning: float = 0.10
    critical: float = 0.15
    on_critical: str = "block_opens"
    """``alert``, ``block_opens`` or ``close_all``."""

    def __post_init__(self) -> None:
        if not 0 < self.warning < self.critical < 1:
            raise ValueError("drawdown thresholds must satisfy 0 < warning < critical < 1")
        if self.on_critical not in {"alert", "block_opens", "close_all"}:
            raise ValueError("on_critical must be alert, block_opens or close_all")


_ALERT_LEVEL = {
    GuardLevel.NORMAL: AlertLevel.INFO,
    GuardLevel.WARNING: AlertLevel.WARNING,
    GuardLevel.CRITICAL: AlertLevel.CRITICAL,
}


class DrawdownGuard:
    """Drawdown of one account's equity against its peak."""

    def __init__(self, limits: DrawdownLimits | None = None, user_id: str | None = None) -> None:
        self.limits = limits or DrawdownLimits()
        self.user_id = user_id
        self.peak: float | None = None
        self.drawdown = 0.0
        self.level = GuardLevel.NORMAL
        self.opens_blocked = False

    def restore(self, peak: float | None, level: int, opens_blocked: bool) -> None:
        """Take back a saved guard (a restart). The next :meth:`update` re-derives the block
        from the live level, so a block saved at critical cannot outlive a recovery."""
        self.peak = peak
        self.level = GuardLevel(level)
        self.opens_blocked = opens_blocked

    def update(self, equity: float, now_ms: int) -> tuple[list[Alert], list[GuardDecision]]:
        """Record an equity observation; return the alerts and decisions it causes.

        The block follows the live level, not only its changes: critical blocks (unless the
        action is ``alert``), normal allows, warning keeps what was (the hysteresis). Deciding
        on level changes alone let a block restored after a restart stick forever, because the
        restored level and the live one agreed while the block disagreed with both.
        """
        if self.peak is None or equity > self.peak:
            self.peak = equity
        self.drawdown = (self.peak - equity) / self.peak if self.peak > 0 else 0.0
        limits = self.limits
        if self.drawdown >= limits.critical:
            level = GuardLevel.CRITICAL
        elif self.drawdown >= limits.warning:
            level = GuardLevel.WARNING
        else:
            level = GuardLevel.NORMAL
        alerts: list[Alert] = []
        decisions: list[GuardDecision] = []
        if level != self.level:
            threshold = {
                GuardLevel.NORMAL: limits.warning,
                GuardLevel.WARNING: limits.warning,
                GuardLevel.CRITICAL: limits.critical,
            }[level]
            alerts.append(
                Alert(
                    kind="drawdown",
                    level=_ALERT_LEVEL[level],
                    time_ms=now_ms,
                    user_id=self.user_id,
                    message=f"drawdown {self.drawdown:.1%} is {level.name.lower()}",
                    value=self.drawdown,
                    threshold=threshold,
                )
            )
            if level is GuardLevel.CRITICAL and limits.on_critical == "close_all":
                decisions.append(GuardDecision.CLOSE_ALL)  # once per fall into critical
            self.level = level
        if level is GuardLevel.CRITICAL and limits.on_critical != "alert":
            if not self.opens_blocked:
                decisions.insert(0, GuardDecision.BLOCK_OPENS)
                self.opens_blocked = True
        elif level is GuardLevel.NORMAL and self.opens_blocked:
            decisions.append(GuardDecision.ALLOW_OPENS)
            self.opens_blocked = False
        return alerts, decisions


class MarketLimits(msgspec.Struct, frozen=True, kw_only=True):
    spread_multiple: float = 5.0
    """Alert when the spread exceeds this multiple of its recent median."""
    spread_window: int = 500
    """Quotes in the rolling spread median."""
    jump: float = 0.003
    """Alert when the mid moves more than this fraction in one quote (0.3 %)."""
    silence_ms: int = 30_000
    """Alert when no quote arrived for this long."""


class MarketGuard:
    """Market condition of one symbol.

    Runs on every quote, so it is kept cheap: the spread median is exact over a rolling window
    kept sorted with ``bisect`` (an insert and a delete of a few hundred floats, about two
    microseconds), and alert messages are only formatted when an alert is raised.
    """

    def __init__(self, symbol: str, limits: MarketLimits | None = None) -> None:
        self.symbol = symbol
        self.limits = limits or MarketLimits()
        self._window: deque[float] = deque()
        self._sorted: list[float] = []
        self._last_mid: float | None = None
        self.last_quote_ms: int | None = None
        self._alerting: set[str] = set()

    @property
    def alerting(self) -> frozenset[str]:
        """The market conditions alerting now (``spread``, ``price_jump``...), read-only."""
        return frozenset(self._alerting)

    @property
    def median_spread(self) -> float | None:
        ordered = self._sorted
        return ordered[len(ordered) // 2] if ordered else None

    def on_quote(self, bid: float, ask: float, now_ms: int) -> list[Alert]:
        limits = self.limits
        spread = ask - bid
        mid = (bid + ask) * 0.5
        window, ordered = self._window, self._sorted
        window.append(spread)
        insort(ordered, spread)
        if len(window) > limits.spread_window:
            del ordered[bisect_left(ordered, window.popleft())]
        self.last_quote_ms = now_ms
        alerting = self._alerting
        alerts: list[Alert] = []
        median = ordered[len(ordered) // 2]
        wide = len(ordered) >= 20 and median > 0 and spread > limits.spread_multiple * median
        if wide != ("spread" in alerting):
            self._edge(
                alerts,
                "spread",
                wide,
                now_ms,
                spread,
                limits.spread_multiple * median,
                f"spread {spread:g} is over {limits.spread_multiple:g}x its median {median:g}",
            )
        last = self._last_mid
        self._last_mid = mid
        if last is not None and last > 0 and abs(mid - last) > limits.jump * last:
            move = abs(mid - last) / last
            alerts.append(
                Alert(
                    kind="price_jump",
                    level=AlertLevel.WARNING,
                    time_ms=now_ms,
                    symbol=self.symbol,
                    value=move,
                    threshold=limits.jump,
                    message=f"{self.symbol} moved {move:.2%} in one quote",
                )
            )
        if alerting:
            alerting.discard("feed_silent")
        return alerts

    def check_silence(self, now_ms: int) -> list[Alert]:
        """Call periodically: an alert when the feed has been silent too long (once per gap)."""
        if self.last_quote_ms is None:
            return []
        silent = now_ms - self.last_quote_ms > self.limits.silence_ms
        alerts: list[Alert] = []
        self._edge(
            alerts,
            "feed_silent",
            silent,
            now_ms,
            float(now_ms - self.last_quote_ms),
            float(self.limits.silence_ms),
            f"no {self.symbol} quote for {(now_ms - self.last_quote_ms) / 1000:.0f} s",
            recover=False,
        )
        return alerts

    def _edge(
        self,
        alerts: list[Alert],
        kind: str,
        active: bool,
        now_ms: int,
        value: float,
        threshold: float,
        message: str,
        *,
        recover: bool = True,
    ) -> None:
        """Alert when a condition starts (and, if ``recover``, an INFO when it ends)."""
        if active and kind not in self._alerting:
            self._alerting.add(kind)
            alerts.append(
                Alert(
                    kind=kind,
                    level=AlertLevel.WARNING,
                    time_ms=now_ms,
                    symbol=self.symbol,
                    value=value,
                    threshold=threshold,
                    message=message,
                )
            )
        elif not active and kind in self._alerting and recover:
            self._alerting.discard(kind)
            alerts.append(
                Alert(
                    kind=kind,
                    level=AlertLevel.INFO,
                    time_ms=now_ms,
                    symbol=self.symbol,
                    value=value,
                    threshold=threshold,
                    message=f"{self.symbol} {kind} back to normal",
                )
            )

"""The notifier's queue: bounded, drop-oldest with a count, and it never takes what nobody
subscribed to (an offer is a dictionary lookup and an append; it never waits)."""

from __future__ import annotations

import pytest

from actors.clock import WallClock
from engine.instruments import DEFAULT_INSTRUMENTS
from engine.notices import Notice
from engine.positions import Position
from gateway.notifications import NotificationsIn, NotificationStore, check_webhook_url
from gateway.notifier import Notifier, NotifierConfig
from protocol.common import Alert, AlertLevel, Side
from protocol.errors import DecodeError


def _notice(n: int, user: str = "u1") -> Notice:
    p = Position(
        id=f"p{n}",
        user_id=user,
        device_id="d1",
        account="1",
        symbol="XAUUSD",
        side=Side.BUY,
        volume=0.1,
    )
    return Notice("close", p)


async def _notifier(events: list[str], queue: int = 3) -> Notifier:
    store = NotificationStore()
    await store.update(
        "u1",
        NotificationsIn(events=events, webhook_url="https://hooks.example.com/x"),  # type: ignore[arg-type]
    )
    return Notifier(store, DEFAULT_INSTRUMENTS, WallClock(), NotifierConfig(queue=queue))


async def test_a_full_queue_drops_the_oldest_and_counts_it() -> None:
    notifier = await _notifier(["close"])
    notifier.offer("u1", [_notice(n) for n in range(5)])
    assert notifier.depth == 3 and notifier.stats.dropped == 2
    assert [item.position.id for item in notifier._queue] == ["p2", "p3", "p4"]  # type: ignore[union-attr]


async def test_only_what_the_user_subscribed_to_is_queued() -> None:
    notifier = await _notifier(["alert"], queue=10)
    notifier.offer("u1", [_notice(1)])  # closes not subscribed
    notifier.offer("u2", [_notice(2, "u2")])  # no settings at all
    alert = Alert(kind="drawdown", level=AlertLevel.WARNING, message="m", time_ms=1)
    stale = Alert(
        kind="device_stale", level=AlertLevel.WARNING, message="m", time_ms=1, user_id="u1"
    )
    notifier.offer_alerts([alert, stale])  # a market alert; a device alert not subscribed
    assert notifier.depth == 0
    notifier.offer_alerts(
        [Alert(kind="drawdown", level=AlertLevel.WARNING, message="m", time_ms=1, user_id="u1")]
    )
    assert notifier.depth == 1 and notifier.stats.dropped == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://localhost:8000/x",
        "http://10.1.2.3/x",
        "http://[::1]/x",
        "http://[::ffff:192.168.0.1]/x",
        "http://169.254.169.254/latest/meta-data",
        "ftp://example.com/x",
        "https://user:pw@example.com/x",
        "example.com/x",
        "http://example.com:99999/x",
    ],
)
def test_internal_and_malformed_webhook_urls_are_refused(url: str) -> None:
    with pytest.raises(DecodeError):
        check_webhook_url(url, allow_internal=False)


def test_a_public_url_is_accepted_and_internal_ones_when_allowed() -> None:
    check_webhook_url("https://hooks.example.com/tripwire?x=1", allow_internal=False)
    check_webhook_url("http://127.0.0.1:9000/hook", allow_internal=True)

"""Notifications end to end: a real engine, a signed device over ``/ws/device`` that executes
the commands, and local HTTP servers standing in for the user's webhook and the Bot API.

An approved signal fills and its SL fires: the webhook receives both, signed (checked with the
repo's own verifier), and the fake Bot API a ``sendMessage`` for the user's chat. A hanging
webhook or a failing one delays nothing: the device gets its close and the position closes; a
failing endpoint is retried with backoff, then given up and counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from gateway.notifications import NotificationStore
from gateway.runtime import run
from protocol.closecodes import CloseCode
from protocol.errors import BadSignature
from protocol.notifications import USER_HEADER, decode_notification, verify_notification
from sim.ea import SimulatedEA
from sim.paper_terminal import PaperConfig, PaperTerminal
from tests.e2e.conftest import Engine, engine_settings
from tests.e2e.helpers import (
    GOLD_ASK,
    decision_url,
    make_signal,
    now_ms,
    post_signal,
    quote,
    wait_for,
)
from tests.e2e.receivers import Receiver

BOT_TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawZ"
CHAT_ID = "-1001234567890"


async def _engine(nursery: trio.Nursery, pg_dsn: str, tmp_path: Path, **overrides: Any) -> Engine:
    values: dict[str, Any] = dict(
        notify_private_urls=True,  # the stand-ins live on 127.0.0.1
        notify_backoff_s=0.05,
        notify_backoff_cap_s=0.2,
        notify_timeout_s=2.0,
    )
    values.update(overrides)
    settings = engine_settings(tmp_path, pg_dsn, **values)
    ctx = (await nursery.start(run, settings)).gateway
    return Engine(ctx, f"http://127.0.0.1:{settings.port}", f"ws://127.0.0.1:{settings.port}")


async def _configure(engine: Engine, token: str, webhook: str, telegram: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"webhook_url": webhook + "/hook"}
    if telegram:
        body |= {"telegram_chat_id": CHAT_ID, "telegram_bot_token": BOT_TOKEN}
    async with engine.client(token) as http:
        answer = await http.put("/api/v1/me/notifications", json=body)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def _device(engine: Engine, nursery: trio.Nursery, user_id: str) -> SimulatedEA:
    record, secret = await engine.ctx.registry.register_device(user_id, "MT5")

    def price(symbol: str) -> tuple[float, float] | None:
        q = engine.node.prices.get(symbol)
        return None if q is None else (q[0], q[1])

    terminal = PaperTerminal(engine.node.instruments, price, PaperConfig(latency_ms=1))
    ea = SimulatedEA(engine.ws_url + "/ws/device", record.id, secret, terminal, encoding="json")
    await nursery.start(ea.run)
    assert ea.welcome is not None, ea.errors
    quote(engine)
    await wait_for(lambda: engine.node.users[user_id].core.devices.get(record.id))
    return ea


async def _open_then_stop_out(engine: Engine, token: str, user_id: str, ea: SimulatedEA) -> str:
    """Approve a signal, wait for the fill, fire its SL, wait for the close; the position id."""
    quote(engine)  # back at the signal's entry
    async with engine.client(token) as http:
        signal = make_signal([user_id], signal_id=f"sig-{now_ms()}")
        assert (await post_signal(http, signal)).status_code == 201
        decided = await http.post(decision_url(signal), json={"decision": "approve"})
        assert decided.status_code == 201, decided.text
        position_id = str(decided.json()["approval"]["position_id"])

        async def state() -> str:
            return str((await http.get(f"/api/v1/positions/{position_id}")).json().get("state"))

        await wait_for(lambda: _equals(state, "open"))
        quote(engine, bid=GOLD_ASK - 8, ask=GOLD_ASK - 7.5)  # through the SL (entry - 5)
        await wait_for(lambda: _equals(state, "closed"))
    assert [type(c).__name__ for c in ea.commands] == ["OpenCommand", "CloseCommand"]
    return position_id


async def _equals(get: Any, expected: str) -> bool:
    return bool(await get() == expected)


def _verified(request: Any, user_id: str, secret: str) -> Any:
    assert request.method == "POST" and request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    assert request.headers[USER_HEADER.lower()] == user_id
    verify_notification(
        request.headers["x-signature"], request.body, user_id, [secret.encode()], now_ms()
    )
    with pytest.raises(BadSignature):  # the signature covers the body
        verify_notification(
            request.headers["x-signature"],
            request.body + b" ",
            user_id,
            [secret.encode()],
            now_ms(),
        )
    return decode_notification(request.body)


async def test_fill_and_sl_close_reach_the_webhook_signed_and_the_bot_api(
    nursery: trio.Nursery, pg_dsn: str, tmp_path: Path
) -> None:
    hook = await Receiver().start(nursery)
    bot = await Receiver().start(nursery)
    engine = await _engine(nursery, pg_dsn, tmp_path, notify_telegram_api=bot.url)
    alice, token = await engine.user("alice")
    configured = await _configure(engine, token, hook.url, telegram=True)
    secret = configured["webhook_secret"]
    assert configured["webhook_secret_set"] and configured["telegram_bot_token_set"]
    assert configured["events"] == ["fill", "close", "alert", "device_offline"]
    ea = await _device(engine, nursery, alice)

    position_id = await _open_then_stop_out(engine, token, alice, ea)

    await wait_for(lambda: len(hook.requests) >= 2 and len(bot.requests) >= 2)
    fill, close = (_verified(r, alice, secret) for r in hook.requests[:2])
    assert (fill.id, fill.kind, fill.event) == (f"{position_id}.fill", "fill", "fill")
    assert fill.position is not None and fill.position.state == "open"
    assert (close.id, close.kind) == (f"{position_id}.close", "close")
    assert close.position is not None and close.position.close_reason == "sl"
    assert close.position.pl is not None and close.position.pl < 0
    assert close.user_id == alice and "SL" in close.text

    for request, expected in zip(bot.requests[:2], (fill, close), strict=True):
        assert request.path == f"/bot{BOT_TOKEN}/sendMessage"
        sent = request.json()
        assert sent["chat_id"] == CHAT_ID and sent["text"] == expected.text

    stats = engine.ctx.notifier.stats
    await wait_for(lambda: stats.delivered["webhook"] == 2 and stats.delivered["telegram"] == 2)
    assert stats.failed == {} and stats.dropped == 0
    async with engine.client(token) as http:
        metrics = (await http.get("/metrics")).text
        read = (await http.get("/api/v1/me/notifications")).json()
    assert 'tripwire_notifications_delivered_total{channel="webhook"} 2.0' in metrics
    assert "tripwire_notifications_dropped_total 0.0" in metrics
    # Secrets are never read back; the settings survive a restart (Postgres).
    assert read["webhook_secret"] is None and BOT_TOKEN not in str(read)
    reloaded = NotificationStore(engine.ctx.db)
    await reloaded.load()
    stored = reloaded.get(alice)
    assert stored is not None and stored.webhook_secret == secret.encode()
    assert stored.telegram_token == BOT_TOKEN and stored.telegram_chat_id == CHAT_ID


async def test_a_hanging_webhook_never_delays_a_close(
    nursery: trio.Nursery, pg_dsn: str, tmp_path: Path
) -> None:
    hook = await Receiver(mode="hang").start(nursery)
    # A timeout longer than the test: the webhook's requests stay in flight throughout.
    engine = await _engine(nursery, pg_dsn, tmp_path, notify_timeout_s=60.0)
    alice, token = await engine.user("alice")
    await _configure(engine, token, hook.url, telegram=False)
    ea = await _device(engine, nursery, alice)

    position_id = await _open_then_stop_out(engine, token, alice, ea)

    # The close went out and the position closed while the fill's POST was (still) held.
    await wait_for(lambda: hook.held >= 2)
    assert [decode_notification(r.body).id for r in hook.requests[:2]] == [
        f"{position_id}.fill",
        f"{position_id}.close",
    ]
    stats = engine.ctx.notifier.stats
    assert stats.delivered["webhook"] == 0 and stats.failed["webhook"] == 0


async def test_a_failing_webhook_is_retried_then_given_up_and_nothing_else_is_affected(
    nursery: trio.Nursery, pg_dsn: str, tmp_path: Path
) -> None:
    failing = await Receiver(mode="fail", status=503).start(nursery)
    healthy = await Receiver().start(nursery)
    bot = await Receiver().start(nursery)
    engine = await _engine(
        nursery, pg_dsn, tmp_path, notify_attempts=3, notify_telegram_api=bot.url
    )
    alice, alice_token = await engine.user("alice")
    bob, bob_token = await engine.user("bob")
    await _configure(engine, alice_token, failing.url, telegram=True)
    bob_secret = (await _configure(engine, bob_token, healthy.url, telegram=False))[
        "webhook_secret"
    ]
    alice_ea = await _device(engine, nursery, alice)
    bob_ea = await _device(engine, nursery, bob)

    alice_position = await _open_then_stop_out(engine, alice_token, alice, alice_ea)
    bob_position = await _open_then_stop_out(engine, bob_token, bob, bob_ea)

    stats = engine.ctx.notifier.stats
    await wait_for(lambda: stats.failed["webhook"] == 2)  # alice's fill and close
    # Each tried exactly notify_attempts times, every attempt freshly signed.
    ids = [decode_notification(r.body).id for r in failing.requests]
    assert sorted(ids) == sorted([f"{alice_position}.fill"] * 3 + [f"{alice_position}.close"] * 3)
    assert stats.retries >= 4
    # Alice's other channel and Bob's webhook were served as usual.
    await wait_for(lambda: stats.delivered["telegram"] == 2 and stats.delivered["webhook"] == 2)
    assert [_verified(r, bob, bob_secret).id for r in healthy.requests] == [
        f"{bob_position}.fill",
        f"{bob_position}.close",
    ]
    async with engine.client(alice_token) as http:
        metrics = (await http.get("/metrics")).text
    assert 'tripwire_notifications_failed_total{channel="webhook"} 2.0' in metrics


async def test_a_device_going_silent_is_notified(
    nursery: trio.Nursery, pg_dsn: str, tmp_path: Path
) -> None:
    hook = await Receiver().start(nursery)
    engine = await _engine(nursery, pg_dsn, tmp_path, device_heartbeat_s=1, device_stale_after_s=2)
    alice, token = await engine.user("alice")
    async with engine.client(token) as http:
        answer = await http.put(
            "/api/v1/me/notifications",
            json={"webhook_url": hook.url + "/hook", "events": ["device_offline"]},
        )
    secret = answer.json()["webhook_secret"]
    ea = await _device(engine, nursery, alice)
    # The session ends (from the server's side) and the EA is gone: nothing more is heard.
    ended = await engine.node.devices[ea.device_id].end_session(CloseCode.POLICY_VIOLATION, "test")
    assert ended
    await wait_for(lambda: hook.requests, timeout=20)
    offline = _verified(hook.requests[0], alice, secret)
    assert (offline.kind, offline.event) == ("device_offline", "device_offline")
    assert offline.alert is not None and offline.alert.device_id == ea.device_id


async def test_settings_are_validated_secrets_shown_once_and_audited(engine: Engine) -> None:
    alice, token = await engine.user("alice")
    async with engine.client(token) as http:
        url = "/api/v1/me/notifications"
        assert (await http.get(url)).json() == {
            "events": ["fill", "close", "alert", "device_offline"],
            "webhook_url": None,
            "webhook_secret_set": False,
            "telegram_chat_id": None,
            "telegram_bot_token_set": False,
            "webhook_secret": None,
        }
        refused = [
            {"webhook_url": "http://127.0.0.1:5432/"},  # internal: the default refuses it
            {"webhook_url": "http://169.254.169.254/latest"},
            {"webhook_url": "gopher://example.com/"},
            {"telegram_chat_id": "12345"},  # no bot token stored or given
            {"telegram_chat_id": "12345", "telegram_bot_token": "not-a-token"},
            {"events": ["fill", "everything"]},
        ]
        for body in refused:
            answer = await http.put(url, json=body)
            assert answer.status_code == 400, (body, answer.text)
            assert answer.json()["code"] in {"malformed", "validation_error"}, answer.text
        hook = "https://hooks.example.com/tripwire"
        first = (await http.put(url, json={"webhook_url": hook, "events": ["close"]})).json()
        assert first["webhook_secret"] and first["events"] == ["close"]
        again = (await http.put(url, json={"webhook_url": hook})).json()
        assert again["webhook_secret"] is None and again["webhook_secret_set"]  # kept, not shown
        rotated = await http.put(url, json={"webhook_url": hook, "rotate_webhook_secret": True})
        assert rotated.json()["webhook_secret"] not in {None, first["webhook_secret"]}
        both = await http.put(
            url, json={"telegram_chat_id": "@tripwire_alerts", "telegram_bot_token": BOT_TOKEN}
        )
        assert both.json()["webhook_url"] is None and both.json()["telegram_bot_token_set"]
        kept = (await http.put(url, json={"telegram_chat_id": "42"})).json()  # token kept
        assert kept["telegram_bot_token_set"] and kept["telegram_chat_id"] == "42"
    stored = engine.ctx.notifier.store.get(alice)
    assert stored.telegram_token == BOT_TOKEN and stored.webhook_secret is None
    rows = await engine.ctx.db.fetch(
        "SELECT outcome, detail::text FROM audit_log WHERE action = 'notifications.update'"
        " ORDER BY id"
    )
    # The chat id without a token was refused inside the audited block: audited as refused.
    assert [r["outcome"] for r in rows] == ["400:malformed"] + ["200"] * 5
    assert all(
        BOT_TOKEN not in r["detail"] and first["webhook_secret"] not in r["detail"] for r in rows
    )

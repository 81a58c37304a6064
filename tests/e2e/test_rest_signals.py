"""``POST /api/v1/signals``: signatures, deduplication, limits, hostile bodies and headers; and
the reads: only a signal's audience sees it."""

from __future__ import annotations

import json

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.codec import encode_signal
from tests.e2e.conftest import ADMIN_PASSWORD, STRATEGY_ID
from tests.e2e.helpers import (
    decision_url,
    make_signal,
    now_ms,
    paper_device,
    post_signal,
    quote,
    signed_headers,
)

FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


async def test_signatures_and_deduplication(engine) -> None:
    async with engine.client() as http:
        signal = make_signal(["u-someone"])
        first = await post_signal(http, signal)
        assert first.status_code == 201, first.text
        assert first.json()["key"] == f"{STRATEGY_ID}/sig-1/1"
        repeat = await post_signal(http, signal)
        assert repeat.status_code == 200 and repeat.json() == first.json()
        # Same (strategy, signal, version), another body: the first recording stands.
        changed = await post_signal(http, make_signal(["u-someone"], entry=1234.5))
        assert changed.status_code == 200 and changed.json()["entry"] == signal.entry
        newer = await post_signal(http, make_signal(["u-someone"], version=2))
        assert newer.status_code == 201 and newer.json()["version"] == 2

        refused = {
            "wrong secret": await post_signal(http, signal, secret=b"x" * 32),
            "unknown strategy": await post_signal(
                http, make_signal(["u-1"], strategy_id="ghost"), strategy_id="ghost"
            ),
            "old signature": await post_signal(http, signal, ts_ms=now_ms() - 6_000),
            "future signature": await post_signal(http, signal, ts_ms=now_ms() + 6_000),
        }
        for name, response in refused.items():
            assert response.status_code == 401, (name, response.text)
        codes = {name: r.json()["code"] for name, r in refused.items()}
        assert codes == {
            "wrong secret": "bad_signature",
            "unknown strategy": "bad_signature",
            "old signature": "expired",
            "future signature": "expired",
        }
        # An unknown strategy is told exactly what a wrong secret is told.
        assert refused["unknown strategy"].json() == refused["wrong secret"].json()

        body = encode_signal(make_signal(["u-1"], signal_id="sig-2"))
        headers = signed_headers(body)
        for missing in ("X-Strategy-Id", "X-Signature"):
            partial = {k: v for k, v in headers.items() if k != missing}
            response = await http.post("/api/v1/signals", content=body, headers=partial)
            assert response.status_code == 401, missing

        # Signed by strat-1, but the body speaks for another strategy.
        other = encode_signal(make_signal(["u-1"], strategy_id="other-strategy"))
        response = await http.post("/api/v1/signals", content=other, headers=signed_headers(other))
        assert response.status_code == 403 and response.json()["code"] == "forbidden"

        # Valid JSON, but a NUL no database stores.
        nul = encode_signal(make_signal(["u-1"], signal_id="nul", comment="a\x00b"))
        response = await http.post("/api/v1/signals", content=nul, headers=signed_headers(nul))
        assert response.status_code == 400 and response.json()["code"] == "malformed"

        # Signed, but not a signal.
        for bad in (b"{", b"[]", b'{"strategy_id": "strat-1"}', b"\xff\xfe"):
            response = await http.post("/api/v1/signals", content=bad, headers=signed_headers(bad))
            assert response.status_code == 400 and response.json()["code"] == "malformed", bad

        # Too large: over the signal limit (64 KiB), and over the body limit of the server.
        for size in (70_000, 300_000):
            big = json.dumps({"comment": "x" * size}).encode()
            response = await http.post("/api/v1/signals", content=big, headers=signed_headers(big))
            assert response.status_code == 413 and response.json()["code"] == "too_large"

    stored = await engine.ctx.db.fetchval("SELECT count(*) FROM signals")
    assert stored == 2
    actions = await engine.ctx.db.fetch(
        "SELECT outcome FROM audit_log WHERE action = 'signal.create' ORDER BY id"
    )
    assert [r["outcome"] for r in actions] == ["201", "200", "200", "201"]


async def test_a_signal_stamped_in_the_future_is_refused(engine, nursery) -> None:
    """The regression: a signal stamped 2^53 was recorded and could be approved at any time,
    the late-signal check measuring a negative delay. Refused now (400 ``future_timestamp``),
    as is anything stamped further ahead than the signature window; just inside it is fine."""
    window = engine.ctx.settings.handshake_window_ms
    alice, token = await engine.user("alice")
    await paper_device(engine, nursery, alice)
    quote(engine)
    async with engine.client() as strategy:
        refused = {
            "2^53": make_signal([alice], "absurd", created_at_ms=2**53, expires_at_ms=None),
            "a minute past the window": make_signal(
                [alice], "ahead", created_at_ms=now_ms() + window + 60_000
            ),
        }
        for name, signal in refused.items():
            response = await post_signal(strategy, signal)
            assert response.status_code == 400, (name, response.text)
            answer = response.json()
            assert answer["code"] == "future_timestamp", name
            assert "ahead of the server's clock" in answer["message"]
            details = answer["details"]
            assert details["ts_ms"] == signal.created_at_ms and details["window_ms"] == window
        # Just inside the window (the server reads its clock after ours: at most window - 1).
        inside = make_signal([alice], "inside", created_at_ms=now_ms() + window - 1)
        accepted = await post_signal(strategy, inside)
        assert accepted.status_code == 201, accepted.text
        assert accepted.json()["created_at_ms"] == inside.created_at_ms

    async with engine.client(token) as http:
        for signal in refused.values():  # never recorded: nothing to approve
            response = await http.post(decision_url(signal), json={"decision": "approve"})
            assert response.status_code == 404, response.text
        approved = await http.post(decision_url(inside), json={"decision": "approve"})
        assert approved.status_code == 201, approved.text
    assert await engine.ctx.db.fetchval(
        "SELECT array_agg(signal_id ORDER BY signal_id) FROM signals"
    ) == ["inside"]


async def test_hostile_bodies_and_headers_never_break_it(engine) -> None:
    """Hypothesis in a worker thread, each example a real request to the engine in this run."""
    async with engine.client() as http:

        async def send(body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
            response = await http.post("/api/v1/signals", content=body, headers=headers)
            return response.status_code, response.json()

        json_values = st.recursive(
            st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=12), inner, max_size=6)
            ),
            max_leaves=20,
        )
        valid = json.loads(encode_signal(make_signal(["u-1"], signal_id="fuzz")))
        bodies = st.one_of(
            st.binary(max_size=300),
            json_values.map(lambda v: json.dumps(v).encode()),
            st.dictionaries(st.sampled_from(sorted(valid)), json_values, max_size=6).map(
                lambda patch: json.dumps({**valid, **patch}).encode()
            ),
        )
        header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=120).map(
            str.strip
        )

        @FUZZ
        @given(body=bodies, strategy=header_text, signature=header_text)
        def unsigned(body: bytes, strategy: str, signature: str) -> None:
            headers = {"X-Strategy-Id": strategy, "X-Signature": signature}
            status, answer = trio.from_thread.run(send, body, headers)
            assert status in (400, 401, 413), (status, answer)
            assert set(answer) <= {"code", "message", "details"} and answer["code"]

        @FUZZ
        @given(body=bodies, ts_shift=st.integers(-4_000, 4_000))
        def signed(body: bytes, ts_shift: int) -> None:
            headers = signed_headers(body, ts_ms=now_ms() + ts_shift)
            status, answer = trio.from_thread.run(send, body, headers)
            assert status in (200, 201, 400, 403, 413), (status, answer)

        await trio.to_thread.run_sync(unsigned)
        await trio.to_thread.run_sync(signed)
    # The server is still fine: a valid signal still goes in.
    async with engine.client() as http:
        response = await post_signal(http, make_signal(["u-1"], signal_id="after-fuzz"))
        assert response.status_code == 201


async def test_only_the_audience_reads_a_signal(engine) -> None:
    alice, alice_token = await engine.user("alice")
    bob, bob_token = await engine.user("bob")
    admin_token = await engine.login("admin", ADMIN_PASSWORD)
    async with engine.client() as strategy:
        for signal in (
            make_signal([alice], signal_id="for-alice"),
            make_signal([alice], signal_id="for-alice", version=2, entry=2001.0),
            make_signal([alice, bob], signal_id="for-both"),
            make_signal([bob], signal_id="for-bob"),
            make_signal([alice], signal_id="expired", expires_at_ms=now_ms() - 1),
        ):
            assert (await post_signal(strategy, signal)).status_code == 201

    def keys(answer) -> list[str]:
        return sorted(s["key"] for s in answer.json()["signals"])

    async with engine.client(alice_token) as http:
        pending = await http.get("/api/v1/signals")
        assert keys(pending) == [f"{STRATEGY_ID}/for-alice/2", f"{STRATEGY_ID}/for-both/1"]
        every = await http.get("/api/v1/signals", params={"status": "all"})
        assert len(keys(every)) == 4  # both versions and the expired one, not bob's
        one = await http.get(f"/api/v1/signals/{STRATEGY_ID}/for-alice/2")
        assert one.status_code == 200 and one.json()["entry"] == 2001.0
        assert one.json()["decision"] is None
        rejected = await http.post(
            f"/api/v1/signals/{STRATEGY_ID}/for-alice/1/decision", json={"decision": "reject"}
        )
        assert rejected.status_code == 201
        decided = await http.get("/api/v1/signals", params={"status": "decided"})
        assert keys(decided) == [f"{STRATEGY_ID}/for-alice/1", f"{STRATEGY_ID}/for-alice/2"]
        newest = next(s for s in decided.json()["signals"] if s["version"] == 2)
        assert newest["decision"] == "reject" and newest["decided_version"] == 1
        assert keys(await http.get("/api/v1/signals")) == [f"{STRATEGY_ID}/for-both/1"]
        bad = await http.get("/api/v1/signals", params={"status": "mine"})
        assert bad.status_code == 400

    async with engine.client(bob_token) as http:
        assert keys(await http.get("/api/v1/signals")) == [
            f"{STRATEGY_ID}/for-bob/1",
            f"{STRATEGY_ID}/for-both/1",
        ]
        hidden = await http.get(f"/api/v1/signals/{STRATEGY_ID}/for-alice/1")
        unknown = await http.get(f"/api/v1/signals/{STRATEGY_ID}/no-such-signal/1")
        assert hidden.status_code == unknown.status_code == 404
        assert hidden.json() == unknown.json()

    async with engine.client(admin_token) as http:
        everything = await http.get("/api/v1/signals", params={"status": "all"})
        assert len(keys(everything)) == 5
        assert (await http.get(f"/api/v1/signals/{STRATEGY_ID}/for-bob/1")).status_code == 200

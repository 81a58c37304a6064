"""Rules of the HTTP edge that need no server: the login buckets, the Bearer scheme, the hashing
gate, the OpenAPI request bodies and the start-up check of a public bind."""

from __future__ import annotations

import json

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from gateway.auth import HashingGate, LoginLimiter, TokenIssuer, bearer_token
from gateway.cli import main
from gateway.config import DEFAULT_DEMO_PASSWORD, is_loopback, load_settings
from protocol.errors import AuthError, ConfigError, RateLimited
from tests.gateway.conftest import in_memory_app


def test_one_address_runs_out_across_usernames() -> None:
    limiter = LoginLimiter(burst=5, refill_s=12.0, address_burst=3, address_refill_s=3.0)
    assert [limiter.check(f"user-{i}", "10.0.0.1", now=0.0) for i in range(3)] == [0.0] * 3
    assert limiter.check("user-3", "10.0.0.1", now=0.0) == pytest.approx(3.0)
    assert limiter.check("user-3", "10.0.0.2", now=0.0) == 0.0  # another address
    assert limiter.check("user-4", "10.0.0.1", now=3.0) == 0.0  # one earned back


def test_a_refused_attempt_takes_no_token() -> None:
    limiter = LoginLimiter(burst=1, refill_s=10.0, address_burst=5, address_refill_s=1.0)
    assert limiter.check("alice", "a", now=0.0) == 0.0
    for _ in range(10):  # alice is refused: the address keeps its tokens for others
        assert limiter.check("alice", "a", now=0.0) > 0
    assert [limiter.check(f"u{i}", "a", now=0.0) for i in range(4)] == [0.0] * 4


@given(
    attempts=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(["x", "y"])),
        max_size=60,
    )
)
def test_no_address_gets_more_than_its_burst_at_one_instant(attempts) -> None:
    limiter = LoginLimiter(burst=2, refill_s=10.0, address_burst=3, address_refill_s=10.0)
    allowed: dict[str, int] = {}
    per_user: dict[tuple[str, str], int] = {}
    for user, address in attempts:
        if limiter.check(user, address, now=0.0) == 0.0:
            allowed[address] = allowed.get(address, 0) + 1
            per_user[user, address] = per_user.get((user, address), 0) + 1
    assert all(n <= 3 for n in allowed.values())
    assert all(n <= 2 for n in per_user.values())


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(scheme: str) -> None:
    issuer = TokenIssuer(b"s" * 32)
    token, _ = issuer.issue("u-1", "user")
    assert bearer_token(f"{scheme} {token}") == token
    assert issuer.verify_header(f"{scheme} {token}").user_id == "u-1"


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic abc", "Bearerabc"])
def test_anything_but_a_bearer_token_is_refused(header: str | None) -> None:
    assert bearer_token(header) is None
    with pytest.raises(AuthError):
        TokenIssuer(b"s" * 32).verify_header(header)


async def test_the_hashing_gate_refuses_past_its_limit_and_frees_its_slots() -> None:
    gate = HashingGate(2)
    async with gate.slot(), gate.slot():
        with pytest.raises(RateLimited) as refused:
            async with gate.slot():
                pytest.fail("a third slot")
        assert refused.value.details["retry_after_s"] == 0
    async with gate.slot(), gate.slot():  # both came back
        await trio.lowlevel.checkpoint()
    assert gate.refused == 1


async def test_every_request_body_is_required_in_the_openapi_document() -> None:
    client = in_memory_app().test_client()
    document = json.loads(await (await client.get("/openapi.json")).get_data())
    bodies = {
        f"{method.upper()} {path}": operation["requestBody"]
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
    }
    assert "POST /api/v1/auth/login" in bodies and len(bodies) >= 5, bodies
    assert {name: body.get("required") for name, body in bodies.items()} == dict.fromkeys(
        bodies, True
    )


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("example.com", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_default_demo_password_is_refused_on_a_public_bind() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings({}, host="0.0.0.0")
    assert "TRIPWIRE_DEMO_PASSWORD" in refused.value.message
    assert "0.0.0.0" in refused.value.message
    # Fine: loopback, a password of one's own, or no demo at all.
    load_settings({}, host="127.0.0.1")
    load_settings({}, host="0.0.0.0", demo_password="a-password-of-my-own")
    load_settings({}, host="0.0.0.0", paper_device=False, demo_strategy=False)
    assert load_settings({}).demo_password == DEFAULT_DEMO_PASSWORD


def test_tripwire_run_stops_with_one_line_on_a_public_bind(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("TRIPWIRE_HOST", "TRIPWIRE_DEMO_PASSWORD", "TRIPWIRE_CONFIG"):
        monkeypatch.delenv(name, raising=False)

    def never(*args: object, **kwargs: object) -> None:  # were the check missing
        pytest.fail("the engine would have started on a public address")

    monkeypatch.setattr(trio, "run", never)
    assert main(["run", "--host", "0.0.0.0"]) == 1  # refused before anything is started
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("tripwire run: configuration error: TRIPWIRE_DEMO_PASSWORD")

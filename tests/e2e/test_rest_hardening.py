"""The HTTP edge under abuse, over real sockets: a login flood, logins across many usernames,
an answer before the body, deep JSON on every JSON route, methods nobody serves, the Bearer
scheme's case, and too many connections from one address.

Concurrency is proven by counters (``gateway.auth.ARGON2``, the edge's refusals), never by how
long something took.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from quart_schema.validation import QUART_SCHEMA_REQUEST_ATTRIBUTE
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    connect_websocket_url,
    open_websocket_url,
    wrap_client_stream,
)

from gateway.auth import ARGON2
from gateway.runtime import run
from protocol.codec import feed_codec
from protocol.feed import Quote, QuoteBatch
from tests.e2e.conftest import ADMIN_PASSWORD, FEED_TOKEN, Engine, engine_settings
from tests.e2e.helpers import signed_headers

OTHER_LOOPBACK = "127.0.0.2"
"""Another address of the loopback network: the server sees a second client address."""


async def start_engine(nursery: trio.Nursery, dsn: str, tmp_path: Path, **overrides: Any) -> Engine:
    settings = engine_settings(tmp_path, dsn, **overrides)
    services = await nursery.start(run, settings)
    base, ws = f"http://127.0.0.1:{settings.port}", f"ws://127.0.0.1:{settings.port}"
    return Engine(services.gateway, base, ws, services)


def _port(engine: Engine) -> int:
    return int(engine.base_url.rsplit(":", 1)[1])


async def _stream_from(source: str, port: int) -> trio.SocketStream:
    """A connection to the engine from the loopback address ``source``."""
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


def _login(username: str, password: str = "wrong-password-0") -> dict[str, str]:
    return {"username": username, "password": password}


# -- the login flood ---------------------------------------------------------------------------


async def test_a_login_flood_runs_at_most_k_password_checks_at_once(
    nursery: trio.Nursery, pg_dsn: str, tmp_path: Path
) -> None:
    engine = await start_engine(nursery, pg_dsn, tmp_path, login_max_hashing=2)
    await engine.ctx.registry.create_user("victim", "victim-password-0")
    ARGON2.peak = ARGON2.running
    checks_before = ARGON2.verifications
    attempts = 16
    answers: list[httpx.Response] = []

    async def attempt(i: int) -> None:
        username = "victim" if i % 2 else f"nobody-{i}"  # known and unknown names alike
        async with engine.client() as http:
            answers.append(await http.post("/api/v1/auth/login", json=_login(username)))

    async with trio.open_nursery() as flood:
        for i in range(attempts):
            flood.start_soon(attempt, i)

    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) <= {401, 429}, statuses
    assert ARGON2.peak <= 2, ARGON2.peak
    busy = [a for a in answers if a.status_code == 429]
    assert busy, statuses  # sixteen at once cannot all have found a free slot
    for answer in busy:
        assert answer.json()["code"] == "rate_limited"
        assert answer.headers["Retry-After"] == "1"
    # Every 401 ran one check; every 429 ran none.
    assert ARGON2.verifications - checks_before == statuses.count(401)
    assert engine.ctx.counters.logins["busy"] == len(busy)
    async with engine.client() as http:  # and the flood is over: logins work again
        ok = await http.post("/api/v1/auth/login", json=_login("victim", "victim-password-0"))
        assert ok.status_code == 200, ok.text


async def test_one_address_is_limited_across_usernames(
    nursery: trio.Nursery, pg_dsn: str, tmp_path: Path
) -> None:
    engine = await start_engine(
        nursery, pg_dsn, tmp_path, login_address_burst=3, login_address_refill_s=600.0
    )
    async with engine.client() as http:
        for i in range(3):  # one password, a new username each time
            response = await http.post("/api/v1/auth/login", json=_login(f"user-{i}"))
            assert response.status_code == 401, response.text
        checks = ARGON2.verifications
        limited = await http.post("/api/v1/auth/login", json=_login("user-3"))
        assert limited.status_code == 429 and limited.json()["code"] == "rate_limited"
        assert int(limited.headers["Retry-After"]) >= 1
        assert ARGON2.verifications == checks  # refused before any password check
        admin = await http.post("/api/v1/auth/login", json=_login("admin", ADMIN_PASSWORD))
        assert admin.status_code == 429  # the address, whoever it names
    transport = httpx.AsyncHTTPTransport(local_address=OTHER_LOOPBACK)
    async with httpx.AsyncClient(base_url=engine.base_url, transport=transport) as other:
        admin = await other.post("/api/v1/auth/login", json=_login("admin", ADMIN_PASSWORD))
        assert admin.status_code == 200, admin.text  # another address has its own bucket


async def test_an_unknown_user_is_checked_against_the_dummy_hash(engine) -> None:
    await engine.ctx.registry.create_user("known", "known-password-0")
    async with engine.client() as http:
        dummy_before = ARGON2.dummy_verifications
        unknown = await http.post("/api/v1/auth/login", json=_login("no-such-user"))
        assert ARGON2.dummy_verifications == dummy_before + 1
        wrong = await http.post("/api/v1/auth/login", json=_login("known"))
        assert ARGON2.dummy_verifications == dummy_before + 1  # a real hash, not the dummy
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.json() == wrong.json()  # nothing tells the two apart


# -- an answer before the body -----------------------------------------------------------------


async def _read_until_closed(stream: trio.SocketStream, limit_s: float = 10.0) -> bytes:
    """Everything the server sends until it closes (fails if it never does within the limit)."""
    data = b""
    with trio.fail_after(limit_s):
        while chunk := await stream.receive_some():
            data += chunk
    return data


async def test_an_early_401_closes_the_connection(engine) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", _port(engine))
    async with stream:
        await stream.send_all(
            b"POST /api/v1/devices HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50\r\n\r\n"  # and the body never comes
        )
        answer = await _read_until_closed(stream)
    head = answer.split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 401"), answer
    assert b"connection: close" in head


async def test_keep_alive_still_serves_a_second_request(engine) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", _port(engine))
    async with stream:
        request = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
        await stream.send_all(
            request + request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
        )
        answer = await _read_until_closed(stream)  # the second asks to close: the server does
    assert answer.count(b"HTTP/1.1 200") == 2, answer


# -- deep JSON on every JSON route ------------------------------------------------------------


def _json_routes(engine: Engine) -> list[tuple[str, str]]:
    """``(method, path)`` of every route that takes a JSON body (its request schema is
    documented), from the app's URL map, each placeholder filled with a harmless value."""
    assert engine.services is not None
    app = engine.services.app
    routes = []
    for rule in app.url_map.iter_rules():
        if not hasattr(app.view_functions[rule.endpoint], QUART_SCHEMA_REQUEST_ATTRIBUTE):
            continue
        for method in sorted((rule.methods or set()) & {"POST", "PUT", "PATCH"}):
            path = rule.rule
            for argument in rule.arguments:
                path = path.replace(f"<{argument}>", "x").replace(f"<int:{argument}>", "1")
                path = path.replace(f"<path:{argument}>", "x")
            routes.append((method, path))
    return routes


def _deep(depth: int, opener: str) -> bytes:
    return (opener * depth).encode()


async def test_deep_json_is_a_400_on_every_json_route(engine) -> None:
    token = await engine.login("admin", ADMIN_PASSWORD)
    routes = _json_routes(engine)
    assert ("POST", "/api/v1/auth/login") in routes and len(routes) >= 5, routes

    def run() -> list[str]:
        failures: list[str] = []
        with httpx.Client(base_url=engine.base_url, timeout=20) as http:

            def send(method: str, path: str, body: bytes) -> httpx.Response:
                headers = {**signed_headers(body), "Authorization": f"Bearer {token}"}
                return http.request(method, path, content=body, headers=headers)

            for method, path in routes:  # the reported case (under the signals' 64 KiB limit)
                response = send(method, path, _deep(60_000, "["))
                if response.status_code != 400 or response.json()["code"] != "malformed":
                    failures.append(f"{method} {path}: {response.status_code} {response.text}")

            @settings(
                max_examples=40,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @given(
                route=st.sampled_from(routes),
                body=st.one_of(
                    st.builds(
                        _deep,
                        st.integers(min_value=1, max_value=200_000),
                        st.sampled_from(["[", '{"a":', '[{"a":']),
                    ),
                    st.binary(max_size=2_000),
                ),
            )
            def never_a_500(route: tuple[str, str], body: bytes) -> None:
                response = send(*route, body)
                assert response.status_code < 500, (route, body[:40], response.text)
                assert set(response.json()) <= {"code", "message", "details"}

            try:
                never_a_500()
            except AssertionError as error:
                failures.append(str(error))
        return failures

    failures = await trio.to_thread.run_sync(run)
    assert not failures, "\n".join(failures)


# -- methods, the Bearer scheme ----------------------------------------------------------------


async def test_an_unsupported_method_is_a_405_that_says_what_is_allowed(engine) -> None:
    async with engine.client() as http:
        for path, allowed in (
            ("/api/v1/auth/login", {"POST", "OPTIONS"}),
            ("/healthz", {"GET", "HEAD", "OPTIONS"}),
        ):
            for method in ("TRACE", "DELETE"):
                response = await http.request(method, path)
                assert response.status_code == 405, (method, path, response.text)
                assert response.json()["code"] == "method_not_allowed"
                allow = {m.strip() for m in response.headers["Allow"].split(",")}
                assert allow == allowed, (method, path, allow)


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
async def test_the_bearer_scheme_is_case_insensitive(engine, scheme: str) -> None:
    _, token = await engine.user("casey")
    async with engine.client() as http:
        me = await http.get("/api/v1/auth/me", headers={"Authorization": f"{scheme} {token}"})
        assert me.status_code == 200, me.text
        assert me.json()["username"] == "casey"
    headers = [("Authorization", f"{scheme} {FEED_TOKEN}")]
    async with open_websocket_url(f"{engine.ws_url}/ws/feed", extra_headers=headers) as ws:
        quote = Quote(symbol="XAUUSD", bid=2000.0, ask=2000.3, time_ms=engine.ctx.clock.now_ms())
        await ws.send_message(feed_codec("msgpack").encode(QuoteBatch(quotes=[quote])))
        with trio.fail_after(10):  # the publisher was let in: its quote arrives
            while engine.node.prices.get("XAUUSD") is None:
                await trio.sleep(0.01)
    assert engine.ctx.counters.handshakes["feed_unauthorized"] == 0


# -- connections per address -------------------------------------------------------------------


async def test_websockets_per_address_are_limited(
    nursery: trio.Nursery, pg_dsn: str, tmp_path: Path
) -> None:
    engine = await start_engine(nursery, pg_dsn, tmp_path, max_ws_per_address=2)
    edge = engine.ctx.edge
    url = f"{engine.ws_url}/ws/feed?token={FEED_TOKEN}"
    # Connections in a nursery of the test's own (nested ``async with open_websocket_url``
    # blocks can swallow what an inner one raises).
    async with trio.open_nursery() as clients:
        first = await connect_websocket_url(clients, url)
        second = await connect_websocket_url(clients, url)
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(url):  # its own nursery: the rejection ends here
                pytest.fail("a third WebSocket from one address")
        assert rejected.value.status_code == 429
        assert json.loads(rejected.value.body)["code"] == "rate_limited"
        assert edge.refused["websocket"] == 1
        elsewhere = await wrap_client_stream(  # another address has its own places
            clients,
            await _stream_from(OTHER_LOOPBACK, _port(engine)),
            "127.0.0.1",
            f"/ws/feed?token={FEED_TOKEN}",
        )
        await first.aclose()
        with trio.fail_after(10):  # the server notices the close and frees the place
            while edge.ws_open["127.0.0.1"] > 1:
                await trio.sleep(0.01)
        again = await connect_websocket_url(clients, url)  # accepted, not rejected
        assert again.closed is None and edge.ws_open["127.0.0.1"] == 2
        for ws in (second, elsewhere, again):
            await ws.aclose()
    assert edge.refused["websocket"] == 1


async def test_http_requests_in_flight_per_address_are_limited(
    nursery: trio.Nursery, pg_dsn: str, tmp_path: Path
) -> None:
    engine = await start_engine(nursery, pg_dsn, tmp_path, max_http_per_address=2)
    body = json.dumps(_login("nobody")).encode()
    head = (
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    slow = [await trio.open_tcp_stream("127.0.0.1", _port(engine)) for _ in range(2)]
    for stream in slow:  # two logins waiting for their bodies: two requests in flight
        await stream.send_all(head + body[:5])
    with trio.fail_after(10):
        while engine.ctx.edge.http_in_flight["127.0.0.1"] < 2:
            await trio.sleep(0.01)
    async with engine.client() as http:
        refused = await http.get("/healthz")
        assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
        assert refused.headers["Retry-After"] == "1"
    other = httpx.AsyncHTTPTransport(local_address=OTHER_LOOPBACK)
    async with httpx.AsyncClient(base_url=engine.base_url, transport=other) as elsewhere:
        assert (await elsewhere.get("/healthz")).status_code == 200  # another address
    await slow[0].send_all(body[5:] + b"")
    first = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in first:
            first += await slow[0].receive_some()
    assert first.startswith(b"HTTP/1.1 401"), first
    async with engine.client() as http:  # one place is free again
        assert (await http.get("/healthz")).status_code == 200
    for stream in slow:
        await stream.aclose()
    assert engine.ctx.edge.refused["http"] == 1


async def test_a_closed_websocket_frees_its_place_even_when_refused_with_a_close(
    nursery: trio.Nursery, pg_dsn: str, tmp_path: Path
) -> None:
    engine = await start_engine(nursery, pg_dsn, tmp_path, max_ws_per_address=1)
    bad = f"{engine.ws_url}/ws/feed?token=wrong-token-0123456789"
    for _ in range(3):  # each is closed by the server (1008); the next one gets in
        async with open_websocket_url(bad) as ws:
            with pytest.raises(ConnectionClosed), trio.fail_after(10):
                await ws.get_message()
        with trio.fail_after(10):
            while engine.ctx.edge.ws_open:
                await trio.sleep(0.01)
    assert engine.ctx.edge.refused["websocket"] == 0

"""``/metrics`` of a live engine, parsed as Prometheus parses it: conventional names (the
``tripwire_`` prefix or a standard ``process_``/``python_`` collector, base units), the HTTP
histogram by route rule, method and status, and counters that count what really happened: the
acks of a real open and close, logins by outcome.
"""

from __future__ import annotations

from typing import Any

import trio
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import HTTP_METHODS
from tests.e2e.helpers import decision_url, make_signal, paper_device, post_signal, quote, wait_for


async def scrape(engine: Any) -> dict[str, Any]:
    async with engine.client() as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def value(families: dict[str, Any], sample_name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in families.values()
        for sample in family.samples
        if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


async def test_metric_names_follow_prometheus_conventions(engine) -> None:
    async with engine.client() as http:
        assert (await http.get("/api/v1/auth/me")).status_code == 401
        assert (await http.request("BREW", "/no/such/page")).status_code in {404, 405}
    families = await scrape(engine)
    for name, family in families.items():
        assert name.startswith(("tripwire_", "process_", "python_")), name
        assert "_ms" not in name, name  # base units: seconds
        for sample in family.samples:
            assert "_ms" not in sample.name, sample.name
    # The standard collectors, on the app's registry.
    assert "process_resident_memory_bytes" in families
    assert "process_cpu_seconds" in families
    assert "python_info" in families
    assert "python_gc_collections" in families
    # Renamed families exist under their conventional names.
    for name in (
        "tripwire_feed_lag_seconds",
        "tripwire_legacy_calls",
        "tripwire_commands",
        "tripwire_logins",
        "tripwire_connections_refused",
        "tripwire_chart_refused",
    ):
        assert name in families, name
    assert families["tripwire_feed_lag_seconds"].type == "gauge"
    assert families["tripwire_legacy_calls"].type == "counter"
    http = families["tripwire_http_request_seconds"]
    assert http.type == "histogram"
    labelled = [s for s in http.samples if s.name == "tripwire_http_request_seconds_count"]
    assert labelled
    for sample in labelled:
        assert set(sample.labels) == {"route", "method", "status"}, sample
        assert sample.labels["method"] in HTTP_METHODS | {"other"}, sample
        assert sample.labels["status"].isdigit(), sample
    me = value(
        families,
        "tripwire_http_request_seconds_count",
        route="/api/v1/auth/me",
        method="GET",
        status="401",
    )
    assert me == 1
    odd = value(families, "tripwire_http_request_seconds_count", route="unmatched", method="other")
    assert odd == 1  # an unknown method is not a label value of its own


async def test_command_outcomes_and_logins_are_counted(engine, nursery: trio.Nursery) -> None:
    alice, token = await engine.user("alice")
    async with engine.client() as http:
        wrong = {"username": "alice", "password": "not-her-password"}
        assert (await http.post("/api/v1/auth/login", json=wrong)).status_code == 401
    before = await scrape(engine)
    assert value(before, "tripwire_commands_total") == 0
    assert value(before, "tripwire_logins_total", outcome="ok") == 1  # engine.user logged in
    assert value(before, "tripwire_logins_total", outcome="failed") == 1
    await paper_device(engine, nursery, alice)
    quote(engine)
    signal = make_signal([alice])
    async with engine.client() as strategy:
        assert (await post_signal(strategy, signal)).status_code == 201
    async with engine.client(token) as http:
        approved = await http.post(decision_url(signal), json={"decision": "approve"})
        assert approved.status_code == 201, approved.text
        position_id = approved.json()["approval"]["position_id"]

        async def state() -> str:
            return str((await http.get(f"/api/v1/positions/{position_id}")).json()["state"])

        await wait_for(lambda: _is(state(), "open"))
        closing = await http.post(f"/api/v1/positions/{position_id}/close")
        assert closing.status_code == 202, closing.text
        await wait_for(lambda: _is(state(), "closed"))
    after = await scrape(engine)
    # The open and the close were each acked as done by the terminal.
    assert value(after, "tripwire_commands_total", outcome="done") == 2
    assert value(after, "tripwire_commands_total", outcome="lost") == 0
    closes = value(
        after,
        "tripwire_http_request_seconds_count",
        route="/api/v1/positions/<position_id>/close",
        method="POST",
        status="202",
    )
    assert closes == 1


async def _is(current: Any, wanted: str) -> bool:
    return bool(await current == wanted)

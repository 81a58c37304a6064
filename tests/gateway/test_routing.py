"""URL matching through the memo (``gateway.routing``): the same answers as Werkzeug's matcher,
and no garbage cycle per request (the cycles were what made REST's p99 miss its target)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Rule

from gateway.routing import MemoMap, MemoMatcher
from tests.gateway.conftest import in_memory_app


def memo_map(max_entries: int = 1024) -> MemoMap:
    url_map = MemoMap()
    url_map._matcher = MemoMatcher(url_map.merge_slashes, max_entries)
    for rule in (
        Rule("/api/v1/positions", endpoint="positions", methods=["GET"]),
        Rule("/api/v1/positions/<int:position_id>", endpoint="position", methods=["GET"]),
        Rule("/api/v1/signals", endpoint="signals", methods=["POST"]),
    ):
        url_map.add(rule)
    return url_map


@pytest.fixture
def no_automatic_collection() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_the_app_matches_through_the_memo() -> None:
    app = in_memory_app()
    assert isinstance(app.url_map, MemoMap)
    assert isinstance(app.url_map._matcher, MemoMatcher)


@pytest.mark.usefixtures("no_automatic_collection")
def test_repeated_matches_make_no_garbage_cycles() -> None:
    adapter = memo_map().bind("localhost")
    adapter.match("/api/v1/positions", "GET")  # the first match of a path goes to Werkzeug
    gc.collect()
    for _ in range(200):
        assert adapter.match("/api/v1/positions", "GET") == ("positions", {})
        assert adapter.match("/api/v1/positions/7", "GET") == ("position", {"position_id": 7})
    # Werkzeug's own matcher leaves ~10 objects in a cycle per match: 4,000 here.
    assert gc.collect() < 50


async def test_the_app_serves_repeated_requests_without_garbage_cycles() -> None:
    client = in_memory_app().test_client()
    assert (await client.get("/healthz")).status_code == 200
    gc.collect()
    gc.disable()
    try:
        for _ in range(50):
            assert (await client.get("/healthz")).status_code == 200
        garbage = gc.collect()
    finally:
        gc.enable()
    # The test client and the request machinery may leave a few; a cycle per match was ~10
    # objects per request, 500 here.
    assert garbage < 250


def test_matched_values_are_the_callers_own() -> None:
    adapter = memo_map().bind("localhost")
    _, first = adapter.match("/api/v1/positions/7", "GET")
    first["position_id"] = 99
    first["extra"] = True
    assert adapter.match("/api/v1/positions/7", "GET") == ("position", {"position_id": 7})


def test_misses_and_wrong_methods_still_raise() -> None:
    url_map = memo_map()
    adapter = url_map.bind("localhost")
    for _ in range(2):
        with pytest.raises(NotFound):
            adapter.match("/api/v1/nothing", "GET")
        with pytest.raises(MethodNotAllowed):
            adapter.match("/api/v1/signals", "GET")
    assert len(url_map._matcher) == 0  # failures are not remembered


def test_the_memo_is_bounded_and_keeps_answering() -> None:
    url_map = memo_map(max_entries=8)
    adapter = url_map.bind("localhost")
    for position_id in range(100):
        path = f"/api/v1/positions/{position_id}"
        assert adapter.match(path, "GET") == ("position", {"position_id": position_id})
    assert len(url_map._matcher) == 8
    assert adapter.match("/api/v1/positions/3", "GET") == ("position", {"position_id": 3})


def test_a_rule_added_later_is_matched() -> None:
    url_map = memo_map()
    adapter = url_map.bind("localhost")
    assert adapter.match("/api/v1/positions/5", "GET")[0] == "position"
    url_map.add(Rule("/api/v1/positions/5", endpoint="five", methods=["GET"]))
    assert url_map.bind("localhost").match("/api/v1/positions/5", "GET")[0] == "five"

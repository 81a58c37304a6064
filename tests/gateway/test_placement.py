"""The placement port's pure parts: WebSocket URLs, the moved frame, the REST redirect."""

from __future__ import annotations

import pytest

from gateway.placement import (
    LOCAL,
    AllLocal,
    Elsewhere,
    ServedElsewhere,
    Unowned,
    moved_frame,
    redirect_response,
    require_local,
    websocket_url,
)
from protocol.redirects import Moved


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("https://node-2.example.com", "wss://node-2.example.com/ws/device"),
        ("https://node-2.example.com/", "wss://node-2.example.com/ws/device"),
        ("http://127.0.0.1:8001", "ws://127.0.0.1:8001/ws/device"),
        ("wss://already.example.com", "wss://already.example.com/ws/device"),
    ],
)
def test_websocket_urls(base: str, url: str) -> None:
    assert websocket_url(base, "/ws/device") == url


def test_the_moved_frame_of_each_placement() -> None:
    there = Elsewhere(url="https://n2.example.com", partition=9, epoch=12)
    assert moved_frame(there, "/ws/client") == Moved(
        url="wss://n2.example.com/ws/client", partition=9, epoch=12, retry_after_ms=0
    )
    nobody = Unowned(partition=9, retry_after_ms=250)
    assert moved_frame(nobody, "/ws/device") == Moved(url=None, partition=9, retry_after_ms=250)


def test_the_redirect_keeps_path_and_query_and_unowned_says_when() -> None:
    there = Elsewhere(url="https://n2.example.com/", partition=3, epoch=7)
    status, headers, body = redirect_response(there, "/api/v1/positions?state=open&x=%20")
    assert status == 307
    assert headers == {"Location": "https://n2.example.com/api/v1/positions?state=open&x=%20"}
    assert body["code"] == "moved" and body["details"] == {"partition": 3, "epoch": 7}
    status, headers, body = redirect_response(Unowned(partition=3, retry_after_ms=1), "/x")
    assert (status, headers) == (503, {"Retry-After": "1"})  # never 0: a client would spin
    assert redirect_response(Unowned(partition=3, retry_after_ms=2_001), "/x")[1] == {
        "Retry-After": "3"
    }


def test_a_single_node_serves_everyone() -> None:
    assert AllLocal().locate("anyone") == LOCAL
    require_local(AllLocal(), "anyone")
    with pytest.raises(ServedElsewhere) as raised:
        require_local(_Always(Unowned(partition=1, retry_after_ms=5)), "u")
    assert raised.value.placement == Unowned(partition=1, retry_after_ms=5)


class _Always:
    def __init__(self, placement: Elsewhere | Unowned) -> None:
        self.placement = placement

    def locate(self, user_id: str) -> Elsewhere | Unowned:
        return self.placement

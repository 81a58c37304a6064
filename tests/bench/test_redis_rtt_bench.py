"""The Redis round-trip harness runs at a tiny count and writes the documented JSON shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import redis_rtt
from persistence.redis_server import find_redis_server
from tests.fixtures.redis import _skip_or_fail

PATHS = {
    "blocking_socket", "trio_socket_stream", "trio_wait_readable", "resp_tcp", "resp_unix",
    "resp_tcp_blocked", "resp_unix_blocked", "append_one_quote_unix",
    "append_one_quote_unix_in_call",
}  # fmt: skip


def test_redis_rtt_bench_json_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if find_redis_server() is None:
        _skip_or_fail("redis-server binary not found (the harness starts its own)")
    out = tmp_path / "out.json"
    assert redis_rtt.main(["--count", "50", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert {"cpu", "python", "commit"} <= set(payload["machine"])
    assert payload["count"] == 50 and set(payload["paths"]) == PATHS
    for figures in payload["paths"].values():
        assert figures["cpu_us"] > 0 and figures["wall_us"] > 0
    assert "Redis PING round trips" in capsys.readouterr().out

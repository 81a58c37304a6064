"""bench.triggers runs end to end on a small book and writes the documented JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import triggers as bench_triggers


def test_triggers_bench_json_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.json"
    argv = ["--positions", "1000,20000", "--ticks", "3000", "--json", str(out)]
    assert bench_triggers.main(argv) == 0
    payload = json.loads(out.read_text())
    small, large = payload["results"]
    assert (small["positions"], large["positions"]) == (1000, 20000)
    for row in (small, large):
        assert row["quotes"] == 3000
        assert 0 < row["quote_ns_p50"] <= row["quote_ns_p99"]
        assert row["bytes_per_position"] > 0
    # 20,000 positions, 12,000 of them cancelled: the stale levels pass twice the live ones
    # (and the 4,096 floor), so a compaction ran inside one of the cancels.
    assert large["compact_pause_ms"] > 0
    assert "quote_ns_p50 at 20,000 / at 1,000" in capsys.readouterr().out

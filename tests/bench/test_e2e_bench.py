"""The end-to-end harness runs at a tiny size (engine, EA and client processes, real sockets)
and writes the JSON it promises; it also proves no close is lost or doubled on the way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import e2e


@pytest.mark.slow
def test_e2e_harness_tiny(tmp_path: Path) -> None:
    out, plot = tmp_path / "e2e.json", tmp_path / "e2e.png"
    argv = [
        "--devices",
        "4",
        "--positions",
        "80",
        "--clients",
        "2",
        "--rate",
        "100",
        "--duration",
        "3",
        "--device-workers",
        "1",
        "--grace",
        "2",
        "--task-steps",
        "--json",
        str(out),
        "--plot",
        str(plot),
    ]
    assert e2e.main(argv) == 0
    report = json.loads(out.read_text())
    results = report["results"]
    for key in ("tick_to_close_us", "close_to_client_ms", "client_lag_ms", "echo_rtt_us"):
        assert set(results[key]) >= {"p50", "p90", "p99", "p999", "max"}, key
    assert results["expected_closes"] > 0 and results["tick_to_close_us"]["count"] > 0
    assert results["lost"] == 0 and results["duplicated"] == 0
    # Nothing closed a session here, so nothing may arrive twice, not even under its old id.
    assert results["disconnects"] == 0 and results["resent"] == 0
    assert results["engine_metrics"]["tripwire_devices_connected"] == 4
    assert results["bad_signatures"] == 0
    assert report["ratios"]["tick_to_close_p50_over_echo_p50"] > 0
    assert report["ratios"]["node_to_device_p50_over_echo_p50"] > 0
    # The same closes from the quote's arrival at the node: never longer than from its schedule.
    node, tick = results["node_to_device_us"], results["tick_to_close_us"]
    assert node["count"] == tick["count"] and node["p50"] <= tick["p50"]
    # Each hop of the traced closes (the engine stamps them, the EA adds its arrival).
    hops = results["hop_us"]
    assert set(hops) == set(e2e.HOP_NAMES)
    assert all(hops[name]["count"] > 0 for name in e2e.HOP_NAMES), hops
    assert hops["total"]["count"] == results["tick_to_close_us"]["count"]
    for key in (
        "burst_last_close_us",
        "burst_last_close_node_us",
        "burst_extra_close_us",
        "device_worker_lag_us",
        "device_read_lag_us",
        "feeder_late_us",
        "first_close_node_us",
        "closes_per_firing_quote",
    ):
        assert set(results[key]) >= {"p50", "p99", "max", "count"}, key
    # Every close has a rank in its quote's burst; the first closes are one per firing quote.
    ranks = results["node_to_device_by_rank"]
    assert sum(row["count"] for row in ranks) == node["count"]
    assert ranks[0]["rank"] == "0" and ranks[0]["count"] == results["first_close_node_us"]["count"]
    # What the firing quotes waited for, and (with --task-steps) which tasks ran meanwhile.
    wait = results["quote_wait"]
    assert set(wait) == {"wait_us", "feed_us", "device_us", "other_us", "device_frames"}
    assert wait["wait_us"]["count"] == results["first_close_node_us"]["count"]
    by_task = results["quote_wait_by_task"]
    assert isinstance(by_task, list) and all(0 <= row["share_pct"] <= 100 for row in by_task)
    tasks = [row for row in by_task if not row["task"].startswith("gc:")]
    assert sum(row["share_pct"] for row in tasks) <= 100.5
    assert report["config"]["harness_nice"] == 10
    parts = results["burst_close_parts"]
    assert set(parts) == {"decide_us", "send_us", "first_send_us"}
    assert parts["first_send_us"]["count"] == results["first_close_node_us"]["count"]
    per_second = results["tick_to_close_per_second"]
    assert per_second and sum(row["count"] for row in per_second) == hops["total"]["count"]
    assert set(results["cpu"]) >= {"engine", "feeder", "devices0"}
    assert set(results["cpu"]["engine"]) == {"cpu_pct", "runqueue_wait_pct"}
    assert report["config"]["frame_ms"] == 1.0  # each quote sent when due, by default
    assert set(report) >= {"machine", "config", "results", "ratios"}
    assert plot.stat().st_size > 1000

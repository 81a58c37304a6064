"""The scale-out harness runs at a tiny size (every arm, one step, one run, the failover) on
real node processes, a real Postgres and a private Redis, and writes the JSON it promises; no
close is lost or doubled, not even across a kill -9."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench import cluster
from persistence.redis_server import find_redis_server

pytestmark = pytest.mark.skipif(find_redis_server() is None, reason="needs redis-server")

STEP_KEYS = {
    "run",
    "arm",
    "rate",
    "verdict",
    "reasons",
    "closes",
    "tick_to_close_ms",
    "engine_cpu_s",
    "idle_engine_cpu_pct",
    "closes_per_engine_cpu_s",
    "engine_loop_cpu_s",
    "engine_loop_switches_per_quote",
    "journal_lag_s_max",
    "stream_lag_s_max",
    "feeder_late_ms",
    "lost",
    "duplicated",
    "settle_s",
    "node_metrics",
}


@pytest.mark.slow
def test_cluster_harness_tiny(tmp_path: Path) -> None:
    out = tmp_path / "cluster.json"
    argv = ["--devices", "12", "--positions", "240", "--device-workers", "1"]
    argv += ["--warmup", "1", "--step-s", "3", "--steps", "100", "--runs", "1"]
    argv += ["--failover-s", "10", "--failover-kill-at", "3", "--json", str(out)]
    if os.environ.get("TEST_DATABASE_URL"):
        argv += ["--database-url", os.environ["TEST_DATABASE_URL"]]
    assert cluster.main(argv) == 0
    report = json.loads(out.read_text())
    assert set(report) >= {"machine", "config", "steps", "capacity", "cluster_efficiency"}
    assert set(report) >= {"capacity_ratio", "failover", "lost", "duplicated", "note"}
    steps = report["steps"]
    assert [(s["arm"], s["rate"]) for s in steps] == [
        ("single", 100.0),
        ("cluster1", 100.0),
        ("cluster2", 100.0),
    ]
    for step in steps:
        assert set(step) >= STEP_KEYS, step["arm"]
        assert step["verdict"] in {"pass", "fail", "invalid"}
        assert step["expected_closes"] > 0 and step["closes_total"] == step["expected_closes"]
        assert step["lost"] == 0 and step["duplicated"] == 0, step
        assert step["unexpected_closes"] == 0 and step["nodes_alive"]
        assert set(step["tick_to_close_ms"]) == {"p50", "p99", "max", "count"}
        # The trio loop's share of the nodes' CPU, and its sleeps: it waits for sockets.
        assert 0 < step["engine_loop_cpu_s"] <= step["engine_cpu_s"] + 0.02, step
        assert step["engine_loop_switches_per_quote"]["voluntary"] > 0, step
    # Settled before the feed: every partition served, by one node or shared by two.
    owned = {
        s["arm"]: [m["tripwire_partitions_owned"] for m in s["node_metrics"]]
        for s in steps
        if s["arm"] != "single"  # no partitions on the single-node path
    }
    assert "tripwire_partitions_owned" not in steps[0]["node_metrics"][0]
    assert sum(owned["cluster1"]) == 64 and len(owned["cluster2"]) == 2
    assert sum(owned["cluster2"]) == 64 and min(owned["cluster2"]) >= 31
    assert set(report["capacity"]) == {"single", "cluster1", "cluster2"}
    for caps in report["capacity"].values():
        assert set(caps["runs"][0]) == {"run", "capacity", "stopped_by", "invalid_steps"}
    assert [e["rate"] for e in report["cluster_efficiency"]["runs"]] == [100.0]
    assert len(report["capacity_ratio"]["runs"]) == 1
    failover = report["failover"]
    assert failover["devices_on_killed_node"] > 0
    assert failover["devices_not_served_again"] == 0 and failover["failover_s"] > 0
    assert failover["lost"] == 0 and failover["duplicated"] == 0
    assert failover["unexpected_closes"] == 0
    assert failover["survivor_metrics"]["tripwire_partitions_owned"] == 64
    assert report["lost"] == 0 and report["duplicated"] == 0

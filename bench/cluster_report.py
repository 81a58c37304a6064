"""What ``bench.cluster`` concludes from its step rows: each step's verdict, the capacities,
``cluster_efficiency`` and ``capacity_ratio`` (the JSON), and the summary it prints."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

from bench.common import print_table

__all__ = ["report", "summary", "verdict"]


FEW_CORES_NOTE = (
    "{cores} cores: the nodes share them with Postgres, Redis, the simulated EAs and the "
    "feeder; {pin}. capacity_ratio here shows what splitting the users costs and whether a "
    "second node adds anything when there is no idle core to give it: it cannot show linear "
    "scaling, which needs a core (or machine) per node plus room for the rest."
)
MANY_CORES_NOTE = (
    "{cores} cores: {pin}; Postgres, Redis, the simulated EAs and the feeder share the others. "
    "capacity_ratio near 2 is linear scaling, as far as those shared services keep up."
)


def verdict(args: Any, row: dict[str, Any]) -> tuple[str, list[str]]:
    """``pass``, ``fail`` or ``invalid``, and why (see ``bench.cluster``'s docstring)."""
    late = row["feeder_late_ms"]["p99"]
    if late is None or late > args.feeder_late_ms:
        return "invalid", [f"feeder p99 late {late} ms > {args.feeder_late_ms} ms"]
    reasons = []
    p99 = row["tick_to_close_ms"]["p99"]
    if p99 is None:
        reasons.append("no close after the warm-up")
    elif p99 > args.p99_bound_ms:
        reasons.append(f"tick->close p99 {p99} ms > {args.p99_bound_ms} ms")
    for key in ("journal_lag_s_max", "stream_lag_s_max"):
        if row[key] is not None and row[key] > args.lag_bound_s:
            reasons.append(f"{key} {row[key]:.3g} s > {args.lag_bound_s} s")
    for key in ("lost", "duplicated"):
        if row[key]:
            reasons.append(f"{key} {row[key]}")
    if not row["nodes_alive"]:
        reasons.append("a node exited")
    return ("fail", reasons) if reasons else ("pass", [])


def report(
    args: Any, rows: list[dict[str, Any]], failover: dict[str, Any] | None, folder: Path
) -> dict[str, Any]:
    """Capacities, efficiencies and their ratio from the step rows."""
    runs = range(1, args.runs + 1)
    capacity: dict[str, list[dict[str, Any]]] = {}
    for name in args.arms:
        capacity[name] = []
        for r in runs:
            cap: float | None = None  # no step passed: unknown (every one invalid, or failed)
            stop, invalid = None, []
            for row in (x for x in rows if x["run"] == r and x["arm"] == name):
                if row["verdict"] == "pass":
                    cap = row["rate"]
                elif row["verdict"] == "invalid":
                    invalid.append(row["rate"])
                elif row["verdict"] == "fail":
                    stop = f"{row['rate']:g}/s: {'; '.join(row['reasons'])}"
                    break
            capacity[name].append(
                {"run": r, "capacity": cap, "stopped_by": stop, "invalid_steps": invalid}
            )
    by = {(x["run"], x["arm"], x["rate"]): x for x in rows if x["verdict"] != "skipped"}
    efficiency = []
    for (r, arm, rate), row in sorted(by.items()):
        single = by.get((r, "single", rate))
        if arm != "cluster1" or single is None:
            continue
        a, b = row["closes_per_engine_cpu_s"], single["closes_per_engine_cpu_s"]
        ratio = round(a / b, 3) if a and b else None
        efficiency.append({"run": r, "rate": rate, "single": b, "cluster1": a, "ratio": ratio})
    ratios = []
    if "cluster1" in capacity and "cluster2" in capacity:
        for one, two in zip(capacity["cluster1"], capacity["cluster2"], strict=True):
            known = one["capacity"] and two["capacity"] is not None
            ratios.append(round(two["capacity"] / one["capacity"], 3) if known else None)
    cores = len(os.sched_getaffinity(0))
    both = [x for x in rows if x.get("arm") == "cluster2"] + ([failover] if failover else [])
    pinned = next((x["pinned"] for x in both if x.get("pinned")), None)
    # Two nodes pinned to two cores, plus Postgres, Redis, the EAs and the feeder: 4 at least.
    note = (FEW_CORES_NOTE if cores < 4 else MANY_CORES_NOTE).format(
        cores=cores,
        pin=f"the nodes were pinned one per core ({pinned})"
        if pinned
        else "the nodes were not pinned",
    )
    measured = [x for x in rows if x["verdict"] != "skipped"]
    lost = sum(x["lost"] for x in measured) + (failover["lost"] if failover else 0)
    duplicated = sum(x["duplicated"] for x in measured) + (
        failover["duplicated"] if failover else 0
    )
    return {
        "steps": rows,
        "capacity": {
            name: {"runs": caps, "median": _median([c["capacity"] for c in caps])}
            for name, caps in capacity.items()
        },
        "cluster_efficiency": {
            "target": 0.8,
            "runs": efficiency,
            "median": _median([e["ratio"] for e in efficiency]),
            "median_by_rate": {
                f"{rate:g}": _median([e["ratio"] for e in efficiency if e["rate"] == rate])
                for rate in sorted({e["rate"] for e in efficiency})
            },
        },
        "capacity_ratio": {"runs": ratios, "median": _median(ratios)},
        "failover": failover,
        "lost": lost,
        "duplicated": duplicated,
        "note": note,
        "logs": str(folder),
    }


def _median(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def summary(args: Any, out: dict[str, Any]) -> None:
    rows = []
    for x in out["steps"]:
        if x["verdict"] == "skipped":
            rows.append({k: x[k] for k in ("run", "arm", "rate", "verdict")})
            continue
        rows.append(
            {
                "run": x["run"],
                "arm": x["arm"],
                "rate": x["rate"],
                "verdict": x["verdict"],
                "closes": x["closes"],
                "p50_ms": x["tick_to_close_ms"]["p50"],
                "p99_ms": x["tick_to_close_ms"]["p99"],
                "cpu_s": x["engine_cpu_s"],
                "closes/cpu_s": x["closes_per_engine_cpu_s"],
                "idle_cpu%": x["idle_engine_cpu_pct"],
                "jlag_s": x["journal_lag_s_max"],
                "slag_s": x["stream_lag_s_max"],
                "feed_p99_ms": x["feeder_late_ms"]["p99"],
                "lost": x["lost"],
                "dup": x["duplicated"],
                "settle_s": x["settle_s"],
            }
        )
    columns = ["run", "arm", "rate", "verdict", "closes", "p50_ms", "p99_ms", "cpu_s"]
    columns += ["closes/cpu_s", "idle_cpu%", "jlag_s", "slag_s", "feed_p99_ms", "lost", "dup"]
    columns += ["settle_s"]
    print_table(
        f"cluster steps: {args.devices} devices, {args.positions:,} positions, warm-up "
        f"{args.warmup:g} s + {args.step_s:g} s per step (p99 bound {args.p99_bound_ms:g} ms, "
        f"lag bound {args.lag_bound_s:g} s, feeder p99 <= {args.feeder_late_ms:g} ms)",
        rows,
        columns,
    )
    for x in out["steps"]:
        if x.get("reasons"):
            print(
                f"  run {x['run']} {x['arm']} {x['rate']:g}/s {x['verdict']}: "
                + "; ".join(x["reasons"])
            )
    print_table(
        "capacity (quotes/s: the last step passed)",
        [
            {
                "arm": name,
                **{f"run{c['run']}": c["capacity"] for c in cap["runs"]},
                "median": cap["median"],
            }
            for name, cap in out["capacity"].items()
        ],
        ["arm", *[f"run{r}" for r in range(1, args.runs + 1)], "median"],
    )
    eff = out["cluster_efficiency"]
    print(
        "cluster_efficiency (cluster1 / single closes per engine CPU s; target >= 0.8): "
        + (", ".join(f"{r}/s {v}" for r, v in eff["median_by_rate"].items()) or "n/a")
    )
    ratio = out["capacity_ratio"]
    print(f"capacity_ratio (cluster2 / cluster1): runs {ratio['runs']} median {ratio['median']}")
    f = out["failover"]
    if f is not None:
        print(
            f"failover: kill -9 of node1 at {f['kill_at_s']:g} s under {f['rate']:g} quotes/s: "
            f"failover_s {f['failover_s']} (p50 {f['failover_p50_s']}, target <= 3 s) over "
            f"{f['devices_on_killed_node']} devices ({f['devices_not_served_again']} not served "
            f"again); partitions reclaimed in {f['partitions_reclaimed_s']} s; lost {f['lost']} "
            f"duplicated {f['duplicated']} closed_after_failover {f['closed_after_failover']} "
            f"resent {f['resent']}"
        )
    print(f"lost {out['lost']}  duplicated {out['duplicated']} (every step and the failover)")
    print(f"note: {out['note']}")
    print(f"logs: {out['logs']}")

"""Prometheus metrics, read at scrape time.

Nothing on the tick path touches a Prometheus object: actors keep plain counters and the
collector below reads them when ``/metrics`` is scraped. Latency histograms are the exception
that must be observed as events happen: tick-to-outbox (per fired quote, not per quote) and
HTTP request duration.

Names follow Prometheus' conventions: every family is ``tripwire_``-prefixed, in base units
(seconds, not ms), counters end in ``_total``; label values come from bounded sets (a route is
its rule, never the path asked for; an unknown method is ``other``). The registry also carries
the standard ``process_*`` and ``python_*`` collectors.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from gateway.context import GatewayContext

__all__ = ["HTTP_METHODS", "Metrics"]

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods that label the HTTP histogram as themselves; any other is ``other`` (bounded)."""

_LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)


class _Collector:
    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        ctx = self.ctx
        stats: dict[str, Any] = ctx.node.stats()
        c = ctx.counters

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield counter("tripwire_quotes", "Quotes the symbol actors processed", stats["quotes"])
        rejected = CounterMetricFamily(
            "tripwire_quotes_rejected", "Quotes refused by validation, by reason", labels=["reason"]
        )
        for reason, value in stats["quotes_rejected_by_reason"].items():
            rejected.add_metric([reason], value)
        yield rejected
        yield counter(
            "tripwire_quotes_coalesced", "Quotes coalesced under load", stats["quotes_coalesced"]
        )
        yield counter("tripwire_fires", "SL/TP triggers fired", stats["fires"])
        yield gauge(
            "tripwire_feed_lag_seconds",
            "Last quote batch: from its publisher's sent_ms to the node (the node's backlog)",
            ctx.node.feed_lag_ms / 1000,
        )
        yield counter(
            "tripwire_feed_first_deferrals",
            "Passes through the scheduler that device and client work made so that a quote "
            "already at the node was read first",
            ctx.feed_first.deferred,
        )
        yield gauge(
            "tripwire_armed_positions", "Positions watched by trigger books", stats["armed"]
        )
        yield counter("tripwire_alerts", "Alerts raised", stats["alerts"])
        yield counter(
            "tripwire_commands_held_no_lease",
            "Device sends held because this node's lease on the user's partition had lapsed",
            stats["commands_held_no_lease"],
        )
        yield counter(
            "tripwire_ack_hash_mismatches",
            "Acks refused: their command_hash names another command than the id's",
            stats["ack_hash_mismatches"],
        )
        yield gauge(
            "tripwire_devices_connected", "Devices with a live session", stats["devices_connected"]
        )
        yield gauge("tripwire_clients_connected", "Client streams", c.clients_connected)
        yield counter("tripwire_clients_dropped", "Slow clients dropped", c.clients_dropped)
        depth = GaugeMetricFamily(
            "tripwire_mailbox_depth", "Deepest mailbox by actor kind", labels=["kind"]
        )
        for kind, value in stats["mailbox_depth"].items():
            depth.add_metric([kind], value)
        yield depth
        restarts = CounterMetricFamily(
            "tripwire_actor_restarts", "Supervised restarts", labels=["actor"]
        )
        for actor, value in stats["restarts"].items():
            restarts.add_metric([actor], value)
        yield restarts
        outcomes = CounterMetricFamily(
            "tripwire_commands",
            "Device commands by outcome: the ack's category (done, retryable, final, "
            "already_closed, unknown) or lost (no ack before the session ended)",
            labels=["outcome"],
        )
        for outcome, value in sorted(stats["command_outcomes"].items()):
            outcomes.add_metric([outcome], value)
        yield outcomes
        logins = CounterMetricFamily(
            "tripwire_logins", "REST logins by outcome", labels=["outcome"]
        )
        for outcome, value in sorted(c.logins.items()):
            logins.add_metric([outcome], value)
        yield logins
        edge = ctx.edge
        refused = CounterMetricFamily(
            "tripwire_connections_refused",
            "Connections refused at the edge: the address had its limit open (http, websocket)",
            labels=["kind"],
        )
        for kind, value in sorted(edge.refused.items() if edge is not None else ()):
            refused.add_metric([kind], value)
        yield refused
        handshakes = CounterMetricFamily(
            "tripwire_handshakes", "Device handshakes by outcome", labels=["outcome"]
        )
        for outcome, value in c.handshakes.items():
            handshakes.add_metric([outcome], value)
        yield handshakes
        bad = CounterMetricFamily(
            "tripwire_bad_frames", "Malformed frames by code", labels=["code"]
        )
        for code, value in c.bad_frames.items():
            bad.add_metric([code], value)
        yield bad
        legacy = CounterMetricFamily(
            "tripwire_legacy_calls", "Calls to the old Flask routes", labels=["route"]
        )
        for route, value in c.legacy_calls.items():
            legacy.add_metric([route], value)
        yield legacy
        journal = ctx.journal_writer
        if journal is not None:
            yield gauge("tripwire_journal_pending", "Records not yet committed", journal.pending)
            yield gauge(
                "tripwire_journal_lag_seconds",
                "Age of the oldest uncommitted record",
                journal.lag_ms / 1000,
            )
            yield counter("tripwire_journal_records", "Records committed", journal.records_written)
            yield counter(
                "tripwire_journal_write_errors", "Failed journal writes", journal.write_errors
            )
            yield gauge(
                "tripwire_journal_healthy",
                "1 unless the journal is in an outage",
                1.0 if journal.healthy else 0.0,
            )
        yield counter(
            "tripwire_nonce_checks_degraded",
            "Hello nonce checks answered by the in-process cache alone because Redis was "
            "unavailable (0 without Redis: that memory is then the only store, not a fallback)",
            getattr(ctx.nonces, "degraded_total", 0),
        )
        yield counter(
            "tripwire_device_timeouts",
            "Device sessions closed with 4004: no frame within stale_after_s",
            c.device_timeouts,
        )
        yield from _cluster_metrics(ctx)
        yield from _notifier_metrics(ctx)
        cache = ctx.cache
        if cache is not None:
            yield counter(
                "tripwire_read_cache_degraded",
                "Reads that bypassed a down Redis",
                getattr(cache, "degraded_total", 0),
            )


# -- notifications (gateway/notifier.py): plain counters read here ---------------------------


def _cluster_metrics(ctx: GatewayContext) -> Iterator[Metric]:
    """A cluster node's partitions, fences and tick streams (nothing on a single node)."""
    figures = ctx.cluster_metrics
    if figures is None:
        return
    for name, (kind, doc, value) in figures().items():
        if kind == "counter":
            yield CounterMetricFamily(name, doc, value=value)
        else:
            yield GaugeMetricFamily(name, doc, value=value)


def _notifier_metrics(ctx: GatewayContext) -> Iterator[Metric]:
    notifier = ctx.notifier
    if notifier is None:
        return
    stats = notifier.stats
    delivered = CounterMetricFamily(
        "tripwire_notifications_delivered",
        "Notifications delivered, by channel",
        labels=["channel"],
    )
    failed = CounterMetricFamily(
        "tripwire_notifications_failed",
        "Notifications given up (retries exhausted or a final answer), by channel",
        labels=["channel"],
    )
    for channel in ("webhook", "telegram"):
        delivered.add_metric([channel], stats.delivered[channel])
        failed.add_metric([channel], stats.failed[channel])
    yield delivered
    yield failed
    yield CounterMetricFamily(
        "tripwire_notifications_retries", "Notification attempts retried", value=stats.retries
    )
    yield CounterMetricFamily(
        "tripwire_notifications_dropped",
        "Notifications dropped by the full queue (the oldest first)",
        value=stats.dropped,
    )
    yield GaugeMetricFamily(
        "tripwire_notifications_queued", "Notifications waiting for delivery", value=notifier.depth
    )


class Metrics:
    """The registry behind ``/metrics`` plus the histograms observed as things happen."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # The standard collectors, on this registry (the default one is not what we serve).
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.tick_to_outbox = Histogram(
            "tripwire_tick_to_outbox_seconds",
            "Quote processed to close commands in outboxes",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.http = Histogram(
            "tripwire_http_request_seconds",
            "HTTP request duration by route rule, method and status",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def collect_from(self, ctx: GatewayContext) -> None:
        """Export what ``ctx`` counts (the node, the edge, the journal...) at scrape time."""
        self.registry.register(_Collector(ctx))

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        """One answered request; ``route`` is the matched rule (``unmatched`` for none)."""
        method = method if method in HTTP_METHODS else "other"
        self.http.labels(route, method, str(status)).observe(seconds)

    def observe_fire(self, started: float, commands: int) -> None:
        self.tick_to_outbox.observe(time.perf_counter() - started)

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""What the REST API adds to ``/metrics``, read at scrape time like the rest of the collector.

* ``tripwire_rest_actions_total{action,outcome}``: every audited action by outcome (signals
  posted, approvals and their refusals, closes, device changes, settings, users).
* ``tripwire_rest_read_cache_total{result}``: the read cache's hits, misses and coalesced
  loads (Redis-backed or in-process, whichever serves the API).
* ``tripwire_candle_samples_total``: prices sampled into the candle book.
* ``tripwire_chart_renders_total`` and ``tripwire_chart_refused_total{reason}``: PNGs the
  chart pool rendered, and the 429s it answered (``user``: that user has their charts in
  flight; ``busy``: the queue is full).

Request latency per route and ``tripwire_legacy_calls_total{route}`` are the app's own
collector's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, Metric

from gateway.rest.reads import cache_of

if TYPE_CHECKING:
    from gateway.context import GatewayContext

__all__ = ["RestCollector", "count_action"]


def count_action(context: GatewayContext, action: str, outcome: str) -> None:
    """Count one audited action (a plain counter bump; exported at scrape time)."""
    context.counters.rest_actions[(action, outcome)] += 1


class RestCollector:
    """The REST API's metrics for the app's Prometheus registry."""

    def __init__(self, context: GatewayContext) -> None:
        self.context = context

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        context = self.context
        actions = CounterMetricFamily(
            "tripwire_rest_actions", "Audited REST actions by outcome", labels=["action", "outcome"]
        )
        for (action, outcome), value in sorted(context.counters.rest_actions.items()):
            actions.add_metric([action, outcome], value)
        yield actions
        cache = cache_of(context)
        reads = CounterMetricFamily(
            "tripwire_rest_read_cache", "REST read cache lookups by result", labels=["result"]
        )
        reads.add_metric(["hit"], cache.hits)
        reads.add_metric(["miss"], cache.misses)
        reads.add_metric(["coalesced"], cache.coalesced)
        yield reads
        pool = context.chart_pool
        yield CounterMetricFamily(
            "tripwire_chart_renders",
            "PNG charts the chart pool rendered",
            value=pool.rendered if pool is not None else 0,
        )
        refused = CounterMetricFamily(
            "tripwire_chart_refused", "Chart requests refused (429) by reason", labels=["reason"]
        )
        for reason, value in sorted(pool.refused.items() if pool is not None else ()):
            refused.add_metric([reason], value)
        yield refused
        book = context.candles
        yield CounterMetricFamily(
            "tripwire_candle_samples",
            "Prices sampled into the candle book",
            value=book.samples if book is not None else 0,
        )

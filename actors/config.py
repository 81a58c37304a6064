"""A node's sizes and periods (every actor reads its own from here)."""

from __future__ import annotations

import msgspec

from engine.guards import MarketLimits
from engine.quotes import QuoteLimits
from engine.user import Timing

__all__ = ["NodeConfig"]


class NodeConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Sizes and periods of a node, defaulted for the 2-core dev machine."""

    quote_inbox: int = 4096
    user_mailbox: int = 65_536
    device_mailbox: int = 65_536
    outbox_limit: int = 10_000
    device_stale_ms: int = 30_000
    device_tick_s: float = 1.0
    heartbeat_s: int = 5
    client_capacity: int = 1024
    client_max_overruns: int = 3
    price_push_ms: int = 250
    drain_timeout_s: float = 5.0
    dispatch_budget_ms: float = 50.0
    """How long a symbol actor hands fired triggers to user actors before it lets the other
    tasks run (a breach storm is then handed out in slices; see ``actors.symbol``). Smaller
    slices let the first closes out sooner but stretch a burst: the device writers of each
    slice run before the next slice (bench.engine at 5 ms: tick-to-outbox p99 ~2x; at 50 ms:
    no measurable cost, the storm's first frame still ~2.5x sooner)."""
    fire_step: int = 25_000
    """How many crossed levels a symbol actor fires in one step: a gap through a crowded book
    is fired in steps, the other tasks running between them as between hand-out slices (a
    100,000-level storm fired at once held the loop ~0.6 s). Each step hands every user its
    own share, so small steps multiply the per-user costs: bench.engine's storm took 4.2-4.4 s
    at 2,000 and 3.0 s at 10,000, against 2.1-2.6 s at 25,000 or all at once; at 25,000 its
    first close reached a link in 0.34-0.42 s instead of 0.97-1.04 s."""
    timing: Timing = msgspec.field(default_factory=Timing)
    quote_limits: QuoteLimits = msgspec.field(default_factory=QuoteLimits)
    market_limits: MarketLimits = msgspec.field(default_factory=MarketLimits)

"""Gateway test helpers: the app around an in-memory node (no database, no sockets)."""

from __future__ import annotations

from quart_trio import QuartTrio

from actors.clock import WallClock
from actors.node import MemoryJournal, Node
from gateway.app import create_app
from gateway.auth import TokenIssuer
from gateway.config import load_settings
from gateway.context import GatewayContext
from gateway.memory_nonces import MemoryNonces


def in_memory_app() -> QuartTrio:
    """The real app (routes, static files, error handlers) over a node that is not running."""
    settings = load_settings({}, feed="none", paper_device=False, demo_strategy=False)
    ctx = GatewayContext(
        settings=settings,
        node=Node(),
        registry=None,
        nonces=MemoryNonces(),
        tokens=TokenIssuer(b"gateway-test-secret-0123456789abcdef", 3600),
        clock=WallClock(),
        journal=MemoryJournal(),
    )
    return create_app(ctx)

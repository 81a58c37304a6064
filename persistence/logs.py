"""Logging, configured in one place for every process of the engine.

It lives in the lowest driver layer so that both the server (``gateway.cli``) and the
snapshotter child process (``persistence.snapshotter``) render the same way: the child is
started with the server's format and level.

structlog with two renderings: JSON lines in production (one object a line, for machines),
readable console lines in development. Every logger is expected to be bound to the ids its
records concern (``user_id``, ``device_id``, ``position_id``, ``command_id``, ``symbol``), e.g.
``log = get_logger().bind(device_id=device_id)``; the names are kept consistent here so
operators can grep and join on them.

Only the synchronous methods (``log.info``) are used: structlog's async ones assume asyncio.
Secrets never reach a record: keys that name a secret are replaced before rendering.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

__all__ = ["BOUND_IDS", "configure_logging", "get_logger"]

BOUND_IDS = ("user_id", "device_id", "position_id", "command_id", "symbol", "signal_id")
"""The ids records are bound to, by these exact names."""

_SECRET_MARKERS = (
    "secret",
    "password",
    "token",
    "authorization",
    "signature",
    "session_key",
    "private",
)


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace the value of any key that names a secret."""
    for key in list(event):
        lowered = key.lower()
        if any(marker in lowered for marker in _SECRET_MARKERS):
            event[key] = "[redacted]"
    return event


def configure_logging(
    mode: str = "console", level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure structlog for the whole process.

    Args:
        mode: ``json`` (production) or ``console`` (development).
        level: minimum level name (``debug``, ``info``, ``warning``, ``error``).
        stream: where records go (standard error by default).
    """
    if mode not in {"json", "console"}:
        raise ValueError("log mode must be 'json' or 'console'")
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if mode == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info if mode == "json" else _identity,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def _identity(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return event


def get_logger(**ids: Any) -> Any:
    """A logger bound to ``ids`` (use the names in :data:`BOUND_IDS`)."""
    return structlog.get_logger().bind(**ids)

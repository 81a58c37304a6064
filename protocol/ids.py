"""Identifiers derived from what they name, so that a repeat is recognisable as a repeat.

A command id is ``<position_id>.<action>.<attempt>``: re-sending the same command (after a
reconnect, after a crash) re-sends the same id, and the EA answers a repeated id with its earlier
result instead of trading twice. A new attempt (after a retryable rejection such as a requote)
is a new command and gets the next attempt number.

The client id is what an open command asks the terminal to write into the order comment
(``tw:<position_id>``); the positions snapshot maps tickets back to positions through it.
"""

from __future__ import annotations

import re

from protocol.errors import UsageError

__all__ = [
    "ACTIONS",
    "CLIENT_ID_PREFIX",
    "MAX_POSITION_ID",
    "client_id",
    "command_id",
    "parse_command_id",
    "position_id_from_comment",
]

ACTIONS = frozenset({"open", "close", "pclose", "modify"})
CLIENT_ID_PREFIX = "tw:"
MAX_POSITION_ID = 31 - len(CLIENT_ID_PREFIX)
# fullmatch, never match: "$" also matches before a final newline ("P1\n" is no position id).
_POSITION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,27}")
_COMMAND_ID = re.compile(
    r"([A-Za-z0-9][A-Za-z0-9_\-]{0,27})\.(open|close|pclose|modify)\.([0-9]{1,9})"
)


def _is_position_id(value: str) -> bool:
    # Most ids are plain letters and digits ("P" + hex): str methods tell those ~5x faster
    # than the regex, which is left for ids with "_" or "-" (every close makes one id).
    if 0 < len(value) <= 28 and value.isascii() and value.isalnum():
        return True
    return _POSITION_ID.fullmatch(value) is not None


def command_id(position_id: str, action: str, attempt: int) -> str:
    """The id of the ``attempt``-th ``action`` command for ``position_id``.

    Raises:
        UsageError: unknown action, attempt < 1, or a position id that cannot be a client id.
    """
    if action not in ACTIONS:
        raise UsageError(f"unknown command action {action!r}")
    if not 1 <= attempt < 10**9:
        raise UsageError("attempt must be in 1..999999999")
    if not _is_position_id(position_id):
        raise UsageError(
            "position id must be 1-28 characters of [A-Za-z0-9_-]", position_id=position_id
        )
    return f"{position_id}.{action}.{attempt}"


def parse_command_id(value: str) -> tuple[str, str, int] | None:
    """``(position_id, action, attempt)`` of a command id, or None if it is not one of ours."""
    match = _COMMAND_ID.fullmatch(value)
    if match is None:
        return None
    return match.group(1), match.group(2), int(match.group(3))


def client_id(position_id: str) -> str:
    """The order-comment tag of a position (31 characters at most)."""
    if not _is_position_id(position_id):
        raise UsageError(
            "position id must be 1-28 characters of [A-Za-z0-9_-]", position_id=position_id
        )
    return CLIENT_ID_PREFIX + position_id


def position_id_from_comment(comment: str) -> str | None:
    """The position id a terminal's order comment carries, if it carries one of ours.

    Brokers sometimes append to comments (``tw:P1 [sl]``) or truncate them; only an intact
    tag at the start counts.
    """
    if not comment.startswith(CLIENT_ID_PREFIX):
        return None
    candidate = comment[len(CLIENT_ID_PREFIX) :].split(" ", 1)[0].split("[", 1)[0]
    return candidate if _POSITION_ID.fullmatch(candidate) else None

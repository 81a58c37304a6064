"""Broker result codes (MT5 trade server retcodes, MT4 error codes) and what they mean for us.

An ack carries the terminal's raw result code; the server classifies it here, never trusting
the EA's own ``category``. Rules of operation:

* ``done``: the broker did it (for ``DONE_PARTIAL`` the ack's ``fill_volume`` says how much).
* ``retryable``: the broker refused *before* executing (requote, price changed, off quotes,
  busy, too many requests): a new attempt (a new command id) after a backoff is safe.
* ``final``: retrying cannot help (invalid stops or volume, market closed, trading disabled,
  no money, ...): the position goes to CLOSE_FAILED and an operator is alerted.
* ``already_closed``: the terminal no longer holds that position or ticket (typically its
  broker-side stop won the race): treat it as closed, with the fill from the terminal's own
  close event or the next positions snapshot.
* ``unknown``: the request may or may not have executed (connection lost, timeout, locked):
  never resent blindly (a second close can open an opposite position on some accounts); the
  next positions snapshot decides. A timeout or a lost connection becomes ``retryable`` only
  with proof of non-execution: the ack's ``executed`` is ``false``.
* An ack that says ``executed: true`` is never retried: a retryable or final code with it is
  ``unknown``.
* ``-1`` and ``-2`` are the EA's own refusals (bad signature, a command it cannot apply):
  ``final``, the command never reached the broker.
* A code not in the table is ``final``: the safe default for what we do not understand is to
  stop and alert, never to retry blindly, and never to assume it worked.

The table is rendered into docs/protocol.md ("Result codes"); a test keeps the two equal.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from protocol.device import Platform
from protocol.errors import UsageError

__all__ = [
    "CATEGORY",
    "RESULT_CODES",
    "Category",
    "Platform",
    "ResultCategory",
    "ResultCode",
    "classify",
    "describe",
    "render_markdown_table",
]


class ResultCategory(enum.StrEnum):
    """What a broker's answer means for the command that got it (see the module docstring)."""

    DONE = "done"
    RETRYABLE = "retryable"
    FINAL = "final"
    ALREADY_CLOSED = "already_closed"
    UNKNOWN = "unknown"


Category = Literal["done", "retryable", "final", "already_closed", "unknown"]
"""A :class:`ResultCategory` by its value, as the engine's decisions take it."""

CATEGORY: dict[ResultCategory, Category] = {
    ResultCategory.DONE: "done",
    ResultCategory.RETRYABLE: "retryable",
    ResultCategory.FINAL: "final",
    ResultCategory.ALREADY_CLOSED: "already_closed",
    ResultCategory.UNKNOWN: "unknown",
}


@dataclass(frozen=True, slots=True)
class ResultCode:
    """One row of the table."""

    platform: Platform
    code: int
    name: str
    """The MQL constant without its prefix (``TRADE_RETCODE_``, ``ERR_``)."""
    category: ResultCategory
    description: str
    retry_if_not_executed: bool = False
    """``unknown`` by default, ``retryable`` when the ack proves non-execution."""


_D, _R, _F, _C, _U = (
    ResultCategory.DONE,
    ResultCategory.RETRYABLE,
    ResultCategory.FINAL,
    ResultCategory.ALREADY_CLOSED,
    ResultCategory.UNKNOWN,
)
_PROOF: Final = "proof"  # marks unknown-unless-proven-not-executed rows below

_MT5: Final = [
    (10004, "REQUOTE", _R, "Requote: the price moved, nothing was executed"),
    (10006, "REJECT", _F, "Request rejected by the broker"),
    (10007, "CANCEL", _F, "Request canceled by the trader"),
    (10008, "PLACED", _D, "Order placed (pending order accepted)"),
    (10009, "DONE", _D, "Request completed"),
    (10010, "DONE_PARTIAL", _D, "Only part of the volume was filled (see fill_volume)"),
    (10011, "ERROR", _F, "Request processing error"),
    (10012, "TIMEOUT", _PROOF, "Request canceled by timeout; it may have executed"),
    (10013, "INVALID", _F, "Invalid request"),
    (10014, "INVALID_VOLUME", _F, "Invalid volume"),
    (10015, "INVALID_PRICE", _F, "Invalid price"),
    (10016, "INVALID_STOPS", _F, "Invalid stops (SL/TP too close or on the wrong side)"),
    (10017, "TRADE_DISABLED", _F, "Trading is disabled"),
    (10018, "MARKET_CLOSED", _F, "Market is closed"),
    (10019, "NO_MONEY", _F, "Not enough money"),
    (10020, "PRICE_CHANGED", _R, "Prices changed, nothing was executed"),
    (10021, "PRICE_OFF", _R, "No quotes to process the request (off quotes)"),
    (10022, "INVALID_EXPIRATION", _F, "Invalid order expiration date"),
    (10023, "ORDER_CHANGED", _F, "Order state changed"),
    (10024, "TOO_MANY_REQUESTS", _R, "Too frequent requests"),
    (10025, "NO_CHANGES", _D, "No changes: the position already has these levels"),
    (10026, "SERVER_DISABLES_AT", _F, "Autotrading disabled by the server"),
    (10027, "CLIENT_DISABLES_AT", _F, "Autotrading disabled in the terminal"),
    (10028, "LOCKED", _U, "Request locked for processing: its outcome is not known yet"),
    (10029, "FROZEN", _F, "Order or position frozen (inside the freeze level)"),
    (10030, "INVALID_FILL", _F, "Invalid order filling type"),
    (10031, "CONNECTION", _PROOF, "No connection with the trade server"),
    (10032, "ONLY_REAL", _F, "Operation allowed only for live accounts"),
    (10033, "LIMIT_ORDERS", _F, "Pending orders limit reached"),
    (10034, "LIMIT_VOLUME", _F, "Volume limit for the symbol reached"),
    (10035, "INVALID_ORDER", _F, "Incorrect or prohibited order type"),
    (10036, "POSITION_CLOSED", _C, "Position already closed"),
    (10038, "INVALID_CLOSE_VOLUME", _F, "Close volume exceeds the position's volume"),
    (10039, "CLOSE_ORDER_EXIST", _F, "A close order already exists for the position"),
    (10040, "LIMIT_POSITIONS", _F, "Open positions limit reached"),
    (10041, "REJECT_CANCEL", _F, "Pending order activation rejected, order canceled"),
    (10042, "LONG_ONLY", _F, "Only long positions are allowed"),
    (10043, "SHORT_ONLY", _F, "Only short positions are allowed"),
    (10044, "CLOSE_ONLY", _F, "Only position closing is allowed"),
    (10045, "FIFO_CLOSE", _F, "Positions may only be closed in FIFO order"),
    (10046, "HEDGE_PROHIBITED", _F, "Opposite positions on one symbol are not allowed"),
]

_MT4: Final = [
    (0, "NO_ERROR", _D, "No error: done"),
    (1, "NO_RESULT", _D, "No error, nothing changed (OrderModify with the same values)"),
    (2, "COMMON_ERROR", _F, "Common error"),
    (3, "INVALID_TRADE_PARAMETERS", _F, "Invalid trade parameters"),
    (4, "SERVER_BUSY", _R, "Trade server is busy"),
    (5, "OLD_VERSION", _F, "Old version of the client terminal"),
    (6, "NO_CONNECTION", _PROOF, "No connection with the trade server"),
    (7, "NOT_ENOUGH_RIGHTS", _F, "Not enough rights"),
    (8, "TOO_FREQUENT_REQUESTS", _R, "Too frequent requests"),
    (9, "MALFUNCTIONAL_TRADE", _F, "Malfunctional trade operation"),
    (64, "ACCOUNT_DISABLED", _F, "Account disabled"),
    (65, "INVALID_ACCOUNT", _F, "Invalid account"),
    (128, "TRADE_TIMEOUT", _PROOF, "Trade timeout; it may have executed"),
    (129, "INVALID_PRICE", _F, "Invalid price"),
    (130, "INVALID_STOPS", _F, "Invalid stops"),
    (131, "INVALID_TRADE_VOLUME", _F, "Invalid trade volume"),
    (132, "MARKET_CLOSED", _F, "Market is closed"),
    (133, "TRADE_DISABLED", _F, "Trade is disabled"),
    (134, "NOT_ENOUGH_MONEY", _F, "Not enough money"),
    (135, "PRICE_CHANGED", _R, "Price changed, nothing was executed"),
    (136, "OFF_QUOTES", _R, "Off quotes"),
    (137, "BROKER_BUSY", _R, "Broker is busy"),
    (138, "REQUOTE", _R, "Requote"),
    (139, "ORDER_LOCKED", _U, "Order is locked (being processed): its outcome is not known yet"),
    (140, "LONG_POSITIONS_ONLY_ALLOWED", _F, "Only long positions are allowed"),
    (141, "TOO_MANY_REQUESTS", _R, "Too many requests"),
    (145, "TRADE_MODIFY_DENIED", _F, "Modification denied: too close to the market"),
    (146, "TRADE_CONTEXT_BUSY", _R, "Trade context is busy"),
    (147, "TRADE_EXPIRATION_DENIED", _F, "Expiration denied by the broker"),
    (148, "TRADE_TOO_MANY_ORDERS", _F, "Too many open and pending orders"),
    (149, "TRADE_HEDGE_PROHIBITED", _F, "Hedging is prohibited"),
    (150, "TRADE_PROHIBITED_BY_FIFO", _F, "Closing prohibited by the FIFO rule"),
    (4108, "INVALID_TICKET", _C, "Invalid ticket: the terminal no longer holds it"),
    (4109, "TRADE_NOT_ALLOWED", _F, "Trading not allowed in the EA's settings"),
    (4110, "LONGS_NOT_ALLOWED", _F, "Long trades not allowed in the EA's settings"),
    (4111, "SHORTS_NOT_ALLOWED", _F, "Short trades not allowed in the EA's settings"),
]


# Codes the EA itself answers with when it refuses a command before it reaches the broker. Both
# platforms use them; negative, so they can never collide with a broker's code.
_EA: Final = [
    (-1, "EA_BAD_SIGNATURE", _F, "The EA refused the command: its signature did not verify"),
    (-2, "EA_REJECTED", _F, "The EA refused the command (unknown symbol, ticket/symbol mismatch)"),
]


def _table(platform: Platform, rows: Sequence[tuple[int, str, str, str]]) -> dict[int, ResultCode]:
    table: dict[int, ResultCode] = {}
    for code, name, category, description in rows:
        proof = category == _PROOF
        table[code] = ResultCode(
            platform=platform,
            code=code,
            name=name,
            category=_U if proof else ResultCategory(category),
            description=description,
            retry_if_not_executed=proof,
        )
    return table


RESULT_CODES: Final[Mapping[Platform, Mapping[int, ResultCode]]] = {
    "mt5": _table("mt5", [*_MT5, *_EA]),
    "mt4": _table("mt4", [*_MT4, *_EA]),
}


def describe(platform: Platform, retcode: int) -> ResultCode | None:
    """The table row of a code (its name and description for logs and alerts), if listed.

    Raises:
        UsageError: ``platform`` is neither ``"mt4"`` nor ``"mt5"``.
    """
    try:
        return RESULT_CODES[platform].get(retcode)
    except KeyError:
        raise UsageError(f"unknown platform {platform!r}") from None


def classify(platform: Platform, retcode: int, executed: bool | None = None) -> ResultCategory:
    """The category of a broker result (see the module docstring for the rules).

    ``executed`` is the ack's: ``False`` only when the EA has proof the request did not execute
    (MT5: no deal and no order with our comment in the history), ``True`` when it did.

    Raises:
        UsageError: ``platform`` is neither ``"mt4"`` nor ``"mt5"``.
    """
    entry = describe(platform, retcode)
    if entry is None:
        return ResultCategory.FINAL
    if entry.retry_if_not_executed and executed is False:
        return ResultCategory.RETRYABLE
    if executed is True and entry.category in (ResultCategory.RETRYABLE, ResultCategory.FINAL):
        return ResultCategory.UNKNOWN
    return entry.category


def render_markdown_table(platform: Platform) -> str:
    """The table of one platform as Markdown, exactly as docs/protocol.md carries it."""
    lines = ["| code | name | category | meaning |", "|---:|---|---|---|"]
    for entry in RESULT_CODES[platform].values():
        category = entry.category.value
        if entry.retry_if_not_executed:
            category = "unknown; retryable if `executed: false`"
        lines.append(f"| {entry.code} | {entry.name} | {category} | {entry.description} |")
    return "\n".join(lines)

"""MT5 trade server return codes (``MqlTradeResult.retcode``) and what the bridge makes of them.

The server classifies the raw ``retcode`` of every ack itself (``protocol.results``); the
bridge's own reading matters for two things it decides alone: whether the request executed
(``Ack.executed``: ``false`` only with proof) and the ``category`` text it writes into the ack
for the logs of both ends. The numbers are MetaTrader 5's ``TRADE_RETCODE_*`` constants.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

__all__ = ["EA_BAD_SIGNATURE", "EA_REJECTED", "RETCODES", "Outcome", "Retcode", "outcome"]

TRADE_RETCODE_REQUOTE: Final = 10004
TRADE_RETCODE_REJECT: Final = 10006
TRADE_RETCODE_CANCEL: Final = 10007
TRADE_RETCODE_PLACED: Final = 10008
TRADE_RETCODE_DONE: Final = 10009
TRADE_RETCODE_DONE_PARTIAL: Final = 10010
TRADE_RETCODE_ERROR: Final = 10011
TRADE_RETCODE_TIMEOUT: Final = 10012
TRADE_RETCODE_INVALID: Final = 10013
TRADE_RETCODE_INVALID_VOLUME: Final = 10014
TRADE_RETCODE_INVALID_PRICE: Final = 10015
TRADE_RETCODE_INVALID_STOPS: Final = 10016
TRADE_RETCODE_TRADE_DISABLED: Final = 10017
TRADE_RETCODE_MARKET_CLOSED: Final = 10018
TRADE_RETCODE_NO_MONEY: Final = 10019
TRADE_RETCODE_PRICE_CHANGED: Final = 10020
TRADE_RETCODE_PRICE_OFF: Final = 10021
TRADE_RETCODE_INVALID_EXPIRATION: Final = 10022
TRADE_RETCODE_ORDER_CHANGED: Final = 10023
TRADE_RETCODE_TOO_MANY_REQUESTS: Final = 10024
TRADE_RETCODE_NO_CHANGES: Final = 10025
TRADE_RETCODE_SERVER_DISABLES_AT: Final = 10026
TRADE_RETCODE_CLIENT_DISABLES_AT: Final = 10027
TRADE_RETCODE_LOCKED: Final = 10028
TRADE_RETCODE_FROZEN: Final = 10029
TRADE_RETCODE_INVALID_FILL: Final = 10030
TRADE_RETCODE_CONNECTION: Final = 10031
TRADE_RETCODE_ONLY_REAL: Final = 10032
TRADE_RETCODE_LIMIT_ORDERS: Final = 10033
TRADE_RETCODE_LIMIT_VOLUME: Final = 10034
TRADE_RETCODE_INVALID_ORDER: Final = 10035
TRADE_RETCODE_POSITION_CLOSED: Final = 10036
TRADE_RETCODE_INVALID_CLOSE_VOLUME: Final = 10038
TRADE_RETCODE_CLOSE_ORDER_EXIST: Final = 10039
TRADE_RETCODE_LIMIT_POSITIONS: Final = 10040
TRADE_RETCODE_REJECT_CANCEL: Final = 10041
TRADE_RETCODE_LONG_ONLY: Final = 10042
TRADE_RETCODE_SHORT_ONLY: Final = 10043
TRADE_RETCODE_CLOSE_ONLY: Final = 10044
TRADE_RETCODE_FIFO_CLOSE: Final = 10045
TRADE_RETCODE_HEDGE_PROHIBITED: Final = 10046

EA_BAD_SIGNATURE: Final = -1
"""The protocol's code for a command refused because its signature did not verify."""
EA_REJECTED: Final = -2
"""The protocol's code for a command the bridge cannot apply (unknown symbol, wrong ticket)."""


class Outcome(enum.StrEnum):
    """The bridge's reading of a result, written into ``Ack.category``."""

    DONE = "done"
    RETRY = "retry"
    """Refused before execution because the price moved or was missing: try again later."""
    MARKET_CLOSED = "market_closed"
    NO_MONEY = "no_money"
    INVALID_STOPS = "invalid_stops"
    INVALID_VOLUME = "invalid_volume"
    ALREADY_CLOSED = "already_closed"
    REJECTED = "rejected"
    """Refused for any other reason: retrying the same request cannot help."""
    UNKNOWN = "unknown"
    """It may have executed (a timeout, a lost connection): only the terminal's history knows."""


@dataclass(frozen=True, slots=True)
class Retcode:
    code: int
    name: str
    outcome: Outcome

    @property
    def executed(self) -> bool | None:
        """What the code alone proves: a refusal executed nothing; an unknown proves nothing."""
        if self.outcome is Outcome.DONE:
            return True
        return None if self.outcome is Outcome.UNKNOWN else False


_O = Outcome
RETCODES: Final[dict[int, Retcode]] = {
    r.code: r
    for r in (
        Retcode(TRADE_RETCODE_REQUOTE, "REQUOTE", _O.RETRY),
        Retcode(TRADE_RETCODE_REJECT, "REJECT", _O.REJECTED),
        Retcode(TRADE_RETCODE_CANCEL, "CANCEL", _O.REJECTED),
        Retcode(TRADE_RETCODE_PLACED, "PLACED", _O.DONE),
        Retcode(TRADE_RETCODE_DONE, "DONE", _O.DONE),
        Retcode(TRADE_RETCODE_DONE_PARTIAL, "DONE_PARTIAL", _O.DONE),
        Retcode(TRADE_RETCODE_ERROR, "ERROR", _O.REJECTED),
        Retcode(TRADE_RETCODE_TIMEOUT, "TIMEOUT", _O.UNKNOWN),
        Retcode(TRADE_RETCODE_INVALID, "INVALID", _O.REJECTED),
        Retcode(TRADE_RETCODE_INVALID_VOLUME, "INVALID_VOLUME", _O.INVALID_VOLUME),
        Retcode(TRADE_RETCODE_INVALID_PRICE, "INVALID_PRICE", _O.REJECTED),
        Retcode(TRADE_RETCODE_INVALID_STOPS, "INVALID_STOPS", _O.INVALID_STOPS),
        Retcode(TRADE_RETCODE_TRADE_DISABLED, "TRADE_DISABLED", _O.REJECTED),
        Retcode(TRADE_RETCODE_MARKET_CLOSED, "MARKET_CLOSED", _O.MARKET_CLOSED),
        Retcode(TRADE_RETCODE_NO_MONEY, "NO_MONEY", _O.NO_MONEY),
        Retcode(TRADE_RETCODE_PRICE_CHANGED, "PRICE_CHANGED", _O.RETRY),
        Retcode(TRADE_RETCODE_PRICE_OFF, "PRICE_OFF", _O.RETRY),
        Retcode(TRADE_RETCODE_INVALID_EXPIRATION, "INVALID_EXPIRATION", _O.REJECTED),
        Retcode(TRADE_RETCODE_ORDER_CHANGED, "ORDER_CHANGED", _O.REJECTED),
        Retcode(TRADE_RETCODE_TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS", _O.RETRY),
        Retcode(TRADE_RETCODE_NO_CHANGES, "NO_CHANGES", _O.DONE),
        Retcode(TRADE_RETCODE_SERVER_DISABLES_AT, "SERVER_DISABLES_AT", _O.REJECTED),
        Retcode(TRADE_RETCODE_CLIENT_DISABLES_AT, "CLIENT_DISABLES_AT", _O.REJECTED),
        Retcode(TRADE_RETCODE_LOCKED, "LOCKED", _O.UNKNOWN),
        Retcode(TRADE_RETCODE_FROZEN, "FROZEN", _O.REJECTED),
        Retcode(TRADE_RETCODE_INVALID_FILL, "INVALID_FILL", _O.REJECTED),
        Retcode(TRADE_RETCODE_CONNECTION, "CONNECTION", _O.UNKNOWN),
        Retcode(TRADE_RETCODE_ONLY_REAL, "ONLY_REAL", _O.REJECTED),
        Retcode(TRADE_RETCODE_LIMIT_ORDERS, "LIMIT_ORDERS", _O.REJECTED),
        Retcode(TRADE_RETCODE_LIMIT_VOLUME, "LIMIT_VOLUME", _O.INVALID_VOLUME),
        Retcode(TRADE_RETCODE_INVALID_ORDER, "INVALID_ORDER", _O.REJECTED),
        Retcode(TRADE_RETCODE_POSITION_CLOSED, "POSITION_CLOSED", _O.ALREADY_CLOSED),
        Retcode(TRADE_RETCODE_INVALID_CLOSE_VOLUME, "INVALID_CLOSE_VOLUME", _O.INVALID_VOLUME),
        Retcode(TRADE_RETCODE_CLOSE_ORDER_EXIST, "CLOSE_ORDER_EXIST", _O.REJECTED),
        Retcode(TRADE_RETCODE_LIMIT_POSITIONS, "LIMIT_POSITIONS", _O.REJECTED),
        Retcode(TRADE_RETCODE_REJECT_CANCEL, "REJECT_CANCEL", _O.REJECTED),
        Retcode(TRADE_RETCODE_LONG_ONLY, "LONG_ONLY", _O.REJECTED),
        Retcode(TRADE_RETCODE_SHORT_ONLY, "SHORT_ONLY", _O.REJECTED),
        Retcode(TRADE_RETCODE_CLOSE_ONLY, "CLOSE_ONLY", _O.REJECTED),
        Retcode(TRADE_RETCODE_FIFO_CLOSE, "FIFO_CLOSE", _O.REJECTED),
        Retcode(TRADE_RETCODE_HEDGE_PROHIBITED, "HEDGE_PROHIBITED", _O.REJECTED),
        Retcode(EA_BAD_SIGNATURE, "EA_BAD_SIGNATURE", _O.REJECTED),
        Retcode(EA_REJECTED, "EA_REJECTED", _O.REJECTED),
    )
}


def outcome(retcode: int) -> Retcode:
    """The table row of ``retcode``; a code the table does not know is ``UNKNOWN``: the bridge
    claims nothing about a result it does not understand (the server treats it as final)."""
    return RETCODES.get(retcode, Retcode(retcode, f"RETCODE_{retcode}", Outcome.UNKNOWN))

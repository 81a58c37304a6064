"""MT5 trade server return codes (``MqlTradeResult.retcode``) and what the bridge makes of them.

The server classifies the raw ``retcode`` of every ack itself (``protocol.results``); the
bridge's own reading matters for two things it decides alone: whether the request executed
(``Ack.executed``: ``false`` only with proof) and the ``category`` text it writes into the ack
for the logs of both ends. The codes and their names are the server's MT5 table
(``protocol.results.RESULT_CODES``): the bridge refines only the refusals it tells apart.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from protocol.results import RESULT_CODES, ResultCategory

__all__ = ["EA_BAD_SIGNATURE", "EA_REJECTED", "RETCODES", "Outcome", "Retcode", "outcome"]

# The codes the bridge itself writes into an ack (MetaTrader 5's ``TRADE_RETCODE_*`` numbers).
TRADE_RETCODE_PLACED: Final = 10008
TRADE_RETCODE_DONE: Final = 10009
TRADE_RETCODE_TIMEOUT: Final = 10012
TRADE_RETCODE_POSITION_CLOSED: Final = 10036

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


# The server's category says what an answer means for the command; the bridge names the final
# refusals a trader can act on (the market, the money, the stops, the volume).
_BY_CATEGORY: Final = {
    ResultCategory.DONE: Outcome.DONE,
    ResultCategory.RETRYABLE: Outcome.RETRY,
    ResultCategory.ALREADY_CLOSED: Outcome.ALREADY_CLOSED,
    ResultCategory.UNKNOWN: Outcome.UNKNOWN,
    ResultCategory.FINAL: Outcome.REJECTED,
}
_REFUSALS: Final = {
    "MARKET_CLOSED": Outcome.MARKET_CLOSED,
    "NO_MONEY": Outcome.NO_MONEY,
    "INVALID_STOPS": Outcome.INVALID_STOPS,
    "INVALID_VOLUME": Outcome.INVALID_VOLUME,
    "LIMIT_VOLUME": Outcome.INVALID_VOLUME,
    "INVALID_CLOSE_VOLUME": Outcome.INVALID_VOLUME,
}
RETCODES: Final[dict[int, Retcode]] = {
    code: Retcode(code, row.name, _REFUSALS.get(row.name, _BY_CATEGORY[row.category]))
    for code, row in RESULT_CODES["mt5"].items()
}


def outcome(retcode: int) -> Retcode:
    """The table row of ``retcode``; a code the table does not know is ``UNKNOWN``: the bridge
    claims nothing about a result it does not understand (the server treats it as final)."""
    return RETCODES.get(retcode, Retcode(retcode, f"RETCODE_{retcode}", Outcome.UNKNOWN))

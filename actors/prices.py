"""The price board: the latest accepted quote of every symbol, for anyone in the process."""

from __future__ import annotations

__all__ = ["PriceBoard"]


class PriceBoard:
    """The latest accepted quote of every symbol, readable by anyone in the process."""

    __slots__ = ("_quotes",)

    def __init__(self) -> None:
        self._quotes: dict[str, tuple[float, float, int]] = {}

    def update(self, symbol: str, bid: float, ask: float, time_ms: int) -> None:
        self._quotes[symbol] = (bid, ask, time_ms)

    def get(self, symbol: str) -> tuple[float, float, int] | None:
        return self._quotes.get(symbol)

    def points(self, symbol: str, scale: int) -> tuple[int | None, int | None]:
        quote = self._quotes.get(symbol)
        if quote is None:
            return None, None
        return round(quote[0] * scale), round(quote[1] * scale)

    def all(self) -> dict[str, tuple[float, float, int]]:
        return dict(self._quotes)

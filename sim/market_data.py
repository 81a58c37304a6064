"""The bundled real market data (``data/``): load a day of ticks as numpy arrays.

Used by the replay feed, the tests and the harnesses. Files are gzip'd CSV with the header
``ts_ms,bid,ask`` (see ``data/README.md`` for their source and licence).
"""

from __future__ import annotations

import gzip
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = ["BUNDLED_DATA_DIR", "DATA_FILES", "Ticks", "load_ticks"]

DATA_FILES = {
    "XAUUSD": "xauusd_2014-05-02_oanda_ticks.csv.gz",
    "EURUSD": "eurusd_2014-05-08_oanda_ticks.csv.gz",
}


class Ticks(NamedTuple):
    """One symbol's day: parallel arrays, in time order."""

    symbol: str
    ts_ms: npt.NDArray[np.float64]
    bid: npt.NDArray[np.float64]
    ask: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.ts_ms.size)

    def points(self, digits: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Bid and ask as integer points at ``digits``."""
        scale = 10.0**digits
        return (
            np.rint(self.bid * scale).astype(np.int64),
            np.rint(self.ask * scale).astype(np.int64),
        )


BUNDLED_DATA_DIR = Path(__file__).resolve().parents[1] / "data"
"""The repository's ``data/``."""


@cache
def load_ticks(symbol: str, directory: Path | None = None) -> Ticks:
    """Load the day for ``symbol`` (``XAUUSD`` or ``EURUSD``) from ``directory`` (default:
    the bundled ``data/``); cached per process."""
    try:
        name = DATA_FILES[symbol]
    except KeyError:
        raise ValueError(f"no bundled data for {symbol!r}; have {sorted(DATA_FILES)}") from None
    with gzip.open((directory or BUNDLED_DATA_DIR) / name, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", skiprows=1, dtype=np.float64)
    return Ticks(symbol, table[:, 0], table[:, 1], table[:, 2])

"""Broker symbol names: the engine thinks in canonical symbols, brokers do not.

One broker calls gold ``XAUUSDm``, another ``GOLD``, a third ``XAUUSD.vip`` or ``#XAUUSD``. Each
device gets a :class:`SymbolMap`, built from configuration (explicit overrides win) and from the
symbol list the terminal sends in its hello:

1. an override ``canonical -> broker`` from configuration;
2. the exact canonical name, if the terminal has it;
3. the canonical name with the broker's prefix and/or suffix, detected as the affix most of the
   terminal's symbols share around a known name (``m``, ``.vip``, ``-ecn``, ``#``, ...);
4. a well-known alias (``GOLD`` for XAUUSD), with the same affixes.

Every command leaves with :meth:`to_broker`; every report comes back through
:meth:`to_canonical`. A name that maps to nothing is reported, never guessed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

__all__ = ["ALIASES", "SymbolMap"]

ALIASES: dict[str, tuple[str, ...]] = {
    "XAUUSD": ("GOLD", "XAUUSD"),
    "XAGUSD": ("SILVER", "XAGUSD"),
    "US30": ("DJ30", "DOW30", "WS30", "US30"),
    "NAS100": ("USTEC", "NDX100", "NAS100"),
    "SPX500": ("US500", "SP500", "SPX500"),
    "USOIL": ("WTI", "XTIUSD", "USOIL"),
    "UKOIL": ("BRENT", "XBRUSD", "UKOIL"),
}
"""Names brokers use for the same instrument (canonical first where it is one of them)."""


def _split_affixes(name: str, core: str) -> tuple[str, str] | None:
    """``(prefix, suffix)`` if ``name`` is ``core`` wrapped in them (case-insensitive core)."""
    index = name.upper().find(core.upper())
    if index < 0:
        return None
    prefix, suffix = name[:index], name[index + len(core) :]
    if len(prefix) > 3 or len(suffix) > 6:
        return None
    return prefix, suffix


class SymbolMap:
    """Canonical <-> broker symbol names for one device."""

    __slots__ = ("_to_broker", "_to_canonical", "prefix", "suffix", "unmapped")

    def __init__(
        self,
        pairs: Mapping[str, str],
        prefix: str = "",
        suffix: str = "",
        unmapped: Iterable[str] = (),
    ) -> None:
        self._to_broker = dict(pairs)
        self._to_canonical = {broker: canonical for canonical, broker in pairs.items()}
        self.prefix = prefix
        self.suffix = suffix
        self.unmapped = tuple(unmapped)
        """Canonical symbols the engine knows that this broker does not seem to offer."""

    @classmethod
    def identity(cls, canonical: Iterable[str]) -> SymbolMap:
        """Every symbol under its own name (a paper device, a broker with plain names)."""
        return cls({name: name for name in canonical})

    @classmethod
    def build(
        cls,
        canonical: Iterable[str],
        terminal_symbols: Iterable[str],
        overrides: Mapping[str, str] | None = None,
    ) -> SymbolMap:
        """Match the engine's canonical symbols to the names a terminal offers."""
        wanted = list(dict.fromkeys(canonical))
        offered = list(dict.fromkeys(terminal_symbols))
        offered_set = set(offered)
        overrides = dict(overrides or {})

        # The broker's affix: what most offered names wrap around a name we know.
        affixes: Counter[tuple[str, str]] = Counter()
        for name in offered:
            for c in wanted:
                for core in ALIASES.get(c, (c,)):
                    split = _split_affixes(name, core)
                    if split is not None and split != ("", ""):
                        affixes[split] += 1
        prefix, suffix = affixes.most_common(1)[0][0] if affixes else ("", "")

        pairs: dict[str, str] = {}
        unmapped: list[str] = []
        for c in wanted:
            if c in overrides:
                pairs[c] = overrides[c]
                continue
            candidates = [c, prefix + c + suffix]
            for alias in ALIASES.get(c, ()):
                candidates += [alias, prefix + alias + suffix]
            # Prefer a name carrying the broker's usual affix over a bare one: some brokers keep
            # a bare symbol as a disabled or "raw" variant beside the tradable suffixed one.
            if prefix or suffix:
                candidates.sort(key=lambda n: not (n.startswith(prefix) and n.endswith(suffix)))
            match = next((n for n in candidates if n in offered_set), None)
            if match is None:
                unmapped.append(c)
            else:
                pairs[c] = match
        return cls(pairs, prefix, suffix, unmapped)

    def to_broker(self, canonical: str) -> str | None:
        """The broker's name for a canonical symbol, or None if this broker lacks it."""
        return self._to_broker.get(canonical)

    def to_canonical(self, broker: str) -> str | None:
        """The canonical name of a broker symbol, or None if it is not one the engine trades."""
        return self._to_canonical.get(broker)

    def pairs(self) -> dict[str, str]:
        return dict(self._to_broker)

    def __repr__(self) -> str:
        return f"SymbolMap({self._to_broker!r}, prefix={self.prefix!r}, suffix={self.suffix!r})"

"""URL routing without a reference cycle per request.

Werkzeug's ``StateMachineMatcher.match`` (3.1) defines a recursive closure on every call: the
function refers to itself through its own cell, so each match leaves a small cycle (the function,
its closure, five cells, a set) that only the garbage collector frees. At 200 requests/s that was
nearly all the cyclic garbage of the engine process, and the young collections that freed it in
batches paused the event loop 10-40 ms inside requests (bench.rest's p99, found with
``gc.callbacks`` and ``gc.DEBUG_SAVEALL``).

:class:`MemoMatcher` answers a path it has matched before from a bounded memo, so the steady
state makes no cycles. Only successful matches are kept (a miss raises and is rare); the values
are copied per call because Quart hands them to the view as its own keyword arguments. A full
memo drops its oldest entry, so a client walking unique paths costs memory up to the bound and
the usual cycle per miss, nothing more.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from quart.routing import QuartMap
from werkzeug.routing import Rule
from werkzeug.routing.matcher import StateMachineMatcher

__all__ = ["MemoMap", "MemoMatcher"]

_Key = tuple[str, str, str, bool]


class MemoMatcher(StateMachineMatcher):
    """A ``StateMachineMatcher`` that remembers up to ``max_entries`` successful matches."""

    def __init__(self, merge_slashes: bool, max_entries: int = 1024) -> None:
        super().__init__(merge_slashes)
        self.max_entries = max_entries
        self._memo: dict[_Key, tuple[Rule, dict[str, Any]]] = {}

    def __len__(self) -> int:
        return len(self._memo)

    def add(self, rule: Rule) -> None:
        self._memo.clear()
        super().add(rule)

    def update(self) -> None:
        self._memo.clear()
        super().update()

    def match(
        self, domain: str, path: str, method: str, websocket: bool
    ) -> tuple[Rule, MutableMapping[str, Any]]:
        key = (domain, path, method, websocket)
        hit = self._memo.get(key)
        if hit is not None:
            return hit[0], dict(hit[1])
        rule, values = super().match(domain, path, method, websocket)
        if len(self._memo) >= self.max_entries:
            del self._memo[next(iter(self._memo))]
        self._memo[key] = (rule, dict(values))
        return rule, values


class MemoMap(QuartMap):
    """Quart's URL map with :class:`MemoMatcher` (set as the app's ``url_map_class``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Werkzeug keeps its matcher in a private attribute and offers no hook to choose it;
        # constraints.txt pins the Werkzeug this was read against, and tests/gateway's routing
        # test fails if a match ever makes a cycle again.
        self._matcher = MemoMatcher(self.merge_slashes)

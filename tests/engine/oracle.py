"""A brute-force trigger oracle: the rules of docs/architecture.md ("Trigger semantics"), written
the obvious way.

It checks every armed position on every quote (O(positions) per quote) and sorts what fired
by the documented order. ``TriggerBook`` must agree with it on every input.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.triggers import Trigger, TriggerKind
from protocol.common import Side


@dataclass
class _Armed:
    side: Side
    sl: int | None
    tp: int | None
    sl_seq: int = 0
    tp_seq: int = 0


class OracleBook:
    def __init__(self) -> None:
        self.armed: dict[str, _Armed] = {}
        self.bid: int | None = None
        self.ask: int | None = None
        self.seq = 0

    def _crossed(self, pid: str, a: _Armed) -> Trigger | None:
        if self.bid is None or self.ask is None:
            return None
        price = self.bid if a.side is Side.BUY else self.ask
        if a.sl is not None and (price <= a.sl if a.side is Side.BUY else price >= a.sl):
            return Trigger(pid, TriggerKind.SL, a.side, a.sl, price)
        if a.tp is not None and (price >= a.tp if a.side is Side.BUY else price <= a.tp):
            return Trigger(pid, TriggerKind.TP, a.side, a.tp, price)
        return None

    def _arm(self, a: _Armed, sl_new: bool, tp_new: bool) -> None:
        if sl_new and a.sl is not None:
            self.seq += 1
            a.sl_seq = self.seq
        if tp_new and a.tp is not None:
            self.seq += 1
            a.tp_seq = self.seq

    def register(self, pid: str, side: Side, sl: int | None, tp: int | None) -> list[Trigger]:
        a = _Armed(side, sl, tp)
        fired = self._crossed(pid, a)
        if fired:
            return [fired]
        self._arm(a, True, True)
        self.armed[pid] = a
        return []

    def modify(self, pid: str, sl: object, tp: object, keep: object) -> list[Trigger]:
        a = self.armed[pid]
        sl_new = sl is not keep and sl != a.sl
        tp_new = tp is not keep and tp != a.tp
        if sl_new:
            a.sl = sl  # type: ignore[assignment]
        if tp_new:
            a.tp = tp  # type: ignore[assignment]
        fired = self._crossed(pid, a)
        if fired:
            del self.armed[pid]
            return [fired]
        self._arm(a, sl_new, tp_new)
        return []

    def cancel(self, pid: str) -> bool:
        return self.armed.pop(pid, None) is not None

    def on_quote(self, bid: int, ask: int) -> list[Trigger]:
        self.bid, self.ask = bid, ask
        keyed = []
        for pid, a in self.armed.items():
            t = self._crossed(pid, a)
            if t is None:
                continue
            side_rank = 0 if a.side is Side.BUY else 1
            if t.kind is TriggerKind.SL:
                key = -t.level if a.side is Side.BUY else t.level
                seq = a.sl_seq
            else:
                key = t.level if a.side is Side.BUY else -t.level
                seq = a.tp_seq
            keyed.append(((int(t.kind), side_rank, key, seq), t))
        keyed.sort(key=lambda kt: kt[0])
        for _, t in keyed:
            del self.armed[t.position_id]
        return [t for _, t in keyed]

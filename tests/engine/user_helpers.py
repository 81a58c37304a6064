"""Builders for the user core's tests (test helpers): a core with one gold device, a signal,
and the steps that bring a position to approved, opened and fired."""

from __future__ import annotations

from engine.effects import Arm
from engine.instruments import DEFAULT_INSTRUMENTS
from engine.sizing import UserSettings
from engine.triggers import Trigger, TriggerKind
from engine.user import DeviceInfo, UserCore
from protocol.common import Side
from protocol.device import Ack
from protocol.signals import Signal

GOLD = DEFAULT_INSTRUMENTS["XAUUSD"]
P = GOLD.to_points
T0 = 1_700_000_000_000


def signal(**over) -> Signal:
    fields = dict(
        strategy_id="s1",
        signal_id="g1",
        version=1,
        audience=["u1"],
        symbol="XAUUSD",
        side=Side.BUY,
        entry=1950.0,
        sl=1945.0,
        tp=1960.0,
        volume=0.1,
        created_at_ms=T0,
        expires_at_ms=T0 + 3_600_000,
    )
    fields.update(over)
    return Signal(**fields)


def core(**settings) -> UserCore:
    c = UserCore("u1", UserSettings(**settings))
    c.on_device(DeviceInfo("d1", {"XAUUSD": GOLD}), T0)
    return c


def approved(c: UserCore, sig: Signal | None = None, now: int = T0 + 1000) -> str:
    _, fx = c.decide(
        approval_id="a1",
        signal=sig or signal(),
        decision="approve",
        bid=1950.0,
        ask=1950.3,
        now_ms=now,
    )
    return fx.commands[0][1].command_id


def opened(c: UserCore, fill: float = 1950.3, ticket: int = 555) -> str:
    cid = approved(c)
    fx = c.on_result(
        cid,
        "done",
        Ack(command_id=cid, retcode=10009, ticket=ticket, fill_price=fill, fill_time_ms=T0 + 1100),
        T0 + 1100,
    )
    [arm] = fx.arms
    assert isinstance(arm, Arm)
    return arm.position.id


def fire(c: UserCore, pid: str, kind=TriggerKind.SL, price: float = 1944.5):
    p = c.positions[pid]
    level = p.sl if kind is TriggerKind.SL else p.tp
    return c.on_triggers([Trigger(pid, kind, p.side, level, P(price))], T0 + 2000)

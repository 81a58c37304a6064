"""The journal's projection against a real Postgres: records become the rows REST reads."""

from __future__ import annotations

import msgspec
import trio

from engine.instruments import DEFAULT_INSTRUMENTS
from engine.records import (
    AuditEntry,
    AuditRecorded,
    PositionSaved,
    Record,
    SignalSaved,
    encode_batch,
)
from engine.trailing import LevelMove
from engine.triggers import Trigger, TriggerKind
from engine.user import DeviceInfo, UserCore
from persistence.journal_writer import JournalWriter
from persistence.projections import make_projection
from protocol.common import Side
from protocol.device import Ack
from protocol.signals import Signal

T0 = 1_700_000_000_000
GOLD = DEFAULT_INSTRUMENTS["XAUUSD"]


def _life() -> tuple[str, list[Record]]:
    """A position's records from its signal to its close, and its id."""
    records: list[Record] = []
    signal = Signal(
        strategy_id="s1",
        signal_id="g1",
        audience=["u1"],
        symbol="XAUUSD",
        side=Side.BUY,
        entry=1950.3,
        sl=1945.0,
        tp=1960.0,
        created_at_ms=T0,
    )
    records.append(SignalSaved(signal=signal, received_ms=T0))
    core = UserCore("u1")
    core.on_device(DeviceInfo("d1", {"XAUUSD": GOLD}), T0)
    approval, fx = core.decide(
        approval_id="a1",
        signal=signal,
        decision="approve",
        bid=1950.0,
        ask=1950.3,
        now_ms=T0 + 1,
        ip="10.1.2.3",
        user_agent="ua/1",
    )
    records += fx.records
    open_id = fx.commands[0][1].command_id
    records += core.on_result(
        open_id,
        "done",
        Ack(command_id=open_id, retcode=10009, ticket=77, fill_price=1950.3),
        T0 + 2,
    ).records
    pid = approval.position_id
    records += core.on_level_moves(
        [LevelMove(pid, GOLD.to_points(1946.5), "trailing")], T0 + 2
    ).records
    fx = core.on_triggers(
        [Trigger(pid, TriggerKind.SL, Side.BUY, GOLD.to_points(1945.0), GOLD.to_points(1944.8))],
        T0 + 3,
    )
    records += fx.records
    close_id = fx.commands[0][1].command_id
    records += core.on_result(
        close_id, "done", Ack(command_id=close_id, retcode=10009, fill_price=1944.7), T0 + 4
    ).records
    records.append(
        AuditRecorded(
            entry=AuditEntry(
                time_ms=T0 + 5,
                actor_id="u1",
                action="approval.approve",
                target_type="signal",
                target_id="s1/g1/1",
                outcome="201",
                ip="10.1.2.3",
                user_agent="ua/1",
            )
        )
    )
    return pid, records


async def test_a_position_life_lands_in_every_table(db) -> None:
    await db.execute("INSERT INTO users (id, username, password_hash) VALUES ('u1', 'u1', 'x')")
    await db.execute(
        "INSERT INTO devices (id, user_id, name, account_login, broker) "
        "VALUES ('d1', 'u1', 't', '42', 'b')"
    )
    journal = JournalWriter(db, encode_batch, make_projection(DEFAULT_INSTRUMENTS))
    pid, records = _life()
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        for r in records:
            journal.append_nowait(r)
        await journal.flush()
        nursery.cancel_scope.cancel()
    assert journal.projection_errors == 0
    position = await db.fetchrow("SELECT * FROM positions WHERE id = $1", pid)
    assert position["state"] == "closed" and position["close_reason"] == "sl"
    assert position["open_price"] == 1950.3 and position["close_price"] == 1944.7
    assert position["sl"] == 1946.5 and position["ticket"] == 77
    assert position["doc"]["sl"] == GOLD.to_points(1946.5)
    assert position["strategy_id"] == "s1" and position["approval_id"] == "a1"
    assert position["doc"]["id"] == pid
    commands = await db.fetch("SELECT id, kind, outcome FROM commands ORDER BY issued_at")
    assert [(c["kind"], c["outcome"]) for c in commands] == [("open", "done"), ("close", "done")]
    row = await db.fetchrow("SELECT decision, host(ip) AS ip, user_agent FROM approvals")
    assert tuple(row) == ("approve", "10.1.2.3", "ua/1")
    audit = await db.fetchrow("SELECT action, outcome FROM audit_log")
    assert tuple(audit) == ("approval.approve", "201")


def test_a_positions_saves_in_one_batch_project_as_its_last_unless_an_inserted_column_differs():
    _, records = _life()
    saves = [r for r in records if isinstance(r, PositionSaved)]
    assert len({r.position.id for r in saves}) == 1 and len(saves) >= 3
    project = make_projection(DEFAULT_INSTRUMENTS)
    [rows] = [rows for sql, rows in project(records) if "INSERT INTO positions" in sql]
    assert [row[5] for row in rows] == ["closed"]  # the state column: the last save's row only
    first = saves[0].position
    other = PositionSaved(position=msgspec.structs.replace(saves[-1].position, approval_id="b"))
    [rows] = [rows for sql, rows in project([*saves, other]) if "INSERT INTO positions" in sql]
    # The first save INSERTs the columns nothing updates: its row goes first, then the last's.
    assert [(row[5], row[20]) for row in rows] == [
        (first.state.value, first.approval_id),
        ("closed", "b"),
    ]

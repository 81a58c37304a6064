"""The device session core: names, outbox, acks, deadlines, health."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.device import DeviceCore
from engine.instruments import DEFAULT_INSTRUMENTS
from protocol.common import AlertLevel, Side
from protocol.device import Ack, CloseCommand, HelloBody, SymbolSpec, TerminalPosition
from protocol.results import ResultCategory

T0 = 1_700_000_000_000


def classify(platform: str, retcode: int, executed: bool | None) -> ResultCategory:
    return ResultCategory(
        {10009: "done", 10004: "retryable", 10036: "already_closed"}.get(retcode, "final")
    )


def hello(*symbols: SymbolSpec) -> HelloBody:
    return HelloBody(ea_build="1", account_login="42", terminal_time_ms=T0, symbols=list(symbols))


def close(cid: str = "P1.close.1", deadline: int = T0 + 10_000) -> CloseCommand:
    return CloseCommand(command_id=cid, ticket=5, symbol="XAUUSD", volume=0.1, deadline_ms=deadline)


def ready_core(**kw) -> DeviceCore:
    d = DeviceCore("d1", "u1", DEFAULT_INSTRUMENTS, classify, **kw)
    d.connect(
        "s1",
        hello(
            SymbolSpec(
                name="XAUUSDm",
                digits=2,
                contract_size=100,
                volume_min=0.01,
                volume_step=0.01,
                volume_max=50,
                stops_level=30,
            ),
            SymbolSpec(name="EURUSDm", digits=5, contract_size=100_000),
        ),
        T0,
    )
    d.on_snapshot([], T0)
    return d


def test_commands_leave_in_broker_names_and_digits() -> None:
    d = ready_core()
    [frame] = d.submit(close(), T0).frames
    assert frame.symbol == "XAUUSDm"
    from protocol.device import ModifyCommand

    [modify] = d.submit(
        ModifyCommand(
            command_id="P1.modify.1",
            ticket=5,
            symbol="XAUUSD",
            sl=1944.125,
            tp=None,
            deadline_ms=T0 + 1,
        ),
        T0,
    ).frames
    assert modify.sl == 1944.12 or modify.sl == 1944.13
    gold = d.instruments["XAUUSD"]
    assert gold.volume_max == 50 and gold.stops_level == 300  # 30 broker points at 2 digits


def test_reports_come_back_canonical_and_unmapped_symbols_are_recorded() -> None:
    d = ready_core()
    held = [
        TerminalPosition(
            ticket=1,
            symbol="XAUUSDm",
            side=Side.BUY,
            volume=0.1,
            open_price=1950.0,
            open_time_ms=T0,
        ),
        TerminalPosition(
            ticket=2,
            symbol="BTCUSDm",
            side=Side.BUY,
            volume=0.1,
            open_price=50_000.0,
            open_time_ms=T0,
        ),
    ]
    canonical, out = d.on_snapshot(held, T0)
    assert [t.symbol for t in canonical] == ["XAUUSD"]
    assert out.records[0].entry.kind == "unmapped_symbol"


def test_queued_until_snapshot_then_flushed_in_order() -> None:
    d = DeviceCore("d1", "u1", DEFAULT_INSTRUMENTS, classify)
    assert d.submit(close("P1.close.1"), T0).frames == []  # never connected: queued
    d.connect("s1", hello(), T0)
    assert d.submit(close("P2.close.1"), T0).frames == []  # connected, no snapshot yet
    d.on_snapshot([], T0)
    assert [f.command_id for f in d.flush().frames] == ["P1.close.1", "P2.close.1"]
    assert d.flush().frames == []


def test_acks_settle_once_duplicates_counted_unknown_reported() -> None:
    d = ready_core()
    d.submit(close(), T0)
    [result] = d.on_ack(Ack(command_id="P1.close.1", retcode=10009, fill_price=1950.0), T0).results
    assert result.category == "done"
    assert (
        d.on_ack(
            Ack(command_id="P1.close.1", retcode=10009, repeat=True, fill_price=1950.0), T0
        ).results
        == []
    )
    assert d.duplicate_acks == 1
    out = d.on_ack(Ack(command_id="ZZ.close.1", retcode=10009), T0)
    assert out.results == [] and out.records[0].entry.kind == "unknown_ack"


def test_disconnect_loses_sent_keeps_queued_and_a_new_session_replaces_the_old() -> None:
    d = ready_core()
    d.submit(close("P1.close.1"), T0)
    assert d.disconnect(T0).lost == ["P1.close.1"]
    d.submit(close("P2.close.1"), T0)  # queued while away
    d.connect("s2", hello(), T0)
    d.on_snapshot([], T0)
    [frame] = d.flush().frames
    assert frame.command_id == "P2.close.1"
    out = d.connect("s3", hello(), T0 + 1)  # a second connection replaces the first
    assert out.lost == ["P2.close.1"] and d.session_id == "s3"


def test_overdue_alert_once_and_ack_still_accepted() -> None:
    d = ready_core()
    d.submit(close(deadline=T0 + 100), T0)
    assert d.tick(T0 + 99).alerts == []
    [alert] = d.tick(T0 + 100).alerts
    assert alert.kind == "command_overdue"
    assert d.tick(T0 + 200).alerts == []
    assert d.on_ack(
        Ack(command_id="P1.close.1", retcode=10009, fill_price=1950.0), T0 + 300
    ).results


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["submit", "tick", "ack", "reconnect"]),
            st.integers(0, 400),  # a time step
            st.integers(1, 500),  # a deadline after now
            st.integers(0, 5),  # which command
        ),
        max_size=40,
    )
)
def test_overdue_alerts_match_a_full_scan(steps: list[tuple[str, int, int, int]]) -> None:
    """tick() scans the outbox only from its earliest known deadline on; each command still
    alerts once, at the first tick at or past its deadline, whatever came in between
    (later commands with earlier deadlines, acks, a new session)."""
    d = ready_core()
    now = T0
    deadlines: dict[str, int] = {}  # the model: outstanding command -> deadline, until alerted
    for action, step, after, k in steps:
        now += step
        cid = f"P{k}.close.1"
        if action == "submit":
            d.submit(close(cid, now + after), now)
            deadlines[cid] = now + after
        elif action == "ack":
            d.on_ack(Ack(command_id=cid, retcode=10009, fill_price=1950.0), now)
            deadlines.pop(cid, None)
        elif action == "reconnect":
            for lost in d.connect("s2", hello(), now).lost:
                deadlines.pop(lost, None)
            d.on_snapshot([], now)
        else:
            due = sorted(c for c, at in deadlines.items() if at <= now)
            alerts = [a for a in d.tick(now).alerts if a.kind == "command_overdue"]
            assert sorted(a.message.split()[3] for a in alerts) == due
            for c in due:
                del deadlines[c]


def test_overdue_each_at_its_own_deadline() -> None:
    d = ready_core()
    for k, deadline in ((1, 300), (2, 200), (3, 100)):
        d.submit(close(f"P{k}.close.1", T0 + deadline), T0)
    assert [a.message.split()[3] for a in d.tick(T0 + 150).alerts] == ["P3.close.1"]
    assert [a.message.split()[3] for a in d.tick(T0 + 250).alerts] == ["P2.close.1"]
    d.submit(close("P4.close.1", T0 + 260), T0 + 255)  # earlier than the next one known
    assert [a.message.split()[3] for a in d.tick(T0 + 270).alerts] == ["P4.close.1"]
    assert [a.message.split()[3] for a in d.tick(T0 + 300).alerts] == ["P1.close.1"]
    assert d.tick(T0 + 10_000).alerts == []


def test_stale_after_silence_and_back_on_heartbeat() -> None:
    d = ready_core(stale_after_ms=1000)
    assert not d.tick(T0 + 1000).alerts
    [alert] = d.tick(T0 + 1001).alerts
    assert alert.kind == "device_stale" and alert.level is AlertLevel.WARNING and d.stale
    assert not d.tick(T0 + 5000).alerts
    out = d.on_heartbeat(T0 + 6000)
    assert not d.stale and out.alerts[0].level is AlertLevel.INFO and out.status_changed


def test_full_outbox_marks_unhealthy_and_alerts_but_drops_nothing() -> None:
    d = DeviceCore("d1", "u1", DEFAULT_INSTRUMENTS, classify, outbox_limit=3)
    alerts = []
    for i in range(5):
        alerts += d.submit(close(f"P{i}.close.1"), T0).alerts
    assert not d.healthy and [a.kind for a in alerts] == ["outbox_full"]
    assert len(d.outstanding()) == 5


def test_unmapped_symbol_fails_the_command_at_once() -> None:
    d = ready_core()
    bad = CloseCommand(
        command_id="P9.close.1", ticket=5, symbol="GBPUSD", volume=0.1, deadline_ms=T0
    )
    [result] = d.submit(bad, T0).results
    assert result.category == "final" and "GBPUSD" in result.ack.result_text


def test_a_burst_submitted_at_once_is_the_same_as_one_by_one() -> None:
    bad = CloseCommand(
        command_id="P9.close.1", ticket=5, symbol="GBPUSD", volume=0.1, deadline_ms=T0
    )
    burst = [close("P1.close.1"), bad, close("P2.close.1"), close("P3.close.1")]
    one, many = ready_core(outbox_limit=2), ready_core(outbox_limit=2)
    singles = [one.submit(c, T0) for c in burst]
    batch = many.submit_many(burst, T0)
    assert batch.frames == [f for out in singles for f in out.frames]
    assert [f.command_id for f in batch.frames] == ["P1.close.1", "P2.close.1", "P3.close.1"]
    assert batch.results == [r for out in singles for r in out.results]
    assert (
        [a.kind for a in batch.alerts]
        == ["outbox_full"]
        == [a.kind for out in singles for a in out.alerts]
    )
    assert many.outstanding() == one.outstanding() and not many.healthy


def test_a_command_that_already_fits_the_broker_is_sent_as_it_is() -> None:
    d = DeviceCore("d1", "u1", DEFAULT_INSTRUMENTS, classify)
    d.connect("s1", hello(SymbolSpec(name="XAUUSD", digits=2, contract_size=100)), T0)
    d.on_snapshot([], T0)
    command = close()
    [frame] = d.submit(command, T0).frames
    assert frame is command  # same name, no price to round: no copy
    from protocol.device import ModifyCommand

    modify = ModifyCommand(
        command_id="P1.modify.1", ticket=5, symbol="XAUUSD", sl=1944.5, tp=1950.257, deadline_ms=T0
    )
    [wire] = d.submit(modify, T0).frames
    assert (wire.symbol, wire.sl, wire.tp) == ("XAUUSD", 1944.5, 1950.26)

"""The device core's send rules for partition moves: nothing before the session's snapshot,
nothing the gate refuses (held, never lost), and no ack taken for another command's."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.device import DeviceCore
from engine.instruments import DEFAULT_INSTRUMENTS
from protocol.device import Ack, CloseCommand, HelloBody, command_hash
from protocol.results import classify


def close(i: int, volume: float = 0.1) -> CloseCommand:
    return CloseCommand(
        command_id=f"p{i}.close.1",
        ticket=100 + i,
        symbol="XAUUSD",
        volume=volume,
        deadline_ms=10**6,
    )


def new_core() -> DeviceCore:
    return DeviceCore("d1", "u1", DEFAULT_INSTRUMENTS, classify)


HELLO = HelloBody(ea_build="t", account_login="1", terminal_time_ms=0)


def test_the_documented_hash_vector() -> None:
    command = CloseCommand(
        command_id="P.close.1", ticket=5, symbol="XAUUSD", volume=0.1, reason="sl", deadline_ms=5
    )
    assert command_hash(command) == "2d016ad3cc783daa"
    # A resend (new deadline, new signature) and another reason ask for the same thing.
    again = msgspec.structs.replace(command, deadline_ms=99, sig="ab" * 32, reason="tp")
    assert command_hash(again) == command_hash(command)
    assert command_hash(msgspec.structs.replace(command, volume=0.2)) != command_hash(command)
    assert command_hash(msgspec.structs.replace(command, ticket=6)) != command_hash(command)


def test_a_refused_send_is_held_then_sent_when_the_gate_opens() -> None:
    core = new_core()
    core.connect("s1", HELLO, 0)
    core.on_snapshot([], 0)
    out = core.submit(close(1), 1, allowed=False)
    assert out.frames == [] and core.queued() == ["p1.close.1"]
    assert core.held_no_lease == 1 and core.gate_held
    assert core.flush(allowed=False).frames == []  # still refused: still held, counted again
    assert core.held_no_lease == 2
    sent = core.flush(allowed=True).frames
    assert [f.command_id for f in sent] == ["p1.close.1"]
    assert not core.gate_held and core.queued() == []


def test_unsend_puts_a_command_back_in_the_queue() -> None:
    core = new_core()
    core.connect("s1", HELLO, 0)
    core.on_snapshot([], 0)
    assert len(core.submit(close(1), 1).frames) == 1
    assert core.unsend(["p1.close.1", "nope"]) == 1
    assert core.queued() == ["p1.close.1"] and core.held_no_lease == 1
    assert [f.command_id for f in core.flush().frames] == ["p1.close.1"]


def test_an_ack_with_another_commands_hash_settles_nothing() -> None:
    core = new_core()
    core.connect("s1", HELLO, 0)
    core.on_snapshot([], 0)
    sent = close(1)
    core.submit(sent, 1)
    other = command_hash(close(1, volume=0.05))  # the same id, other parameters
    out = core.on_ack(
        Ack(command_id=sent.command_id, retcode=10009, fill_price=1.0, command_hash=other), 2
    )
    assert out.results == [] and core.hash_mismatches == 1
    assert [a.kind for a in out.alerts] == ["ack_hash_mismatch"]
    assert out.alerts[0].level == "critical"
    assert any(
        getattr(r, "entry", None) and r.entry.kind == "ack_hash_mismatch" for r in out.records
    )
    assert core.outstanding() == [sent.command_id]  # still waiting for its own answer
    right = Ack(
        command_id=sent.command_id, retcode=10009, fill_price=1.0, command_hash=command_hash(sent)
    )
    assert [r.command_id for r in core.on_ack(right, 3).results] == [sent.command_id]


def test_an_ack_without_a_hash_is_taken_as_before() -> None:
    core = new_core()
    core.connect("s1", HELLO, 0)
    core.on_snapshot([], 0)
    core.submit(close(1), 1)
    out = core.on_ack(Ack(command_id="p1.close.1", retcode=10009, fill_price=1.0), 2)
    assert len(out.results) == 1 and core.hash_mismatches == 0


# -- the property: no command frame without a snapshot in this session and the gate's yes ------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.booleans()),
        st.tuples(st.just("flush"), st.booleans()),
        st.tuples(st.just("connect"), st.just(True)),
        st.tuples(st.just("disconnect"), st.just(True)),
        st.tuples(st.just("snapshot"), st.just(True)),
        st.tuples(st.just("ack"), st.just(True)),
        st.tuples(st.just("unsend"), st.just(True)),
        st.tuples(st.just("tick"), st.just(True)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_no_command_leaves_before_the_snapshot_or_against_the_gate(ops) -> None:
    """A new core is what an adopted device gets: whatever happens, a command frame appears only
    in a call the gate allowed, in a session whose snapshot has come; and no command is ever
    lost (each is queued, out, or settled)."""
    core = new_core()
    snapshot_in_session = False
    submitted: list[str] = []
    settled: set[str] = set()
    lost: set[str] = set()
    sent_now: list[str] = []
    sessions = 0
    now = 0
    for op, flag in ops:
        now += 1
        allowed = True
        if op == "submit":
            allowed = flag
            out = core.submit(close(len(submitted)), now, allowed)
            submitted.append(f"p{len(submitted)}.close.1")
        elif op == "flush":
            allowed = flag
            out = core.flush(allowed)
        elif op == "connect":
            sessions += 1
            out = core.connect(f"s{sessions}", HELLO, now)
            snapshot_in_session = False
        elif op == "disconnect":
            out = core.disconnect(now)
            snapshot_in_session = False
        elif op == "snapshot":
            _, out = core.on_snapshot([], now)
            snapshot_in_session = core.connected
        elif op == "ack":
            if not sent_now:
                continue
            cid = sent_now.pop(0)
            out = core.on_ack(Ack(command_id=cid, retcode=10009, fill_price=1.0), now)
        elif op == "unsend":
            core.unsend(sent_now)
            sent_now.clear()
            continue
        else:
            out = core.tick(now)
        if out.frames:
            assert core.connected and snapshot_in_session and allowed
        sent_now.extend(f.command_id for f in out.frames if f.command_id not in sent_now)
        settled.update(r.command_id for r in out.results)
        lost.update(out.lost)
        sent_now = [c for c in sent_now if c in core.outstanding() and c not in core.queued()]
    for cid in submitted:
        assert cid in core.outstanding() or cid in settled or cid in lost

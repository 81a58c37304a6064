"""Partition leases against a real Postgres: sharing, handovers, lapses, crash detection."""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import trio

from persistence import Database, lease_sql, open_bridge, open_database
from persistence.leases import Claimed, HandoverWanted, LeaseEvent, LeaseManager, Lost
from persistence.partition_journal import PartitionJournalWriter
from protocol.errors import ConfigError, Fenced, UsageError

# Short enough for quick tests, long enough that a loaded machine (a full suite on two cores
# beside other work) does not lose a lease to a slow scheduler.
FAST: dict[str, Any] = {
    "lease_s": 3.0,
    "renew_every_s": 0.1,
    "margin_s": 0.5,
    "loop_stale_s": 1.0,
    "move_every_s": 0.05,
}


def _manager(db: Database, name: str, **options: Any) -> LeaseManager:
    return LeaseManager(db, name, f"http://127.0.0.1/{name}", **{**FAST, **options})


async def _wait_until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout_s`` (a bound, not a timing)."""
    with trio.fail_after(timeout_s):
        while not condition():
            await trio.sleep(0.02)


class Runtime:
    """What the cluster runtime does with lease events, reduced to what these tests need:
    keep them, and carry out handovers at once."""

    def __init__(self, manager: LeaseManager) -> None:
        self.manager = manager
        self.events: list[LeaseEvent] = []

    async def pump(self) -> None:
        async for event in self.manager.events:
            self.events.append(event)
            if isinstance(event, HandoverWanted):
                await self.manager.release(event.partition, event.next_owner)

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


async def _start(nursery: trio.Nursery, manager: LeaseManager) -> Runtime:
    runtime = Runtime(manager)
    await nursery.start(manager.run)
    nursery.start_soon(runtime.pump)
    return runtime


async def _owners(db: Database) -> dict[int, tuple[str | None, int]]:
    rows = await db.fetch("SELECT id, owner, epoch FROM partitions ORDER BY id")
    return {r["id"]: (r["owner"], r["epoch"]) for r in rows}


def _balanced(managers: list[LeaseManager], partitions: int = 64) -> bool:
    owned = [m.owned() for m in managers]
    target = math.ceil(partitions / len(managers))
    disjoint = sum(len(o) for o in owned) == len(frozenset().union(*owned))
    return (
        disjoint
        and sum(len(o) for o in owned) == partitions
        and all(len(o) <= target + 1 for o in owned)
    )


async def test_three_nodes_share_the_partitions_and_a_fourth_joins_by_handovers(
    db: Database,
) -> None:
    managers = [_manager(db, f"n{i}") for i in range(3)]
    for manager in managers:
        await manager.join()  # all registered before any claims: the first round splits evenly
    async with trio.open_nursery() as nursery:
        runtimes = [await _start(nursery, m) for m in managers]
        await _wait_until(lambda: _balanced(managers))
        owners = await _owners(db)
        for manager in managers:
            assert {p for p, (o, _) in owners.items() if o == manager.node_id} == manager.owned()
            assert all(manager.holds(p) for p in manager.owned())
            assert all(manager.epoch(p) == owners[p][1] for p in manager.owned())
        claimed = [c for r in runtimes for c in r.of(Claimed)]
        assert sorted(c.partition for c in claimed) == list(range(64))
        assert all(c.previous_owner is None and c.epoch == 1 for c in claimed)

        late = _manager(db, "n3")
        managers.append(late)
        late_runtime = await _start(nursery, late)
        # Settled, not just balanced: a release counts its handover before the claim's event
        # reaches the late node's pump, so the counts are compared once they agree or time out.
        await _wait_until(
            lambda: (
                _balanced(managers)
                and late.owned_count >= 15
                and len(late_runtime.of(Claimed))
                == late.owned_count
                == sum(m.handovers for m in managers)
            )
        )
        moved = late_runtime.of(Claimed)
        # Every partition it got was handed over (released, so no owner, reserved for it) by
        # a live owner, one at a time.
        assert moved and all(c.previous_owner is None for c in moved)
        assert all(c.epoch == c.previous_epoch + 1 == 2 for c in moved)
        assert sum(m.handovers for m in managers) == len(moved)
        assert not any(r.of(Lost) for r in [*runtimes, late_runtime])
        nursery.cancel_scope.cancel()


async def test_nodes_started_together_settle_without_handovers(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``expect_nodes``: the first to join claims its share only, not all 64 to hand half of
    them over one a round (what ``tripwire run --nodes 2`` did when one node was quicker)."""
    rounds = [0]
    real_round = lease_sql.balance_round

    async def counted_round(*args: Any, **kwargs: Any) -> Any:
        rounds[0] += 1
        return await real_round(*args, **kwargs)

    monkeypatch.setattr(lease_sql, "balance_round", counted_round)
    # A lease (the window of expect_nodes) far longer than the test needs.
    long = {"lease_s": 30.0, "renew_every_s": 0.2, "margin_s": 1.0, "expect_nodes": 2}
    first, second = _manager(db, "first", **long), _manager(db, "second", **long)
    async with trio.open_nursery() as nursery:
        first_runtime = await _start(nursery, first)
        await _wait_until(lambda: first.owned_count == 32)
        seen = rounds[0]
        await _wait_until(lambda: rounds[0] >= seen + 10)
        assert first.owned_count == 32  # ten rounds alone, and still its share only
        second_runtime = await _start(nursery, second)
        await _wait_until(lambda: first.owned_count == second.owned_count == 32)
        assert _balanced([first, second])
        runtimes = [first_runtime, second_runtime]
        assert first.handovers == second.handovers == 0
        assert not any(r.of(HandoverWanted) or r.of(Lost) for r in runtimes)
        claimed = [c for r in runtimes for c in r.of(Claimed)]
        assert sorted(c.partition for c in claimed) == list(range(64))
        assert all(c.epoch == 1 for c in claimed)  # each claimed once, from nobody
        nursery.cancel_scope.cancel()


async def test_an_expected_node_not_up_within_a_lease_is_taken_as_absent(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    wants: list[int] = []
    real_claim = lease_sql.claim_partitions

    async def recorded_claim(*args: Any, **kwargs: Any) -> Any:
        rows = await real_claim(*args, **kwargs)
        wants.append(kwargs["want"])
        return rows

    monkeypatch.setattr(lease_sql, "claim_partitions", recorded_claim)
    lone = _manager(db, "lone", lease_s=2.0, expect_nodes=2)
    async with trio.open_nursery() as nursery:
        await _start(nursery, lone)
        await _wait_until(lambda: lone.owned_count == 64)
        nursery.cancel_scope.cancel()
    assert wants == [32, 32]  # its share of two at once; the rest once the lease had passed


async def test_expect_nodes_below_one_is_refused(db: Database) -> None:
    with pytest.raises(UsageError, match="expect_nodes"):
        _manager(db, "n", expect_nodes=0)


async def test_a_count_mismatch_refuses_to_join(db: Database) -> None:
    await _manager(db, "a", partitions=64).join()
    with pytest.raises(ConfigError, match="refuses to join"):
        await _manager(db, "b", partitions=32).join()


async def test_one_node_id_cannot_join_twice_while_alive(db: Database) -> None:
    first = _manager(db, "same")
    await first.join()
    with pytest.raises(ConfigError, match="node id"):
        await _manager(db, "same").join()


class Rec(msgspec.Struct, frozen=True, kw_only=True):
    partition: int | None
    n: int


_encoder = msgspec.msgpack.Encoder()
AUDIT = "INSERT INTO audit_log (actor_id, action, outcome, detail) VALUES ($1, $2, 'ok', $3)"


def _project(records: list[Rec]) -> list[tuple[str, list[tuple[Any, ...]]]]:
    return [(AUDIT, [(str(r.partition), "test", {"n": r.n}) for r in records])]


async def test_a_node_that_stops_renewing_loses_its_partitions_and_its_writes_are_fenced(
    db: Database,
) -> None:
    a, b = _manager(db, "a"), _manager(db, "b")
    await a.join()
    await b.join()
    fenced: list[int] = []
    journal: PartitionJournalWriter[Rec] = PartitionJournalWriter(
        db, _encoder.encode, _project, lambda r: r.partition, on_fenced=fenced.append
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        runtime_a = await _start(nursery, a)
        runtime_b = await _start(nursery, b)
        # Balanced, and every claim's event taken by the pump (a claim emits it in the same
        # step that records the partition, but the pump runs when the scheduler says).
        await _wait_until(
            lambda: _balanced([a, b]) and {c.partition for c in runtime_b.of(Claimed)} == b.owned()
        )
        for claim in runtime_b.of(Claimed):
            journal.open_partition(claim.partition, claim.epoch, claim.last_seq, claim.checkpoint)
        victim = min(b.owned())
        await journal.wait_committed(journal.append_nowait(Rec(partition=victim, n=1)))

        # B's renewals stop as they do when its trio loop is wedged: the heartbeat reads stale.
        b.loop_stale_s = -1.0
        taken = b.owned()
        await _wait_until(lambda: a.owned() == frozenset(range(64)))
        assert not any(b.holds(p) for p in taken)  # its local deadlines passed first
        assert b.owned() == taken  # no renewal has told it yet: it is a zombie

        zombie = journal.append_nowait(Rec(partition=victim, n=2))
        other = journal.append_nowait(Rec(partition=max(taken), n=3))
        global_record = journal.append_nowait(Rec(partition=None, n=4))
        await journal.wait_committed(global_record)  # the global record commits regardless
        for ticket in (zombie, other):
            with pytest.raises(Fenced):
                await journal.wait_committed(ticket)
        assert set(fenced) == {victim, max(taken)} == journal.fenced
        rows = await db.fetch(
            "SELECT first_seq, epoch FROM partition_journal WHERE partition = $1", victim
        )
        assert [tuple(r) for r in rows] == [(1, 1)]  # the zombie's batch wrote nothing
        assert await db.fetchval("SELECT count(*) FROM audit_log WHERE detail->>'n' = '4'") == 1
        assert await db.fetchval("SELECT count(*) FROM audit_log WHERE detail->>'n' = '2'") == 0

        # Its loop recovers: the first renewal finds none of them and reports them lost.
        b.loop_stale_s = FAST["loop_stale_s"]
        await _wait_until(lambda: len(runtime_b.of(Lost)) == len(taken))
        assert {e.partition for e in runtime_b.of(Lost)} == taken and not b.owned()
        assert all(c.previous_owner == "b" for c in runtime_a.of(Claimed) if c.partition in taken)
        nursery.cancel_scope.cancel()


async def test_a_rounds_view_says_what_this_node_may_claim_and_where_each_partition_is(
    db: Database,
) -> None:
    """The one read a balancing round makes of the partitions: the same rules as the claim's
    own statements (``_RESERVED``, ``_CLAIMABLE``), and the placements for redirects."""
    await db.run_with_connection(functools.partial(lease_sql.ensure_cluster, partitions=64))
    await db.execute(
        "INSERT INTO cluster_nodes (node_id, url, lock_key, expires_at) VALUES"
        " ('a', 'http://a', 901, clock_timestamp() + interval '1 minute'),"
        " ('b', 'http://b', 902, clock_timestamp() + interval '1 minute')"
    )
    later, earlier = "clock_timestamp() + interval '1 minute'", "clock_timestamp() - interval '1 s'"
    for partition, owner, next_owner, expires in [
        (0, "b", None, later),  # b's, live: nothing for a
        (1, None, "a", later),  # reserved for a by a handover
        (2, None, "b", later),  # reserved for b: not a's
        (3, "b", None, earlier),  # b's lease lapsed: anyone's
        (4, "ghost", None, later),  # a node whose row was reaped: anyone's
        (5, "a", None, later),  # a's from a previous life (or held, when a says so)
    ]:
        await db.execute(
            f"UPDATE partitions SET owner = $2::text, url = 'http://' || $2::text,"
            f" next_owner = $3::text, expires_at = {expires} WHERE id = $1",
            partition,
            owner,
            next_owner,
        )

    async def view(owned: list[int]) -> lease_sql.ClusterView:
        return await db.run_with_connection(
            functools.partial(lease_sql.cluster_view, node_id="a", owned=owned)
        )

    held = await view([5])
    assert held.live_nodes == ("a", "b")
    assert held.owned_by == {"a": 1, "b": 1, "ghost": 1}
    assert held.reserved == 1
    assert held.claimable == 64 - 3  # all but 0, 2 and 5 (1 is counted: reserved for a)
    assert (await view([])).claimable == 64 - 2
    assert (await view([1, 5])).reserved == 0
    where = {p.partition: (p.owner, p.url) for p in held.placements}
    assert len(where) == 64
    assert where[0] == ("b", "http://b") and where[5] == ("a", "http://a")
    assert where[3][0] is None and where[1][0] is None and where[10] == (None, None)


async def test_a_settled_node_opens_no_claim_transaction(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twice a second on every node: once it holds its share, a round is its reads only, and
    they keep the placements current."""
    calls = {"rounds": 0, "claims": 0}
    real_round, real_claim = lease_sql.balance_round, lease_sql.claim_partitions

    async def counted_round(*args: Any, **kwargs: Any) -> Any:
        calls["rounds"] += 1
        return await real_round(*args, **kwargs)

    async def counted_claim(*args: Any, **kwargs: Any) -> Any:
        calls["claims"] += 1
        return await real_claim(*args, **kwargs)

    monkeypatch.setattr(lease_sql, "balance_round", counted_round)
    monkeypatch.setattr(lease_sql, "claim_partitions", counted_claim)
    alone = _manager(db, "alone")
    async with trio.open_nursery() as nursery:
        await _start(nursery, alone)
        await _wait_until(lambda: alone.owned() == frozenset(range(64)))
        await _wait_until(
            lambda: (
                len(alone.placements) == 64
                and all(p.owner == "alone" for p in alone.placements.values())
            )
        )
        claims, rounds = calls["claims"], calls["rounds"]
        await _wait_until(lambda: calls["rounds"] >= rounds + 10)
        assert calls["claims"] == claims
        assert {p.url for p in alone.placements.values()} == {"http://127.0.0.1/alone"}
        nursery.cancel_scope.cancel()


async def test_a_dead_nodes_partitions_are_claimed_without_waiting_for_its_lease(
    db: Database,
) -> None:
    long = {"lease_s": 30.0, "renew_every_s": 0.2, "margin_s": 1.0}
    survivor = _manager(db, "survivor", **long)
    victim = _manager(db, "victim", **long, move_every_s=600.0)  # never notices by itself
    await survivor.join()
    await victim.join()
    async with trio.open_nursery() as nursery:
        await _start(nursery, survivor)
        victim_runtime = await _start(nursery, victim)
        await _wait_until(lambda: _balanced([survivor, victim]))
        before = await _owners(db)
        taken = victim.owned()
        # What Postgres sees of a kill -9: the session holding the node's lock goes away.
        assert victim.lock_pid is not None
        await db.execute("SELECT pg_terminate_backend($1)", victim.lock_pid)
        await _wait_until(lambda: survivor.owned() == frozenset(range(64)), timeout_s=10.0)
        after = await _owners(db)
        for partition in taken:
            assert after[partition] == ("survivor", before[partition][1] + 1)
        assert await db.fetchval("SELECT count(*) FROM cluster_nodes") == 1  # the dead one reaped
        # The victim's own renewals (another connection) now find none of its partitions.
        await _wait_until(lambda: len(victim_runtime.of(Lost)) == len(taken), timeout_s=10.0)
        assert {e.partition for e in victim_runtime.of(Lost)} == taken and not victim.owned()
        nursery.cancel_scope.cancel()


async def test_a_node_whose_lock_connection_drops_takes_its_lock_again_and_rejoins(
    db: Database,
) -> None:
    """A network blip on the lock connection alone: the others may take the node for dead
    meanwhile, but it takes a lock again, registers again, and the cluster balances again
    with it in."""
    a, b = _manager(db, "a"), _manager(db, "b")
    await a.join()
    await b.join()
    async with trio.open_nursery() as nursery:
        await _start(nursery, a)
        await _start(nursery, b)
        await _wait_until(lambda: _balanced([a, b]))
        old_pid = b.lock_pid
        await db.execute("SELECT pg_terminate_backend($1)", old_pid)
        await _wait_until(lambda: b.lock_pid not in (None, old_pid))
        await _wait_until(lambda: _balanced([a, b]) and min(a.owned_count, b.owned_count) >= 31)
        # Its row names the key its new lock connection holds (the old key, or a fresh one if
        # "a" reaped the row meanwhile).
        holder = await db.fetchval(
            "SELECT l.pid FROM pg_locks l JOIN cluster_nodes n ON n.node_id = 'b'"
            " AND l.locktype = 'advisory' AND l.granted"
            " AND ((l.classid::bigint << 32) | l.objid::bigint) = n.lock_key"
            " WHERE n.expires_at > now()"
        )
        assert holder == b.lock_pid
        nursery.cancel_scope.cancel()


def test_a_wedged_trio_loop_stops_renewing_and_loses_its_leases(pg_dsn: str) -> None:
    """Node "b" runs in a thread of its own (its trio loop, its bridge), then its trio loop
    blocks. Its asyncio renewal loop keeps running, but the heartbeat it checks goes stale, so
    it renews nothing: "a" takes every partition. Unblocked, "b" learns it lost them."""
    wedged, unwedge = threading.Event(), threading.Event()
    checked = threading.Event()  # "a" stays up until then: gone, its partitions come back to "b"
    seen: dict[str, Any] = {}

    async def node_b() -> None:
        async with open_bridge() as bridge, open_database(bridge, pg_dsn) as db:
            b = _manager(db, "b")
            async with trio.open_nursery() as nursery:
                await nursery.start(b.run)
                await _wait_until(lambda: b.owned_count == 64)
                seen["owned"] = b.owned()
                wedged.set()
                unwedge.wait(timeout=60)  # blocks the trio loop: the point of the test
                seen["held_after_wedge"] = [p for p in seen["owned"] if b.holds(p)]
                await _wait_until(lambda: b.losses == 64)
                seen["owned_after"] = b.owned()
                checked.set()
                nursery.cancel_scope.cancel()

    async def node_a() -> None:
        async with open_bridge() as bridge, open_database(bridge, pg_dsn) as db:
            await trio.to_thread.run_sync(wedged.wait, 60)
            a = _manager(db, "a")
            async with trio.open_nursery() as nursery:
                await nursery.start(a.run)
                try:
                    await _wait_until(lambda: a.owned_count == 64)
                    seen["epochs"] = {a.epoch(p) for p in a.owned()}
                finally:
                    unwedge.set()
                await trio.to_thread.run_sync(checked.wait, 60)
                nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(node_b,))
    thread.start()
    try:
        trio.run(node_a)
    finally:
        unwedge.set()
        wedged.set()
        checked.set()
        thread.join(60)
    assert seen["owned"] == frozenset(range(64))
    assert seen["epochs"] == {2}  # every one claimed from "b"
    assert seen["held_after_wedge"] == []  # its deadlines had passed
    assert seen["owned_after"] == frozenset()

"""Three real node processes on loopback, one Postgres and one real Redis: redirects, a kill -9
in the middle of the run, a frozen zombie, a planned handover.

Each test runs the whole world of ``tests.e2e.cluster_world``: EAs connected to random nodes
(redirected by ``moved`` to the owner of their user), a feed through one node, the price path's
brute-force oracle. What every test holds the cluster to:

* every position the path crosses gets exactly one close command id (a resend of the same id
  after a reconnect is the protocol; two ids would be two closes), and no other position gets
  any;
* no close before its oracle quote was published (a node never fires on a stale or foreign
  price);
* a close more than a few seconds after its oracle quote only when that quote fell inside the
  failover (the claimer replays the gap and fires it there).
"""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from gateway.auth import TokenIssuer
from persistence.db import Database
from protocol.client import Subscribe
from protocol.closecodes import CloseCode
from protocol.codec import client_client_codec
from protocol.common import Side
from protocol.redirects import Moved
from tests.e2e.cluster_world import JWT_SECRET, Nodes, World, rest

pytestmark = pytest.mark.slow

LATE_S = 2.5
"""A close this long after its oracle quote was published is late (the tick path takes
milliseconds; a failover takes a lease at most)."""


async def _start(nodes: Nodes, world: World, count: int) -> None:
    await world.seed_database(nodes.db)
    for i in range(count):
        await nodes.start(i)
    await nodes.wait_owned_by(list(range(count)))


async def _armed(nodes: Nodes, world: World, timeout_s: float = 60) -> None:
    want = len(world.positions)
    with trio.fail_after(timeout_s):
        while sum([await nodes.metric(i, "tripwire_armed_positions") for i in nodes.live()]) < want:
            await trio.sleep(0.3)


def _check_exactly_once(world: World, failover: tuple[float, float] | None) -> list[str]:
    """The promises of the module docstring; returns what broke (empty: none)."""
    problems: list[str] = []
    closes = world.distinct_closes()
    for key, ids in closes.items():
        if key not in world.oracle:
            problems.append(f"{key} closed though the path never crossed it: {ids}")
        elif len(ids) > 1:
            problems.append(f"{key} got {len(ids)} close commands: {sorted(ids)}")
    missing = set(world.oracle) - set(closes)
    if missing:
        problems.append(f"{len(missing)} positions never closed: {sorted(missing)[:5]}")
    for key, first in world.first_close().items():
        due = world.oracle.get(key)
        if due is None:
            continue
        if first.feed_index <= due:
            problems.append(f"{key} closed before its oracle quote {due} was sent")
            continue
        published = world.sent_at[due]
        if first.arrived - published > LATE_S:
            in_gap = failover is not None and failover[0] - LATE_S <= published <= failover[1]
            if not in_gap:
                problems.append(
                    f"{key} closed {first.arrived - published:.1f} s after its quote, outside"
                    " any failover"
                )
    return problems


async def _widen_a_take_profit(
    nodes: Nodes, world: World, devices: set[str]
) -> dict[str, tuple[str, float]]:
    """For each of ``devices``' users, move the take-profit of one position the path never
    crosses 0.5 further away (a REST PATCH answered 200); position id -> (token, new tp)."""
    issuer = TokenIssuer(JWT_SECRET.encode(), 3600)
    changed: dict[str, tuple[str, float]] = {}
    for device in sorted(devices):
        token = issuer.issue(world.user_of(device), "user")[0]
        listed = await rest(nodes, token, "GET", "/api/v1/positions?state=open")
        assert listed.status_code == 200, listed.text
        for row in listed.json()["positions"]:
            key = (device, row["ticket"])
            if key in world.oracle or row["tp"] is None:
                continue
            side, _sl, tp = world.positions[key]
            new_tp = round(tp + (0.5 if side is Side.BUY else -0.5), 3)
            patched = await rest(
                nodes, token, "PATCH", f"/api/v1/positions/{row['id']}", {"tp": new_tp}
            )
            assert patched.status_code == 200, patched.text
            changed[row["id"]] = (token, new_tp)
            break
    assert changed, "no position of the victim's users to change"
    return changed


async def _client_stream(
    nodes: Nodes, node: int, user_id: str, subscribed: trio.Event
) -> tuple[Moved | None, int | None]:
    """A ``/ws/client`` stream of ``user_id`` on ``node``: the ``moved`` frame it was sent (None
    if none) and the close code that ended it."""
    codec = client_client_codec("json")
    token = TokenIssuer(JWT_SECRET.encode(), 3600).issue(user_id, "user")[0]
    url = f"{nodes.ws(node)}/ws/client?token={token}"
    moved: Moved | None = None
    async with open_websocket_url(url, subprotocols=["tripwire.v1.json"]) as ws:
        await ws.send_message(codec.encode(Subscribe(channels=["positions"])))
        await ws.get_message()  # the snapshot: the stream is served here
        subscribed.set()
        try:
            while True:
                message = codec.decode(await ws.get_message())
                if isinstance(message, Moved):
                    moved = message
        except ConnectionClosed as closed:
            return moved, closed.reason.code
    return moved, None


async def test_kill_9_mid_run_every_position_closes_exactly_once(
    db: Database, pg_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    world, nodes = World(), Nodes(db, pg_dsn, redis_url, tmp_path, 3)
    rng = random.Random(11)
    try:
        await _start(nodes, world, 3)
        async with trio.open_nursery() as nursery:
            for d in range(world.devices):
                nursery.start_soon(world.run_device, nodes, d, rng)
            await _armed(nodes, world)
            # Each EA went to a random node, and was redirected to its user's where needed.
            assert {d for d, _, _ in world.welcomes} == set(world.device_ids)
            assert world.redirects_followed > 0
            # The victim: the node (not the feed's) serving the most of our users.
            served: dict[int, int] = {}
            for user in world.users:
                owner = await nodes.owner_node(user)
                if owner is not None and owner != 0:
                    served[owner] = served.get(owner, 0) + 1
            victim = max(served, key=lambda i: served[i])
            victims_devices = {
                d for d in world.device_ids if await nodes.owner_node(world.user_of(d)) == victim
            }
            await world.feed(nodes, 0, until=world.quotes // 3)
            # Acknowledged just before the kill, on the victim (through its redirect): must
            # survive it. A position the path never crosses gets a take-profit further away.
            changed = await _widen_a_take_profit(nodes, world, victims_devices)
            killed_at = trio.current_time()
            nodes.signal(victim, signal.SIGKILL)
            await nodes.wait_exit(victim)
            await world.feed(nodes, 0)
            await world.wait_closed()
            survivors = [i for i in range(3) if i != victim]
            owners = await nodes.owners()
            assert sum(owners.values()) == 64
            assert set(owners) == {nodes.node_id(i) for i in survivors}
            # Every device of the victim's users was welcomed again, by a survivor.
            back = {
                device: min(t for d, port, t in world.welcomes if d == device and t > killed_at)
                for device in victims_devices
                if any(d == device and t > killed_at for d, _, t in world.welcomes)
            }
            assert set(back) == victims_devices
            recovered_at = max(back.values(), default=killed_at)
            problems = _check_exactly_once(world, (killed_at, recovered_at))
            assert not problems, "\n".join(problems)
            for position_id, (token, tp) in changed.items():
                after = await rest(nodes, token, "GET", f"/api/v1/positions/{position_id}")
                assert after.status_code == 200, after.text
                assert abs(after.json()["tp"] - tp) < 1e-6, after.text
            gap = [await nodes.metric(i, "tripwire_claim_gap_quotes_total") for i in survivors]
            assert sum(gap) > 0, "the claimers replayed no quote of the gap"
            # The feed's node appended from the feed's call; the others, which append nothing,
            # read the stream (none muted it).
            assert await nodes.metric(0, "tripwire_stream_appends_in_call_total") > 0
            for i in survivors:
                if i != 0:
                    assert await nodes.metric(i, "tripwire_stream_symbols_muted") == 0
            nursery.cancel_scope.cancel()
    finally:
        await nodes.close()


async def test_a_frozen_zombie_cannot_get_a_command_executed(
    db: Database, pg_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    """SIGSTOP a node past its lease: the other claims its partitions and closes its users'
    positions; woken up, the zombie sends nothing (its lease deadline passed while it was
    frozen), learns it lost the partitions, and its journal writes are fenced."""
    world, nodes = World(quotes=1000), Nodes(db, pg_dsn, redis_url, tmp_path, 2, lease_s=3.0)
    rng = random.Random(12)
    try:
        await _start(nodes, world, 2)
        async with trio.open_nursery() as nursery:
            for d in range(world.devices):
                nursery.start_soon(world.run_device, nodes, d, rng)
            await _armed(nodes, world)
            await world.feed(nodes, 0, until=300)
            frozen_at = trio.current_time()
            nodes.signal(1, signal.SIGSTOP)
            await world.feed(nodes, 0, until=700)  # 8 s: past the lease; node 0 claims
            assert (await nodes.owners()) == {nodes.node_id(0): 64}
            woke_at = trio.current_time()
            nodes.signal(1, signal.SIGCONT)
            await world.feed(nodes, 0)
            await world.wait_closed()
            zombie = [
                c for c in world.closes if c.node_port == nodes.ports[1] and c.arrived > frozen_at
            ]
            assert not zombie, f"the zombie got commands to devices: {zombie[:3]}"
            problems = _check_exactly_once(world, (frozen_at, woke_at + nodes.lease_s))
            assert not problems, "\n".join(problems)
            assert await nodes.metric(1, "tripwire_partition_losses_total") > 0
            nursery.cancel_scope.cancel()
    finally:
        await nodes.close()


async def test_a_planned_handover_sends_nothing_twice(
    db: Database, pg_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    """SIGTERM a node mid-run: it hands each partition over in order (stop firing, wait for
    acks, flush, release, redirect); the others go on from its journal. No close command
    reaches a device twice, not even as a resend."""
    world, nodes = World(), Nodes(db, pg_dsn, redis_url, tmp_path, 3)
    rng = random.Random(13)
    try:
        await _start(nodes, world, 3)
        async with trio.open_nursery() as nursery:
            for d in range(world.devices):
                nursery.start_soon(world.run_device, nodes, d, rng)
            await _armed(nodes, world)
            # A dashboard of a user node 2 serves: the handover sends it on with the user.
            served_by_2 = [u for u in world.users if await nodes.owner_node(u) == 2]
            assert served_by_2, "node 2 serves nobody"
            streams: list[tuple[Moved | None, int | None]] = []
            subscribed = trio.Event()

            async def dashboard() -> None:
                streams.append(await _client_stream(nodes, 2, served_by_2[0], subscribed))

            nursery.start_soon(dashboard)
            with trio.fail_after(30):
                await subscribed.wait()
            await world.feed(nodes, 0, until=world.quotes // 3)
            stopped_at = trio.current_time()
            nodes.signal(2, signal.SIGTERM)
            feeding = trio.Event()

            async def feed_rest() -> None:
                await world.feed(nodes, 0)
                feeding.set()

            nursery.start_soon(feed_rest)
            assert await nodes.wait_exit(2, timeout_s=60) == 0
            await feeding.wait()
            await world.wait_closed()
            owners = await nodes.owners()
            assert set(owners) == {nodes.node_id(0), nodes.node_id(1)}
            assert sum(owners.values()) == 64
            problems = _check_exactly_once(world, (stopped_at, trio.current_time()))
            assert not problems, "\n".join(problems)
            seen: dict[str, int] = {}
            for c in world.closes:
                seen[c.command_id] = seen.get(c.command_id, 0) + 1
            twice = {cid: n for cid, n in seen.items() if n > 1}
            assert not twice, f"commands sent twice: {twice}"
            handed = await nodes.metric(0, "tripwire_partition_claims_total")
            assert handed > 0
            [(moved, code)] = streams  # the dashboard was told where its user went
            assert moved is not None and code == CloseCode.MOVED, (moved, code)
            assert moved.url is None or moved.url.startswith((nodes.ws(0), nodes.ws(1)))
            nursery.cancel_scope.cancel()
    finally:
        await nodes.close()

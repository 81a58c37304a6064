"""Partition leases in Postgres (cluster mode): who owns which partition, until when.

Rules of operation:

* **Joining.** :meth:`LeaseManager.join` makes sure the ``cluster`` row exists (the first node
  writes the partition count; a node configured with another count refuses to join:
  :class:`~protocol.errors.ConfigError`), opens a DEDICATED unpooled connection that takes this
  node's session advisory lock (its key stored in ``cluster_nodes.lock_key``, kept across
  restarts of the same node id), and registers the node row with its own heartbeat lease.
* **Crash detection.** A node's lock lives as long as its process: on kill -9 Postgres drops
  the connection and the lock. Every balancing round, each node tries the other nodes' keys
  (``pg_try_advisory_lock``, released at once): a key it gets belongs to a dead node, whose
  row it deletes; that node's partitions are claimable AT ONCE, without waiting out a lease.
  Leases only ever run out for hangs and network partitions.
* **Expiry is Postgres's.** Every lease ends at ``clock_timestamp() + lease_s`` of the
  statement that wrote it. Locally a partition is held until its DEADLINE: the monotonic time
  its last successful renewal (or claim) was SENT, plus ``lease_s - margin_s``, which is always
  before Postgres's expiry. :meth:`holds` says whether it is passed; check it before every
  device command.
* **Renewals** run on the bridge's asyncio loop, on a connection of their own, one statement
  every ``renew_every_s`` for the node row and all the partitions held (at their epochs), with
  a short timeout. They go out only while the trio loop's heartbeat (stamped by a tiny trio
  task) is younger than ``loop_stale_s``: a wedged trio loop stops renewing, so its leases
  lapse and another node takes its users, instead of a hung process holding them forever. A
  partition the renewal no longer finds (claimed by another node) is LOST: :class:`Lost`.
* **Balancing**, every ``move_every_s``: target = ceil(partitions / live nodes) (live: node row
  unexpired). Below target, a node claims what is free (unowned, lapsed, owned by a dead node),
  all at once (start-up, failover), and always what a handover reserved for it. Nodes started
  together (``tripwire run --nodes N``) pass ``expect_nodes``: for one lease after joining, a
  node counts at least that many live nodes, so the first to join does not claim all and
  then hand half over one at a time (32 handovers at 0.5 s a round for two nodes). Above
  target + ``hysteresis``, or above target while another node is more than ``hysteresis``
  below it, it asks for ONE handover at a time (:class:`HandoverWanted`, naming the least
  loaded node below target): the runtime runs the ordered handover (stop, drain,
  flush) and then calls :meth:`release`. A claim bumps the epoch; :class:`Claimed` is emitted
  only once the claim has COMMITTED, with what the previous owner left (journal ``last_seq``,
  tick ``checkpoint``). A round is ONE call over the bridge, on the lock connection: the dead
  nodes reaped, then one read of the nodes and one of the partitions, which also gives every
  partition's placement (:attr:`LeaseManager.placements`, for redirects). The claim's
  transaction runs only when that read shows something to claim, so a settled node's
  round costs three small reads, twice a second.

**Postgres unreachable for longer than a lease.** Renewals fail, deadlines pass, :meth:`holds`
turns False for every partition (commands stop) while the partitions stay in :meth:`owned`
(nothing says another node took them: when Postgres comes back a renewal either finds them, and
they are held again, or reports them lost). What the node does meanwhile (keep closing on its
own judgement, or stop) is the runtime's policy, not this module's: :attr:`renew_ok_at` (the
monotonic send time of the last renewal that succeeded) and :attr:`renew_failures` make the
state observable.

Everything here runs on the trio thread except the renewal loop, which reads two attributes the
trio side replaces whole (the heartbeat stamp and a frozen view of the leases) and hands its
results back through the trio token.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import msgspec
import structlog
import trio

from persistence import lease_sql
from persistence.db import Database, is_unavailable
from protocol.errors import ConfigError, StorageError, UsageError

__all__ = [
    "Claimed",
    "HandoverWanted",
    "LeaseEvent",
    "LeaseManager",
    "Lost",
    "read_node_url",
]

T = TypeVar("T")

_log = structlog.get_logger(component="leases")  # lazy: configured at first use


class Claimed(msgspec.Struct, frozen=True, kw_only=True, tag="claimed"):
    """This node now owns ``partition`` at ``epoch`` (the claim has committed).

    The runtime loads the partition (``persistence.partition_store.load_partition``), opens it
    in the journal writer after ``last_seq`` with ``checkpoint``, and replays the ticks after it.
    """

    partition: int
    epoch: int
    previous_owner: str | None
    previous_epoch: int
    last_seq: int
    """The partition journal's last committed seq when the claim committed."""
    checkpoint: dict[str, int]
    """``{symbol: tick stream seq}`` the previous owner had processed (committed with its
    journal)."""


class Lost(msgspec.Struct, frozen=True, kw_only=True, tag="lost"):
    """This node no longer owns ``partition`` (held at ``epoch``): another node claimed it.

    Its journal batches are fenced from now on; the runtime drops its users at once.
    """

    partition: int
    epoch: int
    reason: str


class HandoverWanted(msgspec.Struct, frozen=True, kw_only=True, tag="handover"):
    """This node holds more than its share: hand ``partition`` over to ``next_owner``, then call
    :meth:`LeaseManager.release` (``release(partition, next_owner)``)."""

    partition: int
    next_owner: str


LeaseEvent = Claimed | Lost | HandoverWanted


class LeaseManager:
    """The leases of one node (see the module docstring).

    Args:
        db: the cluster's database (migrated).
        node_id: this node's stable name (unique in the cluster).
        url: where clients reach it (what a ``moved`` frame names).
        partitions: the partition count this node is configured with.
        lease_s: how long a lease lasts after its renewal (Postgres clock).
        renew_every_s: the period of renewals (and their timeout).
        margin_s: how much earlier than Postgres's expiry the local deadline falls.
        loop_stale_s: how old the trio loop's heartbeat may be for a renewal to go out.
        move_every_s: the period of balancing rounds (dead-node checks, claims, handovers).
        hysteresis: how far above target a node may stay before asking for a handover.
        expect_nodes: how many nodes were started with this one: for ``lease_s`` after
            joining, the target counts at least that many live nodes (those not up by then
            are taken as absent, and their share is claimed).

    Attributes (metrics): ``claims``, ``losses``, ``handovers`` (partitions released to a next
    owner), ``renew_failures``, ``owned_count``, ``renew_ok_at``; ``events`` is where
    :data:`LeaseEvent` s arrive (unbounded: at most a few per partition per round).
    """

    def __init__(
        self,
        db: Database,
        node_id: str,
        url: str,
        *,
        partitions: int = 64,
        lease_s: float = 5.0,
        renew_every_s: float = 1.0,
        margin_s: float = 1.0,
        loop_stale_s: float = 1.0,
        move_every_s: float = 2.0,
        hysteresis: int = 1,
        connect_timeout_s: float = 5.0,
        expect_nodes: int = 1,
    ) -> None:
        if partitions < 1:
            raise UsageError("partitions must be >= 1")
        if expect_nodes < 1:
            raise UsageError("expect_nodes must be >= 1")
        if not 0 <= margin_s < lease_s or renew_every_s <= 0 or renew_every_s >= lease_s:
            raise UsageError("leases need 0 <= margin_s < lease_s and 0 < renew_every_s < lease_s")
        self.db = db
        self.node_id = node_id
        self.url = url
        self.partitions = partitions
        self.lease_s = lease_s
        self.renew_every_s = renew_every_s
        self.margin_s = margin_s
        self.loop_stale_s = loop_stale_s
        self.move_every_s = move_every_s
        self.hysteresis = hysteresis
        self.connect_timeout_s = connect_timeout_s
        self.expect_nodes = expect_nodes
        self._joined_at = math.inf  # monotonic: when expect_nodes stops counting
        # Short, yet long enough for a loaded server: an answer later than the local deadline
        # extends nothing anyway (a deadline counts from the renewal's send time).
        self._renew_timeout_s = max(renew_every_s, (lease_s - margin_s) / 2)
        self._epochs: dict[int, int] = {}
        self._deadlines: dict[int, float] = {}
        self._view: tuple[list[int], list[int]] = ([], [])  # replaced whole: read by asyncio
        self._heartbeat_at = -math.inf  # replaced whole: read by asyncio
        self._lock_conn: asyncpg.Connection | None = None
        self._lock_key: int | None = None
        self._registered = False
        self._handover: tuple[int, float] | None = None  # (partition, monotonic asked at)
        self._releasing: set[int] = set()
        self._send_event, self.events = trio.open_memory_channel[LeaseEvent](math.inf)
        self.claims = 0
        self.losses = 0
        self.handovers = 0
        self.renew_failures = 0
        self.renew_ok_at = -math.inf
        self.placements: dict[int, lease_sql.Placement] = {}
        """Every partition's owner and URL as of the last balancing round (for redirects)."""
        self._draining = False

    def drain(self) -> None:
        """This node is leaving (a planned stop): from now on it claims nothing and asks for no
        handover; it keeps renewing what it holds until the runtime has released each one."""
        self._draining = True

    # -- what the runtime reads ---------------------------------------------------------------

    def holds(self, partition: int) -> bool:
        """Whether this node owns ``partition`` and its local deadline has not passed."""
        deadline = self._deadlines.get(partition)
        return deadline is not None and time.monotonic() < deadline

    def epoch(self, partition: int) -> int | None:
        """The epoch this node owns ``partition`` at (None: not owned)."""
        return self._epochs.get(partition)

    def deadline(self, partition: int) -> float | None:
        """The monotonic time until which ``partition`` is held (None: not owned)."""
        return self._deadlines.get(partition)

    def owned(self) -> frozenset[int]:
        """The partitions this node owns (held or with a passed deadline, not yet lost)."""
        return frozenset(self._epochs)

    @property
    def owned_count(self) -> int:
        return len(self._epochs)

    @property
    def lock_pid(self) -> int | None:
        """The server pid of the connection holding this node's advisory lock (operations)."""
        conn = self._lock_conn
        return None if conn is None or conn.is_closed() else conn.get_server_pid()

    # -- joining and running ------------------------------------------------------------------

    async def join(self) -> None:
        """Join the cluster: its partition count, this node's lock and its row.

        Raises:
            ConfigError: the cluster has another partition count, or this node id is alive
                elsewhere (its lock is held).
            StorageError: Postgres is unavailable.
        """
        await self.db.run_with_connection(
            functools.partial(lease_sql.ensure_cluster, partitions=self.partitions)
        )
        if not await self._take_lock():
            raise ConfigError(
                "another live node uses this node id", key="node_id", node_id=self.node_id
            )
        sent = time.monotonic()
        await self._register()
        self.renew_ok_at = sent
        self._joined_at = sent
        _log.info("joined the cluster", node_id=self.node_id, lock_key=self._lock_key)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join (unless :meth:`join` ran), then heartbeat, renew and balance until cancelled.

        Start it with ``await nursery.start(manager.run)``. On exit its connections close, so
        the lock goes and the other nodes claim this node's partitions at once: for an orderly
        exit, hand them over first.
        """
        try:
            if self._lock_key is None:
                await self.join()
            token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._beat)
                nursery.start_soon(self.db.bridge.run, self._renew_forever, token)
                nursery.start_soon(self._balance_forever)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self._close_lock()
            self._send_event.close()

    async def release(self, partition: int, next_owner: str | None = None) -> bool:
        """Give ``partition`` up (after the runtime's ordered handover), reserving it for
        ``next_owner`` for one lease. Returns False if it was no longer this node's.

        The partition stops being held locally before the statement is sent.
        """
        epoch = self._epochs.pop(partition, None)
        self._deadlines.pop(partition, None)
        if self._handover is not None and self._handover[0] == partition:
            self._handover = None
        if epoch is None:
            return False
        self._changed()
        # Meanwhile a balancing round must not take it back as "ours from a previous life".
        self._releasing.add(partition)
        try:
            released = await self.db.run_with_connection(
                functools.partial(
                    lease_sql.release_partition,
                    node_id=self.node_id,
                    partition=partition,
                    epoch=epoch,
                    next_owner=next_owner,
                    lease_s=self.lease_s,
                )
            )
        finally:
            self._releasing.discard(partition)
        if released and next_owner is not None:
            self.handovers += 1
        _log.info("partition released", partition=partition, next_owner=next_owner, ok=released)
        return bool(released)

    # -- the trio side ------------------------------------------------------------------------

    async def _beat(self) -> None:
        """Stamp the trio loop's heartbeat: renewals go out only while it is fresh."""
        while True:
            self._heartbeat_at = time.monotonic()
            # Twice per loop_stale_s: fresh at any renewal while the loop turns.
            await trio.sleep(max(0.01, self.loop_stale_s / 2))

    async def _balance_forever(self) -> None:
        while True:
            try:
                await self._balance()
            except StorageError as exc:
                _log.warning("balancing round failed", error=exc.details.get("error", repr(exc)))
            await trio.sleep(self.move_every_s)

    async def _balance(self) -> None:
        if self._lock_conn is None or self._lock_conn.is_closed() or not self._registered:
            await self._close_lock()
            if not await self._take_lock():
                _log.error("this node's lock is held elsewhere", lock_key=self._lock_key)
                return
            await self._register()
        try:
            dead, view = await self._bridged(
                lease_sql.balance_round, self._lock_conn, self.node_id, self._held_or_releasing()
            )
        except StorageError:
            await self._close_lock()  # a dead lock connection: we look dead to the others
            raise
        self.placements = {p.partition: p for p in view.placements}
        if dead:
            _log.warning("nodes found dead", nodes=dead)
        if self._draining:
            return  # leaving: claim nothing more, offer nothing (the runtime hands all over)
        live = len(set(view.live_nodes) | {self.node_id})
        if time.monotonic() - self._joined_at < self.lease_s:
            live = max(live, self.expect_nodes)
        target = math.ceil(self.partitions / live)
        want = max(0, target - len(self._epochs))
        # Only a view with something to claim opens the claim's transaction; what turns
        # claimable after this read is claimed at the next round.
        wanted = view.reserved or (want and view.claimable)
        if wanted and time.monotonic() - self.renew_ok_at < self.lease_s - self.margin_s:
            await self._claim(want)
        self._offer_handover(view, target)

    def _held_or_releasing(self) -> list[int]:
        return sorted(self._epochs.keys() | self._releasing)

    async def _claim(self, want: int) -> None:
        sent = time.monotonic()
        rows = await self.db.run_in_transaction(
            functools.partial(
                lease_sql.claim_partitions,
                node_id=self.node_id,
                url=self.url,
                lease_s=self.lease_s,
                owned=self._held_or_releasing(),
                want=want,
            )
        )
        for row in rows:
            self._epochs[row.partition] = row.epoch
            self._deadlines[row.partition] = sent + self.lease_s - self.margin_s
            self.claims += 1
            self._send_event.send_nowait(
                Claimed(
                    partition=row.partition,
                    epoch=row.epoch,
                    previous_owner=row.previous_owner,
                    previous_epoch=row.previous_epoch,
                    last_seq=row.last_seq,
                    checkpoint=row.checkpoint,
                )
            )
        if rows:
            self._changed()

    def _offer_handover(self, view: lease_sql.ClusterView, target: int) -> None:
        now = time.monotonic()
        if self._handover is not None:
            partition, asked = self._handover
            if partition in self._epochs and now - asked < 3 * self.lease_s:
                return  # one at a time; asked again if the runtime never acted on it
            self._handover = None
        mine = len(self._epochs)
        below = [
            (view.owned_by.get(node, 0), node)
            for node in view.live_nodes
            if node != self.node_id and view.owned_by.get(node, 0) < target
        ]
        held = [p for p in self._epochs if self.holds(p)]  # never offer a lapsed lease
        if not below or not held or mine <= target:
            return
        if mine <= target + self.hysteresis and min(below)[0] >= target - self.hysteresis:
            return  # within the hysteresis band on both sides: not worth a move
        partition = max(held)
        self._handover = (partition, now)
        self._send_event.send_nowait(HandoverWanted(partition=partition, next_owner=min(below)[1]))

    def _lose(self, partition: int, reason: str) -> None:
        epoch = self._epochs.pop(partition)
        self._deadlines.pop(partition, None)
        self.losses += 1
        _log.warning("partition lost", partition=partition, epoch=epoch, reason=reason)
        self._send_event.send_nowait(Lost(partition=partition, epoch=epoch, reason=reason))

    def _changed(self) -> None:
        """The set of partitions changed: publish it to the renewal loop, and log it."""
        owned = sorted(self._epochs)
        self._view = (owned, [self._epochs[p] for p in owned])
        _log.info("partitions owned", node_id=self.node_id, count=len(owned), partitions=owned)

    def _renewed(
        self, sent: float, view: tuple[list[int], list[int]], node_ok: bool, renewed: frozenset[int]
    ) -> None:
        """A renewal's answer, on the trio thread (scheduled by the renewal loop)."""
        if not node_ok:
            self._registered = False  # reaped: another node took us for dead
        deadline = sent + self.lease_s - self.margin_s
        changed = False
        for partition, epoch in zip(*view, strict=True):
            if self._epochs.get(partition) != epoch:
                continue  # released or lost since the renewal was sent
            if partition in renewed:
                self._deadlines[partition] = max(self._deadlines[partition], deadline)
            else:
                self._lose(partition, "claimed_by_another_node")
                changed = True
        if changed:
            self._changed()
        self.renew_ok_at = max(self.renew_ok_at, sent)

    def _renew_failed(self, error: str) -> None:
        self.renew_failures += 1
        _log.warning("lease renewal failed", error=error, failures=self.renew_failures)

    # -- the asyncio side ---------------------------------------------------------------------

    async def _renew_forever(self, token: trio.lowlevel.TrioToken) -> None:
        """The renewal loop, ON THE ASYNCIO LOOP (started through the bridge by :meth:`run`)."""
        conn: asyncpg.Connection | None = None
        try:
            while True:
                started = time.monotonic()
                if started - self._heartbeat_at <= self.loop_stale_s and self._lock_key:
                    view = self._view
                    try:
                        if conn is None or conn.is_closed():
                            conn = await asyncpg.connect(
                                self.db.dsn, timeout=self.connect_timeout_s
                            )
                        node_ok, renewed = await lease_sql.renew(
                            conn,
                            self.node_id,
                            self._lock_key,
                            self.lease_s,
                            view[0],
                            view[1],
                            timeout_s=self._renew_timeout_s,
                        )
                    except Exception as exc:  # any failure: counted, retried next period
                        _call_trio(token, self._renew_failed, repr(exc))
                    else:
                        _call_trio(token, self._renewed, started, view, node_ok, renewed)
                elapsed = time.monotonic() - started
                await asyncio.sleep(max(0.0, self.renew_every_s - elapsed))
        finally:
            if conn is not None:
                conn.terminate()

    # -- the dedicated lock connection ----------------------------------------------------------

    async def _take_lock(self) -> bool:
        conn = await self._bridged(
            functools.partial(asyncpg.connect, self.db.dsn, timeout=self.connect_timeout_s)
        )
        key = await self._bridged(lease_sql.acquire_node_lock, conn, self.node_id)
        if key is None:
            await self._bridged(conn.close)
            return False
        self._lock_conn, self._lock_key = conn, key
        return True

    async def _register(self) -> None:
        assert self._lock_key is not None
        await self.db.run_with_connection(
            functools.partial(
                lease_sql.register_node,
                node_id=self.node_id,
                url=self.url,
                lock_key=self._lock_key,
                lease_s=self.lease_s,
            )
        )
        self._registered = True

    async def _close_lock(self) -> None:
        conn, self._lock_conn = self._lock_conn, None
        if conn is not None and not self.db.bridge.closed:

            async def close() -> None:
                conn.terminate()

            await self.db.bridge.run(close)

    async def _bridged(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(*args)`` on the bridge; "unavailable" raised as StorageError."""
        try:
            return await self.db.bridge.run(fn, *args)
        except StorageError:
            raise
        except Exception as exc:
            if is_unavailable(exc):
                raise StorageError("postgres unavailable", error=repr(exc)) from exc
            raise


def _call_trio(token: trio.lowlevel.TrioToken, fn: Callable[..., object], *args: Any) -> None:
    with contextlib.suppress(trio.RunFinishedError):  # the trio run ended first
        token.run_sync_soon(fn, *args)


async def read_node_url(db: Database, node_id: str) -> str | None:
    """The URL ``node_id`` registered with (None: no such node).

    Raises:
        StorageError: Postgres is unavailable.
    """
    return await db.run_with_connection(functools.partial(lease_sql.node_url, node_id=node_id))

"""The leases' SQL (cluster mode): asyncio-side functions of one asyncpg connection.

They run on the bridge's asyncio loop; :mod:`persistence.leases` is the trio side that decides
when. The tables are ``migrations/0006_cluster.sql``'s. The rules kept here:

* **Postgres's clock only.** Every expiry is ``clock_timestamp() + lease`` computed by the
  statement that writes it, and every "has it expired" compares with ``clock_timestamp()``.
* **Row locks in one order.** Statements that lock several ``partitions`` rows and may wait
  (a renewal, a journal batch's fence) lock them in id order, so two of them never deadlock;
  claims take ``FOR UPDATE SKIP LOCKED`` and never wait at all.
* **A claim reads what it takes over in its own statement** (the previous owner and epoch, the
  journal's ``last_seq`` and the tick ``checkpoint``): a zombie's batch either committed before
  the claim (and the claim sees its ``last_seq``) or comes after it and is fenced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

from protocol.errors import ConfigError

__all__ = [
    "ClaimedRow",
    "ClusterView",
    "Placement",
    "acquire_node_lock",
    "balance_round",
    "claim_partitions",
    "cluster_view",
    "ensure_cluster",
    "node_url",
    "reap_dead_nodes",
    "register_node",
    "release_partition",
    "renew",
]


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    """A partition a claim took: its new epoch and what the previous owner left."""

    partition: int
    epoch: int
    previous_owner: str | None
    previous_epoch: int
    last_seq: int
    checkpoint: dict[str, int]


@dataclass(frozen=True, slots=True)
class Placement:
    """Who owns a partition now, for redirects (owner None: nobody, or a lapsed lease)."""

    partition: int
    owner: str | None
    url: str | None
    epoch: int


@dataclass(frozen=True, slots=True)
class ClusterView:
    """What one balancing round reads, in one statement per table: the live nodes (node row
    not expired), the partitions each holds unexpired, every partition's placement (for
    redirects), and how many this node could claim now."""

    live_nodes: tuple[str, ...]
    owned_by: dict[str, int]
    placements: tuple[Placement, ...]
    reserved: int
    """Partitions a handover reserved for this node (``_RESERVED``)."""
    claimable: int
    """Partitions free for this node (``_CLAIMABLE``), the reserved ones included."""


async def ensure_cluster(conn: asyncpg.Connection, partitions: int) -> int:
    """Create the ``cluster`` row and the partition rows if this is the first node; return the
    partition count the cluster has.

    Raises:
        ConfigError: the cluster has another partition count ("refuses to join").
    """
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO cluster (partitions) VALUES ($1) ON CONFLICT (singleton) DO NOTHING",
            partitions,
        )
        stored = int(await conn.fetchval("SELECT partitions FROM cluster"))
        if stored != partitions:
            raise ConfigError(
                "this node is configured with another partition count than the cluster:"
                " it refuses to join",
                key="partitions",
                configured=partitions,
                cluster=stored,
            )
        await conn.execute(
            "INSERT INTO partitions (id) SELECT generate_series(0, $1 - 1) ON CONFLICT DO NOTHING",
            partitions,
        )
    return stored


async def acquire_node_lock(conn: asyncpg.Connection, node_id: str) -> int | None:
    """On the node's dedicated connection: take its session advisory lock and return its key.

    A node id keeps its key across restarts; a key still held by someone (the same node id
    running elsewhere, alive) gives None. A node id never seen gets a fresh key.
    """
    key = await conn.fetchval("SELECT lock_key FROM cluster_nodes WHERE node_id = $1", node_id)
    if key is None:
        key = await conn.fetchval("SELECT nextval('cluster_lock_keys')")
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
        return None
    return int(key)


async def register_node(
    conn: asyncpg.Connection, node_id: str, url: str, lock_key: int, lease_s: float
) -> None:
    """Insert or refresh this node's row (the caller holds ``lock_key``)."""
    await conn.execute(
        "INSERT INTO cluster_nodes (node_id, url, lock_key, expires_at)"
        " VALUES ($1, $2, $3, clock_timestamp() + make_interval(secs => $4))"
        " ON CONFLICT (node_id) DO UPDATE SET url = excluded.url, lock_key = excluded.lock_key,"
        " started_at = clock_timestamp(), expires_at = excluded.expires_at",
        node_id,
        url,
        lock_key,
        float(lease_s),
    )


async def reap_dead_nodes(conn: asyncpg.Connection, node_id: str) -> list[str]:
    """On the node's dedicated (lock) connection: every other node whose lock is free is dead;
    delete its row (while holding its lock, so it cannot come back half-way), let go of the
    lock, return the ids. Their partitions become claimable at once."""
    dead: list[str] = []
    rows = await conn.fetch(
        "SELECT node_id, lock_key FROM cluster_nodes WHERE node_id <> $1", node_id
    )
    for other, key in rows:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
            continue  # held: its process (its session) is alive
        try:
            await conn.execute(
                "DELETE FROM cluster_nodes WHERE node_id = $1 AND lock_key = $2", other, key
            )
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", key)
        dead.append(other)
    return dead


_RENEW = """
WITH node AS (
    UPDATE cluster_nodes SET expires_at = clock_timestamp() + make_interval(secs => $3)
    WHERE node_id = $1 AND lock_key = $2
    RETURNING 1
), mine AS (
    SELECT p.id FROM partitions p
    JOIN unnest($4::int[], $5::bigint[]) AS o(id, epoch) ON p.id = o.id AND p.epoch = o.epoch
    WHERE p.owner = $1
    ORDER BY p.id
    FOR UPDATE OF p
), renewed AS (
    UPDATE partitions p SET expires_at = clock_timestamp() + make_interval(secs => $3)
    FROM mine WHERE p.id = mine.id
    RETURNING p.id
)
SELECT (SELECT count(*) FROM node) AS node,
       coalesce((SELECT array_agg(id) FROM renewed), '{}'::int[]) AS renewed
"""


async def renew(
    conn: asyncpg.Connection,
    node_id: str,
    lock_key: int,
    lease_s: float,
    partitions: list[int],
    epochs: list[int],
    timeout_s: float,
) -> tuple[bool, frozenset[int]]:
    """One statement: this node's heartbeat and the lease of every partition it holds (at the
    epoch it holds it). Returns whether the node row was still there (False: another node
    found this one dead and removed it) and the partitions renewed: any other is lost."""
    row = await conn.fetchrow(
        _RENEW, node_id, lock_key, float(lease_s), partitions, epochs, timeout=timeout_s
    )
    return bool(row["node"]), frozenset(row["renewed"])


_CLAIMABLE = """
    NOT (id = ANY($2::int[])) AND (
        expires_at IS NULL
        OR expires_at < clock_timestamp()
        OR owner = $1
        OR (owner IS NOT NULL AND owner NOT IN (SELECT node_id FROM cluster_nodes))
    )
"""
"""Free for this node ($1; $2 the partitions it holds): unowned and unreserved, a lapsed lease
or reservation, its own from a previous life (or a claim whose answer it never received), or
held by a node found dead (its row reaped)."""

_RESERVED = (
    "SELECT id, owner, epoch, last_seq, checkpoint FROM partitions"
    " WHERE owner IS NULL AND next_owner = $1 AND NOT (id = ANY($2::int[]))"
    " ORDER BY id FOR UPDATE SKIP LOCKED"
)
_FREE = (
    "SELECT id, owner, epoch, last_seq, checkpoint FROM partitions WHERE"
    + _CLAIMABLE
    + " ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED"
)
_TAKE = """
UPDATE partitions SET owner = $1, url = $2, epoch = epoch + 1, next_owner = NULL,
    expires_at = clock_timestamp() + make_interval(secs => $3)
WHERE id = ANY($4::int[])
RETURNING id, epoch
"""


_VIEW = (
    "SELECT id, owner, url, epoch, (expires_at > clock_timestamp()) AS live,"
    " (owner IS NULL AND next_owner = $1 AND NOT (id = ANY($2::int[]))) AS reserved,"
    " (" + _CLAIMABLE + ") AS claimable"
    " FROM partitions ORDER BY id"
)


async def cluster_view(conn: asyncpg.Connection, node_id: str, owned: list[int]) -> ClusterView:
    """The round's view for ``node_id`` holding ``owned`` (see :class:`ClusterView`)."""
    nodes = await conn.fetch(
        "SELECT node_id FROM cluster_nodes WHERE expires_at > clock_timestamp() ORDER BY node_id"
    )
    rows = await conn.fetch(_VIEW, node_id, owned)
    owned_by: dict[str, int] = {}
    for r in rows:
        if r["owner"] is not None and r["live"]:
            owned_by[r["owner"]] = owned_by.get(r["owner"], 0) + 1
    return ClusterView(
        live_nodes=tuple(r[0] for r in nodes),
        owned_by=owned_by,
        # A lapsed lease reads as unowned: nobody may be sent there.
        placements=tuple(
            Placement(r["id"], r["owner"] if r["live"] else None, r["url"], r["epoch"])
            for r in rows
        ),
        reserved=sum(1 for r in rows if r["reserved"]),
        claimable=sum(1 for r in rows if r["reserved"] or r["claimable"]),
    )


async def balance_round(
    conn: asyncpg.Connection, node_id: str, owned: list[int]
) -> tuple[list[str], ClusterView]:
    """What a balancing round reads, on the node's lock connection in one call over the bridge:
    the dead nodes reaped first (their partitions are then claimable in the view), then the
    view. The claim itself is a transaction of its own, opened only when the view shows
    something to claim: a settled cluster's round is three cheap reads."""
    dead = await reap_dead_nodes(conn, node_id)
    return dead, await cluster_view(conn, node_id, owned)


async def claim_partitions(
    conn: asyncpg.Connection,
    node_id: str,
    url: str,
    lease_s: float,
    owned: list[int],
    want: int,
) -> list[ClaimedRow]:
    """In a transaction: take every partition reserved for this node by a handover, and up to
    ``want`` more that are free (see ``_CLAIMABLE``), bumping each one's epoch. Rows another
    claimer is taking at the same moment are skipped, not waited for."""
    rows = list(await conn.fetch(_RESERVED, node_id, owned))
    if want > len(rows):
        taken = owned + [r["id"] for r in rows]
        rows += await conn.fetch(_FREE, node_id, taken, want - len(rows))
    if not rows:
        return []
    epochs = dict(await conn.fetch(_TAKE, node_id, url, float(lease_s), [r["id"] for r in rows]))
    return [
        ClaimedRow(
            partition=r["id"],
            epoch=int(epochs[r["id"]]),
            previous_owner=r["owner"],
            previous_epoch=int(r["epoch"]),
            last_seq=int(r["last_seq"]),
            checkpoint=_checkpoint(r["checkpoint"]),
        )
        for r in rows
    ]


def _checkpoint(value: Any) -> dict[str, int]:
    """The jsonb column as ``{symbol: seq}`` (decoded by the pool's codec, or text)."""
    if isinstance(value, (str, bytes)):
        value = msgspec.json.decode(value)
    return msgspec.convert(value, dict[str, int])


async def release_partition(
    conn: asyncpg.Connection,
    node_id: str,
    partition: int,
    epoch: int,
    next_owner: str | None,
    lease_s: float,
) -> bool:
    """Give up ``partition`` (held at ``epoch``), reserving it for ``next_owner`` for one lease
    (None: for anyone at once). False: this node no longer held it."""
    status = await conn.execute(
        "UPDATE partitions SET owner = NULL, url = NULL, next_owner = $4,"
        " expires_at = CASE WHEN $4::text IS NULL THEN NULL"
        " ELSE clock_timestamp() + make_interval(secs => $5) END"
        " WHERE id = $2 AND epoch = $3 AND owner = $1",
        node_id,
        partition,
        epoch,
        next_owner,
        float(lease_s),
    )
    return str(status).endswith(" 1")


async def node_url(conn: asyncpg.Connection, node_id: str) -> str | None:
    """The URL a node registered with (None: no such live node)."""
    url = await conn.fetchval("SELECT url FROM cluster_nodes WHERE node_id = $1", node_id)
    return None if url is None else str(url)

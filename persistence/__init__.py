"""Durability: the Postgres journal, snapshots and migrations; Redis for what nodes share.

Everything here waits on something outside the process and holds no business rule. The
public surface:

* :func:`open_bridge` / :class:`Bridge`: the one asyncio loop thread that asyncpg and
  redis-py run on, driven from trio.
* :class:`Database` / :func:`open_database`: an asyncpg pool on the bridge;
  :class:`~protocol.errors.StorageError` whenever Postgres cannot serve.
* :func:`migrate` / :func:`migration_status`: the ordered SQL files of ``migrations/``.
* :class:`JournalWriter`: the write-behind journal with group commit, generic over the record
  type; :class:`JournalReader` reads it back; :class:`SnapshotStore` keeps the snapshots and
  compacts the journal behind them.
* Cluster mode (issue #21): :class:`LeaseManager` (partition leases, crash detection,
  balancing; its events :class:`Claimed`, :class:`Lost`, :class:`HandoverWanted`),
  :class:`PartitionJournalWriter` (the journal fenced per partition by epoch);
  :mod:`persistence.partition_store` reads a partition back and keeps its snapshots (imported
  on its own: it brings the replay's numpy, which a single node's start-up need not load).
* :class:`EmbeddedPostgres` / :func:`resolve_dsn`: a real Postgres from the ``pgserver``
  wheel when ``DATABASE_URL`` is unset.
* :class:`RedisLink`, :class:`RedisNonceCache`, :class:`ReadCache`: Redis,
  optional for one node, degrading (never failing) when it is down.
* :class:`TickAppender`, :class:`StreamReader`, :class:`TickRing`, :class:`TickBarStore`: the
  cluster's tick path (per-symbol streams with contiguous seqs, replays, 1 s bars); a single
  node never builds them.
"""

from __future__ import annotations

from persistence.bridge import Bridge, open_bridge
from persistence.cache import ReadCache
from persistence.db import (
    Database,
    dsn_with_database,
    is_unavailable,
    open_database,
    redact_dsn,
)
from persistence.embedded import DEFAULT_EMBEDDED_DIR, EmbeddedPostgres, resolve_dsn
from persistence.journal_reader import JournalReader
from persistence.journal_writer import JournalWriter
from persistence.leases import Claimed, HandoverWanted, LeaseEvent, LeaseManager, Lost
from persistence.migrator import Migration, MigrationStatus, migrate, migration_status
from persistence.partition_journal import PartitionJournalWriter
from persistence.redis_link import Degradation, RedisLink
from persistence.redis_nonces import NonceCache, RedisNonceCache
from persistence.snapshot_store import SnapshotStore
from persistence.tick_bars import TickBar, TickBarStore
from persistence.tick_reader import ReaderStats, StreamReader, TickRing
from persistence.tick_streams import AppenderStats, Replayed, Stamped, TickAppender

__all__ = [
    "DEFAULT_EMBEDDED_DIR",
    "AppenderStats",
    "Bridge",
    "Claimed",
    "Database",
    "Degradation",
    "EmbeddedPostgres",
    "HandoverWanted",
    "JournalReader",
    "JournalWriter",
    "LeaseEvent",
    "LeaseManager",
    "Lost",
    "Migration",
    "MigrationStatus",
    "NonceCache",
    "PartitionJournalWriter",
    "ReadCache",
    "ReaderStats",
    "RedisLink",
    "RedisNonceCache",
    "Replayed",
    "SnapshotStore",
    "Stamped",
    "StreamReader",
    "TickAppender",
    "TickBar",
    "TickBarStore",
    "TickRing",
    "dsn_with_database",
    "is_unavailable",
    "migrate",
    "migration_status",
    "open_bridge",
    "open_database",
    "redact_dsn",
    "resolve_dsn",
]

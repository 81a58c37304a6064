-- Scale-out (issue #21): partition leases, node liveness, and the fenced per-partition journal.
--
-- Only a node running in cluster mode touches these tables; the single-node engine keeps its
-- `journal` and `snapshots`. Every time here that decides ownership is Postgres's own
-- (clock_timestamp() at the statement), never a node's clock: nodes disagree about wall time,
-- they agree on the server's. The rules live in persistence/leases.py (leases, claims,
-- balancing) and persistence/partition_journal.py (the fence).

-- One row: the partition count every node must be configured with. The first node to join
-- writes it; a node configured with another count refuses to join (users would map to other
-- partitions on it, and two nodes would both believe they own one user).
CREATE TABLE cluster (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    partitions integer NOT NULL CHECK (partitions > 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Where session advisory lock keys of nodes come from: one key per node id, kept across its
-- restarts (a restarted node takes its old key again once the dead process let go of it).
-- The migrator's own key is far above anything this sequence will reach.
CREATE SEQUENCE cluster_lock_keys;

-- The nodes that joined. A node holds the session advisory lock `lock_key` on a dedicated
-- connection for as long as it lives: when its process dies (kill -9 included), Postgres drops
-- the connection and the lock with it, and a survivor's pg_try_advisory_lock(lock_key) then
-- succeeds: proof that the node is dead, without waiting for a lease to run out. `expires_at`
-- is the node's own heartbeat lease: a hung node (lock still held) stops counting as live
-- once it passes, which is what the balancing target ceil(partitions / live nodes) counts.
CREATE TABLE cluster_nodes (
    node_id    text PRIMARY KEY,
    url        text NOT NULL,
    lock_key   bigint NOT NULL UNIQUE,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at timestamptz NOT NULL
);

-- One row per partition: its lease and its fence.
--   owner/url/expires_at: who holds the lease, where to redirect its users, until when.
--   epoch: bumped by every claim. Every write a node makes for a partition (journal batch,
--     snapshot, compaction) is conditional on the epoch it claimed at: a node that lost the
--     partition (a zombie) writes zero rows and stops (it is "fenced").
--   next_owner: set by a handover: the released partition is reserved for that node until
--     `expires_at` (others may claim it after that, in case the receiver died meanwhile).
--   last_seq/checkpoint: written in every journal batch's transaction under the fence, so
--     a claimer learns, in the claim's own statement, where the journal and the tick streams
--     stood when the previous owner last committed ({symbol: stream seq processed}).
CREATE TABLE partitions (
    id         integer PRIMARY KEY CHECK (id >= 0),
    owner      text,
    epoch      bigint NOT NULL DEFAULT 0,
    url        text,
    expires_at timestamptz,
    next_owner text,
    last_seq   bigint NOT NULL DEFAULT 0,
    checkpoint jsonb NOT NULL DEFAULT '{}'::jsonb
);

-- The cluster journal: per partition, contiguous non-overlapping seq ranges, one row per
-- partition per group-commit batch. A row is identified by (partition, first_seq), so a
-- retried batch that had committed is recognised and not written twice. `epoch` says which
-- owner wrote it (diagnostics: a fenced writer never gets a row in). Recovery of a partition
-- reads the rows after its newest snapshot: the primary key serves it.
CREATE TABLE partition_journal (
    partition    integer NOT NULL REFERENCES partitions (id),
    first_seq    bigint NOT NULL,
    last_seq     bigint NOT NULL,
    epoch        bigint NOT NULL,
    record_count integer NOT NULL,
    records      bytea NOT NULL,      -- one msgpack list, as the single-node journal's
    record_index bytea,               -- its replay index (engine.journal_index), or NULL
    written_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partition, first_seq),
    CHECK (last_seq >= first_seq AND record_count = last_seq - first_seq + 1)
);

-- A partition's snapshots: the state of its users after partition seq `seq` (zstd, as
-- persistence.snapshot_codec stores the single-node ones). Written and compacted under the
-- same fence as the journal.
CREATE TABLE partition_snapshots (
    partition integer NOT NULL REFERENCES partitions (id),
    seq       bigint NOT NULL,
    epoch     bigint NOT NULL,
    payload   bytea NOT NULL,
    taken_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partition, seq)
);

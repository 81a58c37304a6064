-- Snapshots written in parts, each part its own small transaction.
--
-- A snapshot of 100,000 positions is ~1.2 MB compressed. Inserted as one value, its WAL
-- (~1.3 MB) sits unflushed until its commit, and any other commit meanwhile (the engine's
-- journal commits every few milliseconds) must write and flush all of it first: at normal CPU
-- priority, in the engine's journal backend or the WAL writer, instead of in the snapshotter's
-- idle-priority backend. Written as parts of a few kB that each commit, the snapshot's WAL is
-- flushed by its own backend as it goes (bench.persistence, snapshot_p99_ratio).
--
-- A snapshot written in parts has ``parts`` > 0 and an empty ``payload``; it counts only once
-- ``complete`` (set in the transaction that checks every part is there). ``attempt`` (random,
-- per write) keeps the parts of two writers of the same seq apart: only the parts of the
-- attempt the row names are ever read or counted. A snapshot written whole, as every snapshot
-- before this migration, has ``parts`` = 0 and is complete.
ALTER TABLE snapshots
    ADD COLUMN parts    integer NOT NULL DEFAULT 0 CHECK (parts >= 0),
    ADD COLUMN complete boolean NOT NULL DEFAULT true,
    ADD COLUMN attempt  bigint  NOT NULL DEFAULT 0;

CREATE TABLE snapshot_parts (
    seq     bigint  NOT NULL REFERENCES snapshots (seq) ON DELETE CASCADE,
    attempt bigint  NOT NULL,
    part    integer NOT NULL CHECK (part >= 0),
    data    bytea   NOT NULL,
    PRIMARY KEY (seq, attempt, part)
);

-- Parts are slices of a zstd frame: Postgres's own TOAST compression would only try and fail.
ALTER TABLE snapshot_parts ALTER COLUMN data SET STORAGE EXTERNAL;
ALTER TABLE snapshots ALTER COLUMN payload SET STORAGE EXTERNAL;

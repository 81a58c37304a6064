-- Each journal batch may carry a replay index beside its records (engine.journal_index): the
-- kind of each record, a key of its position's id and its byte offset. Recovery groups a
-- million records by position with it, in numpy, and decodes only the ones it keeps, instead
-- of decoding and looking up every record (bench.persistence, recovery_s).
--
-- NULL for the batches written before it (and by writers that do not index): those are
-- folded record by record, as before. The keys are hashes, which do not compress: Postgres's
-- TOAST compression would only try and fail.
ALTER TABLE journal ADD COLUMN record_index bytea;
ALTER TABLE journal ALTER COLUMN record_index SET STORAGE EXTERNAL;

-- The records themselves are stored uncompressed too: recovery reads the whole journal after
-- the snapshot, and Postgres decompressing it (pglz) was a third of that read. The journal is
-- compacted after every snapshot, so the bytes saved were few and short-lived.
ALTER TABLE journal ALTER COLUMN records SET STORAGE EXTERNAL;

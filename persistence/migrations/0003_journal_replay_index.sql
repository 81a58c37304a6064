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

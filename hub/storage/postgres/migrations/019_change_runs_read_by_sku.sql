-- shelfsync hub, PostgreSQL schema version 19: a SKU's changes read from the change feed's runs (schema 17) at
-- about the cost of a row per change, and the GIN index of their SKUs merged outside the feed's counter row
-- (hub.storage.postgres.feed).
--
-- A run's arrays (~430 changes of a batch) were compressed and moved to the TOAST table, so a SKU's read took each of
-- six arrays from there (12 buffers) for one change; kept compressed in the run's row (toast_tuple_target: a batch's
-- run fits a page) and by lz4 where the server has it, they are read from the row and unpacked 2-4 times faster.
-- The event ids (random, never smaller compressed) go to the TOAST table uncompressed, so a slice of them is read
-- alone. Runs written before keep their form.
ALTER TABLE change_runs SET (toast_tuple_target = 8160);
ALTER TABLE change_runs ALTER COLUMN event_ids SET STORAGE EXTERNAL;
DO $$
BEGIN
    IF 'lz4' = ANY ((SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression')::text[]) THEN
        ALTER TABLE change_runs ALTER COLUMN skus SET COMPRESSION lz4, ALTER COLUMN on_hand SET COMPRESSION lz4,
            ALTER COLUMN reserved SET COMPRESSION lz4, ALTER COLUMN available SET COMPRESSION lz4,
            ALTER COLUMN in_transit SET COMPRESSION lz4, ALTER COLUMN id_ends SET COMPRESSION lz4;
    END IF;
END
$$;
-- The GIN index's pending list (new runs' SKUs not yet in the index), merged into it: called by the statement that
-- appends changes before it takes the counter row, every so many changes. Nothing to merge, no right to (the
-- index belongs to another role) or no such index is 0, never an ingest's error: the insert that finds the list
-- too long merges it then, as before.
CREATE FUNCTION change_runs_skus_merge() RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    RETURN gin_clean_pending_list('change_runs_skus'::regclass);
EXCEPTION WHEN insufficient_privilege OR undefined_table THEN
    RETURN 0;
END
$$;
-- 017 made the runs without statistics: PostgreSQL then reads every run for a SKU the feed does not hold.
ANALYZE change_runs;

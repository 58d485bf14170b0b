-- shelfsync hub, PostgreSQL schema version 8: the bundles' version, one row of meta, so that GET /v1/bundles
-- answers an unchanged list's 304 from that row alone (its ETag, hub.bundles) instead of reading every bundle.
--
-- Triggers raise it in the transaction of every change to the recipes or their flattened parts: every writer
-- does — a hub of the version before this one too, while an upgrade is under way (docs/scaling.md), which
-- still sets recipes — and no code path can forget it. Setting a recipe holds the recipes' lock alone
-- (hub.storage.postgres.ingest), so the row is raised by one transaction at a time.
INSERT INTO meta (key, value) VALUES ('bundles_version', '0') ON CONFLICT (key) DO NOTHING;

-- The meta row of the changed table's own schema, whatever the writing session's search_path (an operator's psql).
CREATE FUNCTION bundles_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('UPDATE %I.meta SET value = (value::bigint + 1)::text WHERE key = %L',
                   TG_TABLE_SCHEMA, 'bundles_version');
    RETURN NULL;
END
$$;

CREATE TRIGGER bundle_recipes_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON bundle_recipes
    FOR EACH STATEMENT EXECUTE FUNCTION bundles_changed();
CREATE TRIGGER bundle_parts_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON bundle_parts
    FOR EACH STATEMENT EXECUTE FUNCTION bundles_changed();

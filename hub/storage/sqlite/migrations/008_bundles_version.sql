-- shelfsync hub, SQLite schema version 8: the bundles' version, one row of meta, so that GET /v1/bundles
-- answers an unchanged list's 304 from that row alone (its ETag, hub.bundles) instead of reading every bundle.
--
-- Triggers raise it in the transaction of every change to the recipes or their flattened parts, as on
-- PostgreSQL (where hubs of two versions may share a database during an upgrade): no code path can forget it.
INSERT OR IGNORE INTO meta (key, value) VALUES ('bundles_version', '0');

CREATE TRIGGER bundle_recipes_inserted AFTER INSERT ON bundle_recipes BEGIN
    UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'bundles_version';
END;
CREATE TRIGGER bundle_recipes_updated AFTER UPDATE ON bundle_recipes BEGIN
    UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'bundles_version';
END;
CREATE TRIGGER bundle_recipes_deleted AFTER DELETE ON bundle_recipes BEGIN
    UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'bundles_version';
END;
CREATE TRIGGER bundle_parts_inserted AFTER INSERT ON bundle_parts BEGIN
    UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'bundles_version';
END;
CREATE TRIGGER bundle_parts_updated AFTER UPDATE ON bundle_parts BEGIN
    UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'bundles_version';
END;
CREATE TRIGGER bundle_parts_deleted AFTER DELETE ON bundle_parts BEGIN
    UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'bundles_version';
END;

-- shelfsync hub, SQLite schema version 3: each agent's own report of its
-- backlog, written in the ingest transaction of the sync request that carried it.
-- NULL: never reported (an agent from before the report, or never synced).

ALTER TABLE agents ADD COLUMN backlog INTEGER;            -- events in its outbox not yet acknowledged, as reported
ALTER TABLE agents ADD COLUMN oldest_pending_ms INTEGER;  -- wall ms of the oldest of them (NULL when the backlog is empty)
ALTER TABLE agents ADD COLUMN backlog_at_ms INTEGER;      -- hub wall ms when the report arrived

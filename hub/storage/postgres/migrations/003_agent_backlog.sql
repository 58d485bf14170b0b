-- shelfsync hub, PostgreSQL schema version 3: each agent's own report of its
-- backlog (the columns of schema_sqlite_v3.sql), written in the ingest
-- transaction of the sync request that carried it.
-- NULL: never reported (an agent from before the report, or never synced).

ALTER TABLE agents
    ADD COLUMN backlog bigint,              -- events in its outbox not yet acknowledged, as reported
    ADD COLUMN oldest_pending_ms bigint,    -- wall ms of the oldest of them (NULL when the backlog is empty)
    ADD COLUMN backlog_at_ms bigint;        -- hub wall ms when the report arrived

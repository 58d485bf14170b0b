-- shelfsync hub, PostgreSQL schema version 21: each store agent's own report of the disk its outbox is on (the
-- columns of the SQLite schema's 021_agent_disk.sql), written in the ingest transaction of the sync request that
-- carried it. NULL: never reported (an agent from before the report, or never synced).

ALTER TABLE agents
    ADD COLUMN disk_state text,         -- ok, reserve_in_use or full (protocol.DiskReport.state)
    ADD COLUMN disk_since_ms bigint,    -- hub wall ms of the first report of that state
    ADD COLUMN disk_at_ms bigint,       -- hub wall ms when the newest report arrived
    ADD COLUMN disk text;               -- that report, JSON (reserve_bytes, reserve_held_bytes, …)

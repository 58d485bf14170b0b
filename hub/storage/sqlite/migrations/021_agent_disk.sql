-- shelfsync hub, SQLite schema version 21: each store agent's own report of the disk its outbox is on (its disk
-- reserve, the free bytes, a write the full disk refused: protocol.DiskReport), written in the ingest transaction
-- of the sync request that carried it. The agents whose disk is full or whose reserve is in use are an exception
-- (hub.storage.exceptions.AGENT_DISK) until a report says there is room again. A few hundred rows, read whole.
-- NULL: never reported (an agent from before the report, or never synced).
ALTER TABLE agents ADD COLUMN disk_state TEXT;        -- ok, reserve_in_use or full (protocol.DiskReport.state)
ALTER TABLE agents ADD COLUMN disk_since_ms INTEGER;  -- hub wall ms of the first report of that state
ALTER TABLE agents ADD COLUMN disk_at_ms INTEGER;     -- hub wall ms when the newest report arrived
ALTER TABLE agents ADD COLUMN disk TEXT;              -- that report, JSON (reserve_bytes, reserve_held_bytes, …)

-- shelfsync hub, SQLite schema version 13: two copies of one agent sending at once (a cloned PC, an old disk image
-- started beside the running one). Each copy forks to an epoch of its own, so the hub sees it as two epochs of one
-- agent that both go on syncing; the exceptions list names them (agent_copies, hub.storage.exceptions). Each
-- epoch's mark now keeps when the hub first heard it, the sync before its last one (updated_ms is the last), and
-- the address its last sync came from. An epoch's rows from before keep their last sync as the first one known.
-- A hub of version 12 sharing the database during an upgrade leaves the new columns as they are: an epoch it
-- creates has no first_ms and is never listed as a copy.
ALTER TABLE agent_hwm ADD COLUMN first_ms INTEGER;  -- when the hub first heard this epoch
ALTER TABLE agent_hwm ADD COLUMN prev_ms INTEGER;   -- the sync before the last one (updated_ms) in this epoch
ALTER TABLE agent_hwm ADD COLUMN peer TEXT;         -- the address the last sync in this epoch came from
UPDATE agent_hwm SET first_ms = updated_ms;

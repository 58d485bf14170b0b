-- shelfsync hub, SQLite schema version 5: events held back for a clock outside the window (quarantine),
-- and closed transfers (see hub/clock_window.py, hub/resolver.py and docs/faults.md).

-- Events whose stamp was outside the clock window at receipt: neither applied nor refused, held for an
-- operator (apply_at_receipt: ingested re-stamped at received_at_ms; discard: kept as a rejection).
CREATE TABLE quarantine (
    quarantine_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id       BLOB NOT NULL,
    agent_id       TEXT NOT NULL,
    epoch          INTEGER NOT NULL,
    seq            INTEGER NOT NULL,
    location       TEXT NOT NULL,
    sku            TEXT NOT NULL,
    kind           TEXT NOT NULL,
    qty            INTEGER NOT NULL,
    occurred_at    INTEGER NOT NULL,        -- the original stamp (packed HLC)
    wall_ms        INTEGER NOT NULL,
    source         TEXT NOT NULL,
    ref            TEXT,
    reason         TEXT,
    attrs          TEXT,
    detail         TEXT NOT NULL,           -- why it was held, as answered to the sender
    attempts       INTEGER NOT NULL DEFAULT 1,
    received_at_ms INTEGER NOT NULL,        -- the hub's clock at the first receipt
    status         TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'applied', 'discarded')),
    resolved_by    TEXT,                    -- the operator's credential id
    resolved_at_ms INTEGER,
    UNIQUE (agent_id, event_id)
);
CREATE INDEX quarantine_pending ON quarantine (received_at_ms) WHERE status = 'pending';

-- A transfer is open since its first shipment (wall ms) and closed by its first final receipt (packed HLC).
ALTER TABLE transfers ADD COLUMN shipped_at_ms INTEGER;
ALTER TABLE transfers ADD COLUMN closed_at INTEGER;
UPDATE transfers SET shipped_at_ms = (
    SELECT MIN(e.wall_ms) FROM events e WHERE e.ref = transfers.ref AND e.sku = transfers.sku AND e.kind = 'transfer_out'
);
CREATE INDEX transfers_open ON transfers (shipped_at_ms) WHERE closed_at IS NULL AND shipped > received;
CREATE INDEX transfers_closed_short ON transfers (closed_at) WHERE closed_at IS NOT NULL AND shipped > received;

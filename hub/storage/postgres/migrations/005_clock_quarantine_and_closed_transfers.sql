-- shelfsync hub, schema version 5: events held back for a clock outside the window (quarantine),
-- and closed transfers (see hub/clock_window.py, hub/resolver.py and docs/faults.md).

-- Events whose stamp was outside the clock window at receipt: neither applied nor refused, held for an
-- operator (apply_at_receipt: ingested re-stamped at received_at_ms; discard: kept as a rejection).
CREATE TABLE quarantine (
    quarantine_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id       bytea NOT NULL,
    agent_id       text COLLATE "C" NOT NULL,
    epoch          bigint NOT NULL,
    seq            bigint NOT NULL,
    location       text COLLATE "C" NOT NULL,
    sku            text COLLATE "C" NOT NULL,
    kind           text COLLATE "C" NOT NULL,
    qty            bigint NOT NULL,
    occurred_at    bigint NOT NULL,         -- the original stamp (packed HLC)
    wall_ms        bigint NOT NULL,
    source         text NOT NULL,
    ref            text COLLATE "C",
    reason         text,
    attrs          text,
    detail         text NOT NULL,           -- why it was held, as answered to the sender
    attempts       bigint NOT NULL DEFAULT 1,
    received_at_ms bigint NOT NULL,         -- the hub's clock at the first receipt
    status         text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'applied', 'discarded')),
    resolved_by    text,                    -- the operator's credential id
    resolved_at_ms bigint,
    UNIQUE (agent_id, event_id)
);
CREATE INDEX quarantine_pending ON quarantine (received_at_ms) WHERE status = 'pending';

-- A transfer is open since its first shipment (wall ms) and closed by its first final receipt (packed HLC).
ALTER TABLE transfers ADD COLUMN shipped_at_ms bigint;
ALTER TABLE transfers ADD COLUMN closed_at bigint;
UPDATE transfers t SET shipped_at_ms = (
    SELECT MIN(e.wall_ms) FROM events e WHERE e.ref = t.ref AND e.sku = t.sku AND e.kind = 'transfer_out'
);
CREATE INDEX transfers_open ON transfers (shipped_at_ms) WHERE closed_at IS NULL AND shipped > received;
CREATE INDEX transfers_closed_short ON transfers (closed_at) WHERE closed_at IS NOT NULL AND shipped > received;

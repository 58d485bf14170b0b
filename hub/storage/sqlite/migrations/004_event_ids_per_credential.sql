-- shelfsync hub, schema version 4: event ids namespaced by the credential that sent them,
-- and each agent epoch's lineage (see hub/storage/ingest.py).
--
-- An event is identified by (agent_id, event_id): one credential can no longer send an id
-- another will use and have the later event refused. SQLite cannot change a primary key in
-- place, so events and rejections are rebuilt (same columns, same indexes).

CREATE TABLE events_v4 (
    event_id       BLOB NOT NULL,           -- 16-byte UUID; unique per agent_id (the sending credential)
    agent_id       TEXT NOT NULL,
    epoch          INTEGER NOT NULL,        -- of the first delivery; a resend under another epoch/seq is a duplicate
    seq            INTEGER NOT NULL,
    location       TEXT NOT NULL,
    sku            TEXT NOT NULL,
    kind           TEXT NOT NULL,
    qty            INTEGER NOT NULL,
    occurred_at    INTEGER NOT NULL,        -- packed HLC
    wall_ms        INTEGER NOT NULL,
    source         TEXT NOT NULL,
    ref            TEXT,
    reason         TEXT,
    attrs          TEXT,                    -- JSON object; NULL when empty
    effect         TEXT NOT NULL,
    variance       INTEGER,                 -- counts only: counted − expected
    duplicates     INTEGER NOT NULL DEFAULT 0,
    received_at_ms INTEGER NOT NULL,
    PRIMARY KEY (agent_id, event_id)
) WITHOUT ROWID;
INSERT INTO events_v4 (
    event_id, agent_id, epoch, seq, location, sku, kind, qty, occurred_at, wall_ms, source, ref, reason, attrs,
    effect, variance, duplicates, received_at_ms
)
SELECT event_id, agent_id, epoch, seq, location, sku, kind, qty, occurred_at, wall_ms, source, ref, reason, attrs,
       effect, variance, duplicates, received_at_ms
FROM events;
DROP TABLE events;
ALTER TABLE events_v4 RENAME TO events;
CREATE INDEX events_order ON events (location, sku, occurred_at, agent_id, seq);
CREATE INDEX events_counts ON events (location, sku, occurred_at, agent_id, seq) WHERE kind = 'count';
CREATE INDEX events_time ON events (occurred_at, agent_id, seq);
CREATE INDEX events_ref ON events (ref) WHERE ref IS NOT NULL;

CREATE TABLE rejections_v4 (
    event_id       BLOB NOT NULL,
    agent_id       TEXT NOT NULL,
    epoch          INTEGER NOT NULL,
    seq            INTEGER NOT NULL,
    location       TEXT NOT NULL,
    sku            TEXT NOT NULL,
    kind           TEXT NOT NULL,
    qty            INTEGER NOT NULL,
    occurred_at    INTEGER NOT NULL,
    wall_ms        INTEGER NOT NULL,
    source         TEXT NOT NULL,
    ref            TEXT,
    reason         TEXT,
    attrs          TEXT,
    content_hash   BLOB NOT NULL,           -- StockEvent.content_hash: one row per distinct attempt
    code           TEXT NOT NULL,           -- "forbidden_location", "conflict", "invalid"
    detail         TEXT NOT NULL,           -- one sentence
    attempts       INTEGER NOT NULL DEFAULT 1,
    received_at_ms INTEGER NOT NULL,
    PRIMARY KEY (agent_id, event_id, content_hash)
) WITHOUT ROWID;
INSERT INTO rejections_v4 (
    event_id, agent_id, epoch, seq, location, sku, kind, qty, occurred_at, wall_ms, source, ref, reason, attrs,
    content_hash, code, detail, attempts, received_at_ms
)
SELECT event_id, agent_id, epoch, seq, location, sku, kind, qty, occurred_at, wall_ms, source, ref, reason, attrs,
       content_hash, code, detail, attempts, received_at_ms
FROM rejections;
DROP TABLE rejections;
ALTER TABLE rejections_v4 RENAME TO rejections;
CREATE INDEX rejections_time ON rejections (received_at_ms);

-- The sender's lineage digest at each mark (protocol.SyncRequest.chain); NULL: unknown (a mark
-- stored before version 4, or raised by a sender that does not report one).
ALTER TABLE agent_hwm ADD COLUMN chain BLOB;

-- shelfsync hub, SQLite schema version 1 (PRAGMA user_version = 1).
--
-- An order key is the 4 columns (occurred_at, agent_id, seq, event_id): the
-- total order of hub.resolver. Every range query on it is a row-value
-- comparison on an index that starts with (location, sku). Text compares as
-- bytes (BINARY collation); a PostgreSQL mirror must use COLLATE "C".

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE agents (
    agent_id      TEXT PRIMARY KEY,
    token_sha256  TEXT NOT NULL,            -- hex SHA-256 of the bearer token; the token is never stored
    role          TEXT NOT NULL CHECK (role IN ('agent', 'reader', 'admin')),
    locations     TEXT NOT NULL,            -- JSON array of location codes
    created_ms    INTEGER NOT NULL,
    revoked_ms    INTEGER,
    last_sync_ms  INTEGER,
    clock_skew_ms INTEGER                   -- hub wall clock − newest event wall clock of the last batch
) WITHOUT ROWID;

CREATE TABLE agent_hwm (
    agent_id   TEXT NOT NULL,
    epoch      INTEGER NOT NULL,
    hwm        INTEGER NOT NULL,            -- highest seq of (agent_id, epoch) committed, rejected ones included
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (agent_id, epoch)
) WITHOUT ROWID;

-- Every accepted event, once. effect is 'applied' or 'superseded'.
CREATE TABLE events (
    event_id       BLOB PRIMARY KEY,        -- 16-byte UUID, the global dedupe key; a resend must match every column
    agent_id       TEXT NOT NULL,
    epoch          INTEGER NOT NULL,
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
    received_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX events_order ON events (location, sku, occurred_at, agent_id, seq);
CREATE INDEX events_counts ON events (location, sku, occurred_at, agent_id, seq) WHERE kind = 'count';
CREATE INDEX events_time ON events (occurred_at, agent_id, seq);
CREATE INDEX events_ref ON events (ref) WHERE ref IS NOT NULL;

-- Refused attempts: kept for the ledger and the exceptions list, never counted.
CREATE TABLE rejections (
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
    PRIMARY KEY (event_id, content_hash)
) WITHOUT ROWID;
CREATE INDEX rejections_time ON rejections (received_at_ms);

-- The resolved state per (location, sku), kept incrementally by ingest.
CREATE TABLE stock (
    location         TEXT NOT NULL,
    sku              TEXT NOT NULL,
    on_hand          INTEGER NOT NULL,
    reserved         INTEGER NOT NULL,
    in_transit       INTEGER NOT NULL,
    safety_stock     INTEGER NOT NULL,
    last_count_at    INTEGER,               -- order key of the last count
    last_count_agent TEXT,
    last_count_seq   INTEGER,
    last_count_id    BLOB,
    max_at           INTEGER,               -- order key of the newest delta or count stored:
    max_agent        TEXT,                  -- events ordered after it arrive "in order"
    max_seq          INTEGER,
    max_id           BLOB,
    updated_at_ms    INTEGER NOT NULL,
    PRIMARY KEY (location, sku)
) WITHOUT ROWID;
CREATE INDEX stock_negative ON stock (location) WHERE on_hand < 0;

CREATE TABLE reservations (
    location      TEXT NOT NULL,
    sku           TEXT NOT NULL,
    ref           TEXT NOT NULL,            -- '' for reserve/release without a ref
    reserved      INTEGER NOT NULL,         -- Σ reserve + Σ release
    consumed      INTEGER NOT NULL,         -- Σ |sale| carrying this ref
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (location, sku, ref)
) WITHOUT ROWID;

CREATE TABLE transfers (
    ref           TEXT NOT NULL,
    sku           TEXT NOT NULL,
    shipped       INTEGER NOT NULL,
    received      INTEGER NOT NULL,
    out_from      TEXT,
    out_to        TEXT,
    in_to         TEXT,
    in_from       TEXT,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (ref, sku)
) WITHOUT ROWID;
CREATE INDEX transfers_exceptions ON transfers (updated_at_ms) WHERE received > 0 AND received <> shipped;

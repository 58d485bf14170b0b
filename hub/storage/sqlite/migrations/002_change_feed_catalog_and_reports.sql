-- shelfsync hub, SQLite schema version 2: the change feed, webhook state,
-- the barcode catalog, observations of other systems and import issues.
-- Plain tables and indexes that a PostgreSQL mirror copies one to one
-- (INTEGER PRIMARY KEY AUTOINCREMENT there: BIGINT identity / a sequence).

-- One row per committed change of a (location, sku)'s counts, appended in the
-- transaction that made it. AUTOINCREMENT: ids follow commit order (one
-- writer) and are never reused, even after the newest rows are deleted.
CREATE TABLE changes (
    change_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    location   TEXT NOT NULL,
    sku        TEXT NOT NULL,
    on_hand    INTEGER NOT NULL,
    reserved   INTEGER NOT NULL,
    available  INTEGER NOT NULL,
    in_transit INTEGER NOT NULL,
    event_ids  BLOB NOT NULL,               -- the causing events' 16-byte ids, concatenated (at most 16)
    at_ms      INTEGER NOT NULL
);
CREATE INDEX changes_location ON changes (location, change_id);
CREATE INDEX changes_sku ON changes (sku, change_id);

CREATE TABLE webhooks (
    name       TEXT PRIMARY KEY,
    cursor     INTEGER NOT NULL,            -- the last change_id delivered
    last_error TEXT,
    attempts   INTEGER NOT NULL,            -- failures since the last success
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE webhook_deliveries (
    delivery_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT NOT NULL,
    first_change INTEGER NOT NULL,
    last_change  INTEGER NOT NULL,
    status       TEXT NOT NULL,
    http_status  INTEGER,
    error        TEXT,
    at_ms        INTEGER NOT NULL
);
CREATE INDEX webhook_deliveries_name ON webhook_deliveries (name, delivery_id);

-- The barcode catalog; its version is meta 'catalog_version'.
CREATE TABLE catalog (
    barcode     TEXT PRIMARY KEY,
    sku         TEXT NOT NULL,
    pack_size   INTEGER NOT NULL CHECK (pack_size >= 1),
    description TEXT NOT NULL,
    unknown_sku TEXT NOT NULL,              -- protocol.catalog.unknown_sku(barcode): the key agents book it under unknown
    updated_ms  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX catalog_unknown ON catalog (unknown_sku);

-- Another system's on-hand belief (a POS or shop export); never a movement.
CREATE TABLE observations (
    agent_id       TEXT NOT NULL,
    obs_id         TEXT NOT NULL,
    location       TEXT NOT NULL,
    sku            TEXT NOT NULL,
    system         TEXT NOT NULL,
    on_hand        INTEGER NOT NULL,
    observed_at_ms INTEGER NOT NULL,
    source_file    TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL,
    PRIMARY KEY (agent_id, obs_id)
) WITHOUT ROWID;
CREATE INDEX observations_latest ON observations (system, location, sku, observed_at_ms);

-- Rows of POS exports the agents quarantined.
CREATE TABLE import_issues (
    agent_id       TEXT NOT NULL,
    issue_id       TEXT NOT NULL,
    location       TEXT NOT NULL,
    file           TEXT NOT NULL,
    line           INTEGER NOT NULL,
    reason         TEXT NOT NULL,
    raw            TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL,
    PRIMARY KEY (agent_id, issue_id)
) WITHOUT ROWID;
CREATE INDEX import_issues_time ON import_issues (received_at_ms);

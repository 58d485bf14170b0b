-- shelfsync hub, PostgreSQL schema version 2: the change feed, webhook state,
-- the barcode catalog, observations of other systems and import issues
-- (the tables of schema_sqlite_v2.sql, text COLLATE "C" as in version 1).

-- The change feed's id counter: one row. Ingest takes its row lock as the last
-- statement before COMMIT (UPDATE … RETURNING), so ids follow commit order
-- across every hub and a reader never sees change N+1 before change N.
CREATE TABLE change_counter (
    one     boolean PRIMARY KEY DEFAULT true CHECK (one),
    last_id bigint NOT NULL                 -- the newest change_id committed
);
INSERT INTO change_counter (one, last_id) VALUES (true, 0);

-- One row per committed change of a (location, sku)'s counts, appended in the
-- transaction that made it.
CREATE TABLE changes (
    change_id  bigint PRIMARY KEY,
    location   text COLLATE "C" NOT NULL,
    sku        text COLLATE "C" NOT NULL,
    on_hand    bigint NOT NULL,
    reserved   bigint NOT NULL,
    available  bigint NOT NULL,
    in_transit bigint NOT NULL,
    event_ids  bytea NOT NULL,              -- the causing events' 16-byte ids, concatenated (at most 16)
    at_ms      bigint NOT NULL
);
CREATE INDEX changes_location ON changes (location, change_id);
CREATE INDEX changes_sku ON changes (sku, change_id);

CREATE TABLE webhooks (
    name       text COLLATE "C" PRIMARY KEY,
    cursor     bigint NOT NULL,             -- the last change_id delivered
    last_error text,
    attempts   bigint NOT NULL,             -- failures since the last success
    updated_ms bigint NOT NULL
);

CREATE TABLE webhook_deliveries (
    delivery_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text COLLATE "C" NOT NULL,
    first_change bigint NOT NULL,
    last_change  bigint NOT NULL,
    status       text NOT NULL,
    http_status  integer,
    error        text,
    at_ms        bigint NOT NULL
);
CREATE INDEX webhook_deliveries_name ON webhook_deliveries (name, delivery_id);

-- The barcode catalog; its version is meta 'catalog_version'.
CREATE TABLE catalog (
    barcode     text COLLATE "C" PRIMARY KEY,
    sku         text COLLATE "C" NOT NULL,
    pack_size   bigint NOT NULL CHECK (pack_size >= 1),
    description text NOT NULL,
    unknown_sku text COLLATE "C" NOT NULL,  -- protocol.catalog.unknown_sku(barcode): the key agents book it under unknown
    updated_ms  bigint NOT NULL
);
CREATE INDEX catalog_unknown ON catalog (unknown_sku);

-- Another system's on-hand belief (a POS or shop export); never a movement.
CREATE TABLE observations (
    agent_id       text COLLATE "C" NOT NULL,
    obs_id         text COLLATE "C" NOT NULL,
    location       text COLLATE "C" NOT NULL,
    sku            text COLLATE "C" NOT NULL,
    system         text COLLATE "C" NOT NULL,
    on_hand        bigint NOT NULL,
    observed_at_ms bigint NOT NULL,
    source_file    text NOT NULL,
    received_at_ms bigint NOT NULL,
    PRIMARY KEY (agent_id, obs_id)
);
CREATE INDEX observations_latest ON observations (system, location, sku, observed_at_ms);

-- Rows of POS exports the agents quarantined.
CREATE TABLE import_issues (
    agent_id       text COLLATE "C" NOT NULL,
    issue_id       text COLLATE "C" NOT NULL,
    location       text COLLATE "C" NOT NULL,
    file           text NOT NULL,
    line           bigint NOT NULL,
    reason         text NOT NULL,
    raw            text NOT NULL,
    received_at_ms bigint NOT NULL,
    PRIMARY KEY (agent_id, issue_id)
);
CREATE INDEX import_issues_time ON import_issues (received_at_ms);

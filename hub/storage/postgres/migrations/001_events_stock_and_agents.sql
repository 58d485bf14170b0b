-- shelfsync hub, PostgreSQL schema version 1 (the core: credentials, ledger, counts).
--
-- The same tables as schema_sqlite.sql, with three differences:
--
-- * Every text column that is compared or sorted is COLLATE "C", so text
--   orders byte by byte exactly like SQLite's BINARY collation (the resolver's
--   total order includes agent_id, and reads sort by location and sku).
-- * The ledger (events) is partitioned by HASH (location): every ingest
--   statement and the per-location reads name one location, so they touch one
--   partition; a new store needs no DDL; the rows spread evenly whatever the
--   location codes look like. The same key distributes the ledger over a Citus
--   cluster (docs/scaling.md).
-- * A primary key of a partitioned table must contain the partition key, so
--   the global dedupe key lives in event_ids (event_id -> location): an id is
--   stored once across every location, and a resend finds its row by it.
--
-- An order key is the 4 columns (occurred_at, agent_id, seq, event_id): the
-- total order of hub.resolver. Every range query on it is a row-value
-- comparison on an index that starts with (location, sku).

CREATE TABLE meta (
    key   text COLLATE "C" PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE agents (
    agent_id      text COLLATE "C" PRIMARY KEY,
    token_sha256  text NOT NULL,            -- hex SHA-256 of the bearer token; the token is never stored
    role          text NOT NULL CHECK (role IN ('agent', 'reader', 'admin')),
    locations     text NOT NULL,            -- JSON array of location codes
    created_ms    bigint NOT NULL,
    revoked_ms    bigint,
    last_sync_ms  bigint,
    clock_skew_ms bigint                    -- hub wall clock − newest event wall clock of the last batch
);

CREATE TABLE agent_hwm (
    agent_id   text COLLATE "C" NOT NULL,
    epoch      bigint NOT NULL,
    hwm        bigint NOT NULL,             -- highest seq of (agent_id, epoch) committed, rejected ones included
    updated_ms bigint NOT NULL,
    PRIMARY KEY (agent_id, epoch)
);

-- The global dedupe key: one row per stored event id, naming its partition.
CREATE TABLE event_ids (
    event_id bytea PRIMARY KEY,             -- 16-byte UUID
    location text COLLATE "C" NOT NULL
);

-- Every accepted event, once. effect is 'applied' or 'superseded'.
CREATE TABLE events (
    location       text COLLATE "C" NOT NULL,
    event_id       bytea NOT NULL,
    agent_id       text COLLATE "C" NOT NULL,
    epoch          bigint NOT NULL,
    seq            bigint NOT NULL,
    sku            text COLLATE "C" NOT NULL,
    kind           text COLLATE "C" NOT NULL,
    qty            bigint NOT NULL,
    occurred_at    bigint NOT NULL,         -- packed HLC
    wall_ms        bigint NOT NULL,
    source         text NOT NULL,
    ref            text COLLATE "C",
    reason         text,
    attrs          text,                    -- JSON object as sent (text: a resend must compare equal); NULL when empty
    effect         text COLLATE "C" NOT NULL,
    variance       bigint,                  -- counts only: counted − expected
    duplicates     bigint NOT NULL DEFAULT 0,
    received_at_ms bigint NOT NULL,
    PRIMARY KEY (location, event_id)
) PARTITION BY HASH (location);

-- 16 partitions: enough to keep each partition's indexes small at 100M+ rows,
-- few enough that planning stays cheap for the queries that see them all.
DO $$
BEGIN
    FOR r IN 0..15 LOOP
        EXECUTE format('CREATE TABLE events_p%s PARTITION OF events FOR VALUES WITH (MODULUS 16, REMAINDER %s)',
                       lpad(r::text, 2, '0'), r);
    END LOOP;
END
$$;

-- Ingest ranges and one (location, sku)'s history, newest first.
CREATE INDEX events_order ON events (location, sku, occurred_at, agent_id, seq, event_id);
-- The counts of one (location, sku): the variance windows.
CREATE INDEX events_counts ON events (location, sku, occurred_at, agent_id, seq, event_id) INCLUDE (qty)
    WHERE kind = 'count';
-- One SKU's history across every location (a Merge Append of the partitions), and unknown barcodes.
CREATE INDEX events_sku ON events (sku, occurred_at, agent_id, seq, event_id);
-- The whole ledger, newest first.
CREATE INDEX events_time ON events (occurred_at, agent_id, seq, event_id);
-- Sales that consume a reservation.
CREATE INDEX events_sale_ref ON events (location, sku, ref) INCLUDE (qty) WHERE kind = 'sale' AND ref IS NOT NULL;

-- Refused attempts: kept for the ledger and the exceptions list, never counted.
CREATE TABLE rejections (
    event_id       bytea NOT NULL,
    agent_id       text COLLATE "C" NOT NULL,
    epoch          bigint NOT NULL,
    seq            bigint NOT NULL,
    location       text COLLATE "C" NOT NULL,
    sku            text COLLATE "C" NOT NULL,
    kind           text COLLATE "C" NOT NULL,
    qty            bigint NOT NULL,
    occurred_at    bigint NOT NULL,
    wall_ms        bigint NOT NULL,
    source         text NOT NULL,
    ref            text COLLATE "C",
    reason         text,
    attrs          text,
    content_hash   bytea NOT NULL,          -- StockEvent.content_hash: one row per distinct attempt
    code           text NOT NULL,           -- "forbidden_location", "conflict", "invalid"
    detail         text NOT NULL,           -- one sentence
    attempts       bigint NOT NULL DEFAULT 1,
    received_at_ms bigint NOT NULL,
    PRIMARY KEY (event_id, content_hash)
);
CREATE INDEX rejections_time ON rejections (received_at_ms);
CREATE INDEX rejections_where ON rejections (location, sku);

-- The resolved state per (location, sku), kept incrementally by ingest.
CREATE TABLE stock (
    location         text COLLATE "C" NOT NULL,
    sku              text COLLATE "C" NOT NULL,
    on_hand          bigint NOT NULL,
    reserved         bigint NOT NULL,
    in_transit       bigint NOT NULL,
    safety_stock     bigint NOT NULL,
    last_count_at    bigint,                -- order key of the last count
    last_count_agent text COLLATE "C",
    last_count_seq   bigint,
    last_count_id    bytea,
    max_at           bigint,                -- order key of the newest delta or count stored:
    max_agent        text COLLATE "C",      -- events ordered after it arrive "in order"
    max_seq          bigint,
    max_id           bytea,
    updated_at_ms    bigint NOT NULL,
    PRIMARY KEY (location, sku)
) WITH (fillfactor = 70);
-- One SKU's counts at every location.
CREATE INDEX stock_sku ON stock (sku, location);
-- No index names on_hand (SQLite's stock_negative): every batch rewrites its
-- keys' on_hand, and an indexed on_hand would stop those updates from being
-- HOT (in-page, no index writes; the fillfactor leaves them room). The
-- negative-stock exceptions read filters one location's rows by the primary
-- key, or scans the table (one row per location and SKU).

CREATE TABLE reservations (
    location      text COLLATE "C" NOT NULL,
    sku           text COLLATE "C" NOT NULL,
    ref           text COLLATE "C" NOT NULL, -- '' for reserve/release without a ref
    reserved      bigint NOT NULL,           -- Σ reserve + Σ release
    consumed      bigint NOT NULL,           -- Σ |sale| carrying this ref
    updated_at_ms bigint NOT NULL,
    PRIMARY KEY (location, sku, ref)
);

CREATE TABLE transfers (
    ref           text COLLATE "C" NOT NULL,
    sku           text COLLATE "C" NOT NULL,
    shipped       bigint NOT NULL,
    received      bigint NOT NULL,
    out_from      text COLLATE "C",
    out_to        text COLLATE "C",
    in_to         text COLLATE "C",
    in_from       text COLLATE "C",
    updated_at_ms bigint NOT NULL,
    PRIMARY KEY (ref, sku)
);
CREATE INDEX transfers_exceptions ON transfers (updated_at_ms) WHERE received > 0 AND received <> shipped;

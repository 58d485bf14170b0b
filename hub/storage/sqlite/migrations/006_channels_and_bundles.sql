-- shelfsync hub, SQLite schema version 6: channels (docs/channels.md) and bundles.
--
-- Channels: where each channel's pusher stands (its change-feed cursor), the last level each channel
-- confirmed, its SKU mapping and the findings of that mapping. Before version 6 the channel code created
-- these four tables itself in the hub's file; IF NOT EXISTS keeps such a file's rows.
CREATE TABLE IF NOT EXISTS channel_state (
    channel      TEXT PRIMARY KEY,
    cursor       INTEGER NOT NULL DEFAULT 0,
    last_push_ms INTEGER,
    last_error   TEXT
);
CREATE TABLE IF NOT EXISTS channel_pushed (
    channel      TEXT NOT NULL,
    level_key    TEXT NOT NULL,
    quantity     INTEGER NOT NULL,
    pushed_at_ms INTEGER NOT NULL,
    PRIMARY KEY (channel, level_key)
);
CREATE TABLE IF NOT EXISTS channel_items (
    channel    TEXT NOT NULL,
    sku        TEXT NOT NULL,
    item_id    TEXT NOT NULL,
    variant_id TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (channel, sku)
);
CREATE TABLE IF NOT EXISTS channel_findings (
    channel TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    sku     TEXT,
    detail  TEXT NOT NULL,
    PRIMARY KEY (channel, seq)
);

-- When each channel's mapping (and so its findings) was last loaded: the findings' time in the exceptions.
CREATE TABLE channel_mapping_loads (
    channel   TEXT PRIMARY KEY,
    loaded_ms INTEGER NOT NULL
);

-- [reconciliation]
-- Reconciliation (docs/channels.md "Reconciliation"): each divergence found when a channel's levels were read
-- back, as found; only corrected_at_ms is written later, when the channel confirmed the correction.
CREATE TABLE channel_divergences (
    channel         TEXT NOT NULL,
    divergence_id   INTEGER NOT NULL,       -- 1, 2, … per channel
    level_key       TEXT NOT NULL,          -- the channel's item id, a tab, its location id (LevelKey.text())
    sku             TEXT NOT NULL,
    location        TEXT,                   -- the hub location feeding that channel location, when only one does
    hub_level       INTEGER NOT NULL,       -- what the channel should have shown
    last_pushed     INTEGER,                -- what the channel last confirmed from the hub (NULL: never)
    channel_level   INTEGER NOT NULL,       -- what it showed
    found_at_ms     INTEGER NOT NULL,
    corrected_at_ms INTEGER,                -- NULL while open
    PRIMARY KEY (channel, divergence_id)
);
CREATE INDEX channel_divergences_found ON channel_divergences (found_at_ms, channel, divergence_id);
CREATE INDEX channel_divergences_open ON channel_divergences (channel, level_key, corrected_at_ms);
-- Levels a channel refused for good (one item cannot be stocked or set there): the pusher sends the channel's
-- other levels, and this one again only when its level changes or the mapping is loaded again.
CREATE TABLE channel_refusals (
    channel   TEXT NOT NULL,
    level_key TEXT NOT NULL,
    sku       TEXT NOT NULL,
    location  TEXT,                         -- as in channel_divergences
    quantity  INTEGER NOT NULL,             -- the level refused
    detail    TEXT NOT NULL,                -- the channel's reason
    at_ms     INTEGER NOT NULL,
    PRIMARY KEY (channel, level_key)
);
-- When each channel's levels were last read back, how many and how many diverged.
CREATE TABLE channel_reconciled (
    channel  TEXT PRIMARY KEY,
    at_ms    INTEGER NOT NULL,
    checked  INTEGER NOT NULL,
    diverged INTEGER NOT NULL
);

-- [bundles]
-- Bundles (docs/design.md "Bundles and kits"): a bundle SKU is made of component SKUs × units. Each recipe
-- set is a new version, never rewritten; it applies to the movements the hub stores from valid_from_ms on.
CREATE TABLE bundle_recipes (
    sku           TEXT NOT NULL,
    version       INTEGER NOT NULL,         -- 1, 2, … per bundle
    valid_from_ms INTEGER NOT NULL,         -- the hub's clock when it was set
    components    TEXT NOT NULL,            -- JSON {"component SKU": units per bundle} as set (may name bundles)
    set_by        TEXT NOT NULL,            -- the admin credential that set it
    PRIMARY KEY (sku, version)
) WITHOUT ROWID;
-- The recipes in force, flattened to plain SKUs: what one of each bundle moves now.
CREATE TABLE bundle_parts (
    bundle  TEXT NOT NULL,
    part    TEXT NOT NULL,
    units   INTEGER NOT NULL,
    version INTEGER NOT NULL,               -- the bundle's recipe version in force
    PRIMARY KEY (bundle, part)
) WITHOUT ROWID;
CREATE INDEX bundle_parts_part ON bundle_parts (part, bundle);
-- How each bundle movement (events.effect = 'expanded') was booked: fixed when the hub first stored it.
CREATE TABLE bundle_expansions (
    agent_id TEXT NOT NULL,
    event_id BLOB NOT NULL,
    version  INTEGER NOT NULL,              -- the bundle's recipe version that applied
    parts    TEXT NOT NULL,                 -- JSON {"part SKU": units per bundle}
    PRIMARY KEY (agent_id, event_id)
) WITHOUT ROWID;
-- One SKU's rows at every location (a recipe's parts, a bundle's rows, a SKU's counts); PostgreSQL has it since
-- version 1. Only a new (location, sku) writes it: ingest's updates leave both columns as they are.
CREATE INDEX stock_sku ON stock (sku, location);

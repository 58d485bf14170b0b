-- shelfsync hub, PostgreSQL schema version 6: channels (docs/channels.md) and bundles.
--
-- Channels: where each channel's pusher stands (its change-feed cursor), the last level each channel
-- confirmed, its SKU mapping and the findings of that mapping.
CREATE TABLE channel_state (
    channel      text PRIMARY KEY,
    cursor       bigint NOT NULL DEFAULT 0,
    last_push_ms bigint,
    last_error   text
);
CREATE TABLE channel_pushed (
    channel      text NOT NULL,
    level_key    text NOT NULL,
    quantity     bigint NOT NULL,
    pushed_at_ms bigint NOT NULL,
    PRIMARY KEY (channel, level_key)
);
CREATE TABLE channel_items (
    channel    text NOT NULL,
    sku        text NOT NULL,
    item_id    text NOT NULL,
    variant_id text NOT NULL DEFAULT '',
    PRIMARY KEY (channel, sku)
);
CREATE TABLE channel_findings (
    channel text NOT NULL,
    seq     integer NOT NULL,
    kind    text NOT NULL,
    sku     text,
    detail  text NOT NULL,
    PRIMARY KEY (channel, seq)
);

-- When each channel's mapping (and so its findings) was last loaded: the findings' time in the exceptions.
CREATE TABLE channel_mapping_loads (
    channel   text PRIMARY KEY,
    loaded_ms bigint NOT NULL
);

-- [reconciliation]
-- Reconciliation (docs/channels.md "Reconciliation"): each divergence found when a channel's levels were read
-- back, as found; only corrected_at_ms is written later, when the channel confirmed the correction.
CREATE TABLE channel_divergences (
    channel         text COLLATE "C" NOT NULL,
    divergence_id   bigint NOT NULL,        -- 1, 2, … per channel
    level_key       text NOT NULL,          -- the channel's item id, a tab, its location id (LevelKey.text())
    sku             text NOT NULL,
    location        text,                   -- the hub location feeding that channel location, when only one does
    hub_level       bigint NOT NULL,        -- what the channel should have shown
    last_pushed     bigint,                 -- what the channel last confirmed from the hub (NULL: never)
    channel_level   bigint NOT NULL,        -- what it showed
    found_at_ms     bigint NOT NULL,
    corrected_at_ms bigint,                 -- NULL while open
    PRIMARY KEY (channel, divergence_id)
);
CREATE INDEX channel_divergences_found ON channel_divergences (found_at_ms, channel, divergence_id);
CREATE INDEX channel_divergences_open ON channel_divergences (channel, level_key, corrected_at_ms);
-- Levels a channel refused for good (one item cannot be stocked or set there): the pusher sends the channel's
-- other levels, and this one again only when its level changes or the mapping is loaded again.
CREATE TABLE channel_refusals (
    channel   text COLLATE "C" NOT NULL,
    level_key text COLLATE "C" NOT NULL,
    sku       text NOT NULL,
    location  text,                         -- as in channel_divergences
    quantity  bigint NOT NULL,              -- the level refused
    detail    text NOT NULL,                -- the channel's reason
    at_ms     bigint NOT NULL,
    PRIMARY KEY (channel, level_key)
);
-- When each channel's levels were last read back, how many and how many diverged.
CREATE TABLE channel_reconciled (
    channel  text PRIMARY KEY,
    at_ms    bigint NOT NULL,
    checked  bigint NOT NULL,
    diverged bigint NOT NULL
);

-- [bundles]
-- Bundles (docs/design.md "Bundles and kits"): a bundle SKU is made of component SKUs × units. Each recipe
-- set is a new version, never rewritten; it applies to the movements the hub stores from valid_from_ms on.
-- Every stock write holds the advisory lock of the recipes shared; setting a recipe holds it alone
-- (hub.storage.postgres_ingest.RECIPES_LOCK).
CREATE TABLE bundle_recipes (
    sku           text COLLATE "C" NOT NULL,
    version       bigint NOT NULL,          -- 1, 2, … per bundle
    valid_from_ms bigint NOT NULL,          -- the hub's clock when it was set
    components    text NOT NULL,            -- JSON {"component SKU": units per bundle} as set (may name bundles)
    set_by        text NOT NULL,            -- the admin credential that set it
    PRIMARY KEY (sku, version)
);
-- The recipes in force, flattened to plain SKUs: what one of each bundle moves now.
CREATE TABLE bundle_parts (
    bundle  text COLLATE "C" NOT NULL,
    part    text COLLATE "C" NOT NULL,
    units   bigint NOT NULL,
    version bigint NOT NULL,                -- the bundle's recipe version in force
    PRIMARY KEY (bundle, part)
);
CREATE INDEX bundle_parts_part ON bundle_parts (part, bundle);
-- How each bundle movement (events.effect = 'expanded') was booked: fixed when the hub first stored it.
CREATE TABLE bundle_expansions (
    agent_id text COLLATE "C" NOT NULL,
    event_id bytea NOT NULL,
    version  bigint NOT NULL,               -- the bundle's recipe version that applied
    parts    text NOT NULL,                 -- JSON {"part SKU": units per bundle}
    PRIMARY KEY (agent_id, event_id)
);

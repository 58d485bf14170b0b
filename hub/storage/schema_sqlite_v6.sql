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

-- [reconciliation]

-- [bundles]

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

-- [reconciliation]

-- [bundles]

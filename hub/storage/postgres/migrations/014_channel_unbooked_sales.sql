-- shelfsync hub, PostgreSQL schema version 14: a Square count pushed less register sales whose orders had not reached
-- the hub (docs/channels.md "Square"). What the last count confirmed at a level took off for them (less_units) and
-- when Square received the oldest of them (sales_from_ms: the next read of Square's record starts there at the
-- latest), so a hub started again compares and reads as the one before it; and Square orders whose webhook the hub
-- refused for good (a line it cannot map, a location not in the pool), whose sales are no longer taken off.
-- A hub of version 13 sharing the database during an upgrade leaves the new columns at their defaults.
ALTER TABLE channel_pushed ADD COLUMN less_units bigint NOT NULL DEFAULT 0;
ALTER TABLE channel_pushed ADD COLUMN sales_from_ms bigint;
CREATE TABLE channel_orders_refused (
    channel       text NOT NULL,
    order_id      text NOT NULL,
    refused_at_ms bigint NOT NULL,
    reason        text NOT NULL,
    PRIMARY KEY (channel, order_id)
);

-- shelfsync hub, PostgreSQL schema version 16: the stock rows below zero, each one's key and time, kept beside the
-- stock table, so the exceptions' negative-stock source walks them in the list's order (newest first, then the key;
-- one store's by its own index) and stops at a page, looking each one's on_hand up in stock by its key. It scanned
-- the whole stock table on every page: a chain's stock is a row per location and SKU (500 stores × 20,000 SKUs:
-- 10 million rows), and the dashboard reads the list every 15 s. The stock table still has no index of on_hand
-- (SQLite's stock_negative): a partial index WHERE on_hand < 0 names on_hand too, and PostgreSQL then writes every
-- update of on_hand outside its page (not HOT), below zero or not. Ingest writes a row here in the statement that
-- writes the key's stock row, only when that stock is or was below zero (hub.storage.postgres.ingest): the
-- batches that move no stock below zero write nothing more. Filled from the stock held now.
CREATE TABLE stock_negative (
    location      text COLLATE "C" NOT NULL,
    sku           text COLLATE "C" NOT NULL,
    updated_at_ms bigint NOT NULL,          -- the stock row's
    PRIMARY KEY (location, sku)
);
CREATE INDEX stock_negative_time ON stock_negative (updated_at_ms DESC, location, sku);
CREATE INDEX stock_negative_at ON stock_negative (location, updated_at_ms DESC, sku);
INSERT INTO stock_negative (location, sku, updated_at_ms) SELECT location, sku, updated_at_ms FROM stock WHERE on_hand < 0;

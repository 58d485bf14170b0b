-- shelfsync hub, PostgreSQL schema version 15: the keys whose stock is below zero, kept beside the stock table, so
-- the exceptions' negative-stock source reads them (and each one's stock row by its key) instead of the whole
-- stock table: a chain's stock is a row per location and SKU (500 stores × 20,000 SKUs: 10 million rows), and the
-- dashboard reads the list every 15 s. The stock table still has no index of on_hand (SQLite's stock_negative):
-- a partial index WHERE on_hand < 0 names on_hand too, and PostgreSQL then writes every update of on_hand outside
-- the page (not HOT), below zero or not. Ingest writes a key here in the statement that writes its stock row, only
-- when its stock goes below zero, and deletes it when its stock comes back (hub.storage.postgres.ingest): the
-- batches that move no stock across zero write nothing more. Filled from the stock held now.
CREATE TABLE stock_negative_keys (
    location text COLLATE "C" NOT NULL,
    sku      text COLLATE "C" NOT NULL,
    PRIMARY KEY (location, sku)
);
INSERT INTO stock_negative_keys (location, sku) SELECT location, sku FROM stock WHERE on_hand < 0;

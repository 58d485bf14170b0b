-- shelfsync hub, SQLite schema version 25: receipts back at the shipper, the wrong store's book-outs, and the
-- change feed told of every transfer destination's counts.
--
-- Since schema 20 a receipt belongs to the transfer to its own location, so a store receiving back its own shipment
-- (one cancelled before it left) made an unmatched transfer of its own, and the destination kept the units in
-- transit. Such a receipt (at a location nothing of the ref was shipped to, which alone shipped the ref and SKU
-- elsewhere, naming no other source) is now a receipt back: its units count against that shipment (returned; the
-- first destination in code order when it shipped to several) and a final one closes it (closed_at, the earlier of that and the
-- transfer's own final receipt, final_at): hub.resolver.settle_returns. And a receipt at the wrong store stayed
-- listed as unmatched after the store booked it out again as docs/faults.md says: an adjust carrying the
-- transfer's ref there (a ref other than its source) books it out (booked_out), and what is booked out is no longer
-- unmatched. Both are derived from the stored events here, as ingest derives them; each location's in transit of
-- a plain SKU follows (as in step 20), and the indexes whose WHERE names what is open, short or unmatched are made
-- again. transfers_by_ref reads every destination of a ref and SKU, for ingest and for the exceptions list's
-- links (it takes the place of schema 22's transfers_ref, which held those with shipped <> received).
--
-- Step 20 corrected in transit in the stock table without a change row, so a channel following the feed never
-- learned of it; this step appends a change row (no causing event) for every stock row that is a transfer's
-- destination, which holds each of step 20's and this step's corrections.
--
-- The ledger is read once, whole and in its own order (NOT INDEXED: events_ref would lead the scan through every
-- sale's receipt ref, one lookup of the event each), and each location's in transit is summed once per
-- (destination, SKU) into a temporary table that also names the stock rows the change feed is told of (as in step
-- 20). The first version of this step walked events_ref and looked up every transfer of a location for each stock
-- row, twice for its in transit and once for its change row, work growing with the square of the ledger: 18 s of
-- a 2,000,000-event ledger's upgrade, now about 2 s (bench/bench_upgrade.py, docs/benchmarks.md). It is kept in
-- tests/fixtures/migrations/ and must leave what this one leaves.
ALTER TABLE transfers ADD COLUMN final_at INTEGER;
ALTER TABLE transfers ADD COLUMN returned INTEGER NOT NULL DEFAULT 0;
ALTER TABLE transfers ADD COLUMN booked_out INTEGER NOT NULL DEFAULT 0;
UPDATE transfers SET final_at = closed_at WHERE closed_at IS NOT NULL;
INSERT INTO transfers (dest, ref, sku, shipped, received, shippers, booked_out, updated_at_ms)
SELECT e.location, e.ref, e.sku, 0, 0, '', -SUM(e.qty), MAX(e.received_at_ms)
FROM events AS e NOT INDEXED
WHERE e.kind = 'adjust' AND e.ref IS NOT NULL AND e.ref <> e.source AND e.effect <> 'expanded'
GROUP BY e.location, e.ref, e.sku
ON CONFLICT (dest, ref, sku) DO UPDATE SET booked_out = excluded.booked_out;
DROP INDEX transfers_ref;
CREATE INDEX transfers_by_ref ON transfers (ref, sku, dest);
CREATE TEMP TABLE returns_025 AS
SELECT b.dest AS back, b.ref, b.sku, b.received, b.final_at, (
    SELECT MIN(t.dest) FROM transfers t
    WHERE t.ref = b.ref AND t.sku = b.sku AND t.shipped > 0 AND t.shippers = b.dest
      AND (b.in_from IS NULL OR b.in_from = t.dest)
) AS target
FROM transfers b
WHERE b.shipped = 0 AND b.received > 0;
DELETE FROM returns_025 WHERE target IS NULL;
CREATE INDEX temp.returns_025_back ON returns_025 (back, ref, sku);
CREATE INDEX temp.returns_025_target ON returns_025 (target, ref, sku);
UPDATE transfers SET returned = received
WHERE EXISTS (
    SELECT 1 FROM returns_025 r WHERE r.back = transfers.dest AND r.ref = transfers.ref AND r.sku = transfers.sku
);
UPDATE transfers SET
    returned = (
        SELECT SUM(r.received) FROM returns_025 r
        WHERE r.target = transfers.dest AND r.ref = transfers.ref AND r.sku = transfers.sku
    ),
    closed_at = (
        SELECT CASE WHEN MIN(r.final_at) IS NULL THEN transfers.final_at
                    WHEN transfers.final_at IS NULL OR MIN(r.final_at) < transfers.final_at THEN MIN(r.final_at)
                    ELSE transfers.final_at END
        FROM returns_025 r
        WHERE r.target = transfers.dest AND r.ref = transfers.ref AND r.sku = transfers.sku
    )
WHERE EXISTS (
    SELECT 1 FROM returns_025 r WHERE r.target = transfers.dest AND r.ref = transfers.ref AND r.sku = transfers.sku
);
DROP TABLE returns_025;
CREATE TEMP TABLE migration_025_dests (
    location, sku, in_transit,
    PRIMARY KEY (location, sku)
) WITHOUT ROWID;
INSERT INTO migration_025_dests (location, sku, in_transit)
SELECT t.dest, t.sku,
       COALESCE(SUM(CASE WHEN t.closed_at IS NULL AND t.shipped > t.received + t.returned
                         THEN t.shipped - t.received - t.returned END), 0)
FROM transfers t
GROUP BY t.dest, t.sku;
UPDATE stock SET in_transit = COALESCE((
    SELECT x.in_transit FROM migration_025_dests x WHERE x.location = stock.location AND x.sku = stock.sku
), 0)
WHERE NOT EXISTS (SELECT 1 FROM bundle_recipes r WHERE r.sku = stock.sku)
  AND in_transit <> COALESCE((
    SELECT x.in_transit FROM migration_025_dests x WHERE x.location = stock.location AND x.sku = stock.sku
), 0);
INSERT INTO changes (location, sku, on_hand, reserved, available, in_transit, event_ids, at_ms)
SELECT s.location, s.sku, s.on_hand, s.reserved, MAX(0, s.on_hand - s.reserved - s.safety_stock), s.in_transit,
       X'', CAST(strftime('%s', 'now') AS INTEGER) * 1000
FROM migration_025_dests x JOIN stock s ON s.location = x.location AND s.sku = x.sku
ORDER BY s.location, s.sku;
DROP TABLE temp.migration_025_dests;
DROP INDEX transfers_closed_short;
DROP INDEX transfers_finding;
DROP INDEX transfers_finding_to;
DROP INDEX transfers_finding_from;
DROP INDEX transfers_open;
DROP INDEX transfers_open_to;
DROP INDEX transfers_open_from;
CREATE INDEX transfers_closed_short ON transfers (closed_at)
    WHERE closed_at IS NOT NULL AND shipped > received + returned;
CREATE INDEX transfers_finding ON transfers (updated_at_ms DESC, dest, ref, sku)
    WHERE ((shipped = 0 AND received > returned + booked_out) OR (shipped > 0 AND received + returned > 0
           AND received + returned <> shipped) OR (closed_at IS NOT NULL AND shipped > received + returned)
           OR shippers LIKE '%,%');
CREATE INDEX transfers_finding_to ON transfers (dest, updated_at_ms DESC, ref, sku)
    WHERE ((shipped = 0 AND received > returned + booked_out) OR (shipped > 0 AND received + returned > 0
           AND received + returned <> shipped) OR (closed_at IS NOT NULL AND shipped > received + returned)
           OR shippers LIKE '%,%');
CREATE INDEX transfers_finding_from ON transfers (COALESCE(out_from, in_from), updated_at_ms DESC, dest, ref, sku)
    WHERE ((shipped = 0 AND received > returned + booked_out) OR (shipped > 0 AND received + returned > 0
           AND received + returned <> shipped) OR (closed_at IS NOT NULL AND shipped > received + returned)
           OR shippers LIKE '%,%');
CREATE INDEX transfers_open ON transfers (updated_at_ms DESC, dest, ref, sku)
    WHERE closed_at IS NULL AND shipped > received + returned;
CREATE INDEX transfers_open_to ON transfers (dest, updated_at_ms DESC, ref, sku)
    WHERE closed_at IS NULL AND shipped > received + returned;
CREATE INDEX transfers_open_from ON transfers (COALESCE(out_from, in_from), updated_at_ms DESC, dest, ref, sku)
    WHERE closed_at IS NULL AND shipped > received + returned;

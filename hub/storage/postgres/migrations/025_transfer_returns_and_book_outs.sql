-- shelfsync hub, PostgreSQL schema version 25: receipts back at the shipper, the wrong store's book-outs, and the
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
-- destination, which holds each of step 20's and this step's corrections: one run per location (schema 17), its
-- ids taken from change_counter. The same as the SQLite hub's step 25.
--
-- Each location's in transit is summed once per (destination, SKU) and joined to the stock rows (as in step 20),
-- the tables this step grows or makes are analyzed before they are read, and the stock rows told to the change
-- feed are found first and numbered after (numbered as they were found, the planner walked every stock row by
-- stock_pkey to spare a sort of the few it keeps). The first version of this step summed the transfers to a
-- location for every stock row: 9 s of a 2,000,000-event ledger's upgrade, now about 1 s (bench/bench_upgrade.py,
-- docs/benchmarks.md). It is kept in tests/fixtures/migrations/ and must leave what this one leaves.
ALTER TABLE transfers ADD COLUMN final_at bigint;
ALTER TABLE transfers ADD COLUMN returned bigint NOT NULL DEFAULT 0;
ALTER TABLE transfers ADD COLUMN booked_out bigint NOT NULL DEFAULT 0;
UPDATE transfers SET final_at = closed_at WHERE closed_at IS NOT NULL;
INSERT INTO transfers (dest, ref, sku, shipped, received, shippers, booked_out, updated_at_ms)
SELECT e.location, e.ref, e.sku, 0, 0, '', -SUM(e.qty), MAX(e.received_at_ms)
FROM events e
WHERE e.kind = 'adjust' AND e.ref IS NOT NULL AND e.ref <> e.source AND e.effect <> 'expanded'
GROUP BY e.location, e.ref, e.sku
ON CONFLICT (dest, ref, sku) DO UPDATE SET booked_out = excluded.booked_out;
ANALYZE transfers;
DROP INDEX transfers_ref;
CREATE INDEX transfers_by_ref ON transfers (ref, sku, dest);
CREATE TEMP TABLE returns_025 ON COMMIT DROP AS
SELECT b.dest AS back, b.ref, b.sku, b.received, b.final_at, (
    SELECT MIN(t.dest) FROM transfers t
    WHERE t.ref = b.ref AND t.sku = b.sku AND t.shipped > 0 AND t.shippers = b.dest
      AND (b.in_from IS NULL OR b.in_from = t.dest)
) AS target
FROM transfers b
WHERE b.shipped = 0 AND b.received > 0;
DELETE FROM returns_025 WHERE target IS NULL;
ANALYZE returns_025;
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
        SELECT LEAST(transfers.final_at, MIN(r.final_at)) FROM returns_025 r
        WHERE r.target = transfers.dest AND r.ref = transfers.ref AND r.sku = transfers.sku
    )
WHERE EXISTS (
    SELECT 1 FROM returns_025 r WHERE r.target = transfers.dest AND r.ref = transfers.ref AND r.sku = transfers.sku
);
DROP TABLE returns_025;
UPDATE stock s SET in_transit = o.in_transit
FROM (
    SELECT t.dest, t.sku, SUM(t.shipped - t.received - t.returned) AS in_transit FROM transfers t
    WHERE t.closed_at IS NULL AND t.shipped > t.received + t.returned
    GROUP BY t.dest, t.sku
) o
WHERE s.location = o.dest AND s.sku = o.sku AND s.in_transit <> o.in_transit
  AND NOT EXISTS (SELECT 1 FROM bundle_recipes r WHERE r.sku = s.sku);
UPDATE stock s SET in_transit = 0
WHERE s.in_transit <> 0
  AND NOT EXISTS (SELECT 1 FROM bundle_recipes r WHERE r.sku = s.sku)
  AND NOT EXISTS (
    SELECT 1 FROM transfers t
    WHERE t.dest = s.location AND t.sku = s.sku AND t.closed_at IS NULL AND t.shipped > t.received + t.returned
  );
CREATE TEMP TABLE announced_025 ON COMMIT DROP AS
SELECT s.location, s.sku, s.on_hand, s.reserved, GREATEST(0, s.on_hand - s.reserved - s.safety_stock) AS available,
       s.in_transit
FROM stock s
WHERE EXISTS (SELECT 1 FROM transfers t WHERE t.dest = s.location AND t.sku = s.sku);
WITH announced AS (
    SELECT a.*, row_number() OVER (ORDER BY a.location, a.sku) AS n FROM announced_025 a
), counter AS (
    UPDATE change_counter SET last_id = last_id + (SELECT count(*) FROM announced) RETURNING last_id
)
INSERT INTO change_runs (last_id, first_id, location, skus, on_hand, reserved, available, in_transit, event_ids,
                         id_ends, at_ms)
SELECT c.last_id - (SELECT count(*) FROM announced) + max(a.n), c.last_id - (SELECT count(*) FROM announced) + min(a.n),
       a.location, array_agg(a.sku ORDER BY a.n), array_agg(a.on_hand ORDER BY a.n),
       array_agg(a.reserved ORDER BY a.n), array_agg(a.available ORDER BY a.n), array_agg(a.in_transit ORDER BY a.n),
       ''::bytea, array_agg(0 ORDER BY a.n), (extract(epoch FROM clock_timestamp()) * 1000)::bigint
FROM announced a, counter c
GROUP BY a.location, c.last_id;
DROP TABLE announced_025;
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
CREATE INDEX transfers_finding_from ON transfers ((COALESCE(out_from, in_from)), updated_at_ms DESC, dest, ref, sku)
    WHERE ((shipped = 0 AND received > returned + booked_out) OR (shipped > 0 AND received + returned > 0
           AND received + returned <> shipped) OR (closed_at IS NOT NULL AND shipped > received + returned)
           OR shippers LIKE '%,%');
CREATE INDEX transfers_open ON transfers (updated_at_ms DESC, dest, ref, sku)
    WHERE closed_at IS NULL AND shipped > received + returned;
CREATE INDEX transfers_open_to ON transfers (dest, updated_at_ms DESC, ref, sku)
    WHERE closed_at IS NULL AND shipped > received + returned;
CREATE INDEX transfers_open_from ON transfers ((COALESCE(out_from, in_from)), updated_at_ms DESC, dest, ref, sku)
    WHERE closed_at IS NULL AND shipped > received + returned;

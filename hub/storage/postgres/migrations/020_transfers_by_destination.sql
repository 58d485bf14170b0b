-- shelfsync hub, PostgreSQL schema version 20: a transfer is keyed by (destination, ref, sku), not (ref, sku).
--
-- Two stores numbering their transfers alike (both ship "T-1") were one transfer: wrong in transit at the
-- receivers, and one receiver's final receipt wrote off the other store's units. Each event names its transfer's
-- destination alone (a transfer_out's attrs.to, a transfer_in's own location), so that is the key now
-- (hub/resolver.py transfer_key), and shippers keeps every location that shipped to it (sorted, comma-separated).
-- Transfers are derived from events: the table is rebuilt from the stored events (a bundle's own movement,
-- effect 'expanded', is booked on its parts, which are events of their own), and each location's in transit of a
-- plain SKU is summed again from it (a bundle's row follows its parts at their next movement). The indexes of
-- schemas 11 and 12 are made again over the new key, and transfers_misdirected becomes transfers_shared: a
-- receipt belongs to the transfer to its own location, and several shippers of one ref to one destination are
-- the finding. The same as the SQLite hub's step 20.
--
-- The ledger is read once (a scan of every event: no index holds the transfer events, and building one would read
-- them all too). Each location's in transit is the open transfers summed once per (destination, SKU), joined to
-- the stock rows it changes, and the rows left with units in transit and no open transfer set to 0; the new table
-- is analyzed first (without statistics the planner took it for a few rows and paired every stock row in transit
-- with every open transfer). The first version of this step summed the transfers to its location for each stock
-- row: 4-9 s of a 2,000,000-event ledger's upgrade, now under 1 s (bench/bench_upgrade.py, docs/benchmarks.md).
CREATE TABLE transfers_by_dest (
    dest          text COLLATE "C" NOT NULL,
    ref           text COLLATE "C" NOT NULL,
    sku           text COLLATE "C" NOT NULL,
    shipped       bigint NOT NULL,
    received      bigint NOT NULL,
    out_from      text COLLATE "C",
    out_to        text COLLATE "C",
    in_to         text COLLATE "C",
    in_from       text COLLATE "C",
    shipped_at_ms bigint,
    closed_at     bigint,
    shippers      text COLLATE "C" NOT NULL DEFAULT '',
    updated_at_ms bigint NOT NULL,
    PRIMARY KEY (dest, ref, sku)
);
INSERT INTO transfers_by_dest (
    dest, ref, sku, shipped, received, out_from, out_to, in_to, in_from, shipped_at_ms, closed_at, shippers,
    updated_at_ms
)
SELECT m.dest, m.ref, m.sku,
       COALESCE(SUM(CASE WHEN m.kind = 'transfer_out' THEN -m.qty END), 0),
       COALESCE(SUM(CASE WHEN m.kind = 'transfer_in' THEN m.qty END), 0),
       MIN(CASE WHEN m.kind = 'transfer_out' THEN m.location END),
       MIN(CASE WHEN m.kind = 'transfer_out' THEN m.dest END),
       MIN(CASE WHEN m.kind = 'transfer_in' THEN m.location END),
       MIN(m.src),
       MIN(CASE WHEN m.kind = 'transfer_out' THEN m.wall_ms END),
       MIN(CASE WHEN m.final THEN m.occurred_at END),
       COALESCE(string_agg(DISTINCT CASE WHEN m.kind = 'transfer_out' THEN m.location END, ',' ORDER BY
                           CASE WHEN m.kind = 'transfer_out' THEN m.location END), ''),
       MAX(m.received_at_ms)
FROM (
    SELECT (CASE e.kind WHEN 'transfer_out' THEN e.attrs::jsonb ->> 'to' ELSE e.location END) COLLATE "C" AS dest,
           e.ref, e.sku, e.kind, e.qty, e.location, e.wall_ms, e.occurred_at, e.received_at_ms,
           e.kind = 'transfer_in' AND jsonb_typeof(e.attrs::jsonb -> 'final') = 'boolean'
               AND (e.attrs::jsonb -> 'final')::boolean AS final,
           (CASE WHEN e.kind = 'transfer_in' THEN e.attrs::jsonb ->> 'from' END) COLLATE "C" AS src
    FROM events e
    WHERE e.kind IN ('transfer_out', 'transfer_in') AND e.ref IS NOT NULL AND e.effect <> 'expanded'
) m
WHERE m.dest IS NOT NULL
GROUP BY m.dest, m.ref, m.sku;
DROP TABLE transfers;
ALTER TABLE transfers_by_dest RENAME TO transfers;
ALTER INDEX transfers_by_dest_pkey RENAME TO transfers_pkey;
ANALYZE transfers;
UPDATE stock s SET in_transit = o.in_transit
FROM (
    SELECT t.dest, t.sku, SUM(t.shipped - t.received) AS in_transit FROM transfers t
    WHERE t.closed_at IS NULL AND t.shipped > t.received
    GROUP BY t.dest, t.sku
) o
WHERE s.location = o.dest AND s.sku = o.sku AND s.in_transit <> o.in_transit
  AND NOT EXISTS (SELECT 1 FROM bundle_recipes r WHERE r.sku = s.sku);
UPDATE stock s SET in_transit = 0
WHERE s.in_transit <> 0
  AND NOT EXISTS (SELECT 1 FROM bundle_recipes r WHERE r.sku = s.sku)
  AND NOT EXISTS (
    SELECT 1 FROM transfers t
    WHERE t.dest = s.location AND t.sku = s.sku AND t.closed_at IS NULL AND t.shipped > t.received
  );
CREATE INDEX transfers_closed_short ON transfers (closed_at) WHERE closed_at IS NOT NULL AND shipped > received;
CREATE INDEX transfers_finding ON transfers (updated_at_ms DESC, dest, ref, sku)
    WHERE ((received > 0 AND received <> shipped) OR (closed_at IS NOT NULL AND shipped > received)
           OR shippers LIKE '%,%');
CREATE INDEX transfers_finding_to ON transfers (dest, updated_at_ms DESC, ref, sku)
    WHERE ((received > 0 AND received <> shipped) OR (closed_at IS NOT NULL AND shipped > received)
           OR shippers LIKE '%,%');
CREATE INDEX transfers_finding_from ON transfers ((COALESCE(out_from, in_from)), updated_at_ms DESC, dest, ref, sku)
    WHERE ((received > 0 AND received <> shipped) OR (closed_at IS NOT NULL AND shipped > received)
           OR shippers LIKE '%,%');
CREATE INDEX transfers_shared ON transfers (updated_at_ms DESC, dest, ref, sku) WHERE shippers LIKE '%,%';
CREATE INDEX transfers_open ON transfers (updated_at_ms DESC, dest, ref, sku) WHERE closed_at IS NULL AND shipped > received;
CREATE INDEX transfers_open_to ON transfers (dest, updated_at_ms DESC, ref, sku)
    WHERE closed_at IS NULL AND shipped > received;
CREATE INDEX transfers_open_from ON transfers ((COALESCE(out_from, in_from)), updated_at_ms DESC, dest, ref, sku)
    WHERE closed_at IS NULL AND shipped > received;

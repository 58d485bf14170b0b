-- shelfsync hub, SQLite schema version 20: a transfer is keyed by (destination, ref, sku), not (ref, sku).
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
-- the finding.
--
-- The ledger is read once, whole and in its own order (NOT INDEXED: events_ref would lead the scan through every
-- sale's receipt ref, one lookup of the event each), into a temporary table of its transfer events; the
-- transfers and each one's shippers are made from that, and each location's in transit from the transfers summed
-- once per (destination, SKU). The first version of this step looked up every event of a transfer's ref for its
-- shippers and summed the transfers to its location twice for each stock row, work growing with the square of
-- the ledger: 11-14 s of a 2,000,000-event ledger's upgrade, now 2-3 s (bench/bench_upgrade.py,
-- docs/benchmarks.md).
CREATE TEMP TABLE migration_020_moves AS
SELECT CASE e.kind WHEN 'transfer_out' THEN json_extract(e.attrs, '$.to') ELSE e.location END AS dest,
       e.ref AS ref, e.sku AS sku, e.kind AS kind, e.qty AS qty, e.location AS location, e.wall_ms AS wall_ms,
       e.occurred_at AS occurred_at, e.received_at_ms AS received_at_ms,
       e.kind = 'transfer_in' AND json_type(e.attrs, '$.final') = 'true' AS final,
       CASE WHEN e.kind = 'transfer_in' THEN json_extract(e.attrs, '$.from') END AS src
FROM events AS e NOT INDEXED
WHERE e.kind IN ('transfer_out', 'transfer_in') AND e.ref IS NOT NULL AND e.effect <> 'expanded';
CREATE INDEX temp.migration_020_moves_key ON migration_020_moves (dest, ref, sku, kind, location);
CREATE TABLE transfers_by_dest (
    dest          TEXT NOT NULL,
    ref           TEXT NOT NULL,
    sku           TEXT NOT NULL,
    shipped       INTEGER NOT NULL,
    received      INTEGER NOT NULL,
    out_from      TEXT,
    out_to        TEXT,
    in_to         TEXT,
    in_from       TEXT,
    shipped_at_ms INTEGER,
    closed_at     INTEGER,
    shippers      TEXT NOT NULL DEFAULT '',
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (dest, ref, sku)
) WITHOUT ROWID;
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
       COALESCE((
           SELECT group_concat(s.loc, ',') FROM (
               SELECT DISTINCT o.location AS loc FROM migration_020_moves o
               WHERE o.dest = m.dest AND o.ref = m.ref AND o.sku = m.sku AND o.kind = 'transfer_out'
               ORDER BY o.location
           ) s
       ), ''),
       MAX(m.received_at_ms)
FROM migration_020_moves m
WHERE m.dest IS NOT NULL
GROUP BY m.dest, m.ref, m.sku;
DROP TABLE transfers;
ALTER TABLE transfers_by_dest RENAME TO transfers;
CREATE TEMP TABLE migration_020_in_transit (
    location, sku, in_transit,
    PRIMARY KEY (location, sku)
) WITHOUT ROWID;
INSERT INTO migration_020_in_transit (location, sku, in_transit)
SELECT t.dest, t.sku, SUM(t.shipped - t.received) FROM transfers t
WHERE t.closed_at IS NULL AND t.shipped > t.received
GROUP BY t.dest, t.sku;
UPDATE stock SET in_transit = COALESCE((
    SELECT x.in_transit FROM migration_020_in_transit x WHERE x.location = stock.location AND x.sku = stock.sku
), 0)
WHERE NOT EXISTS (SELECT 1 FROM bundle_recipes r WHERE r.sku = stock.sku)
  AND in_transit <> COALESCE((
    SELECT x.in_transit FROM migration_020_in_transit x WHERE x.location = stock.location AND x.sku = stock.sku
), 0);
DROP TABLE temp.migration_020_in_transit;
DROP TABLE temp.migration_020_moves;
CREATE INDEX transfers_closed_short ON transfers (closed_at) WHERE closed_at IS NOT NULL AND shipped > received;
CREATE INDEX transfers_finding ON transfers (updated_at_ms DESC, dest, ref, sku)
    WHERE ((received > 0 AND received <> shipped) OR (closed_at IS NOT NULL AND shipped > received)
           OR shippers LIKE '%,%');
CREATE INDEX transfers_finding_to ON transfers (dest, updated_at_ms DESC, ref, sku)
    WHERE ((received > 0 AND received <> shipped) OR (closed_at IS NOT NULL AND shipped > received)
           OR shippers LIKE '%,%');
CREATE INDEX transfers_finding_from ON transfers (COALESCE(out_from, in_from), updated_at_ms DESC, dest, ref, sku)
    WHERE ((received > 0 AND received <> shipped) OR (closed_at IS NOT NULL AND shipped > received)
           OR shippers LIKE '%,%');
CREATE INDEX transfers_shared ON transfers (updated_at_ms DESC, dest, ref, sku) WHERE shippers LIKE '%,%';
CREATE INDEX transfers_open ON transfers (updated_at_ms DESC, dest, ref, sku) WHERE closed_at IS NULL AND shipped > received;
CREATE INDEX transfers_open_to ON transfers (dest, updated_at_ms DESC, ref, sku)
    WHERE closed_at IS NULL AND shipped > received;
CREATE INDEX transfers_open_from ON transfers (COALESCE(out_from, in_from), updated_at_ms DESC, dest, ref, sku)
    WHERE closed_at IS NULL AND shipped > received;

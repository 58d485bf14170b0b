-- shelfsync hub, PostgreSQL schema version 30: the shrinkage report by SKU is kept for its later pages.
--
-- Each page of the report by SKU read the whole period's counts again and sorted every row (about 2 s for a
-- stocktake of 50,000 rows), and a row whose shrinkage changed between two pages moved across the cursor: shown
-- twice or never. The first page of a report with more than one page now keeps the whole report, in its order,
-- in parts of 1,000 rows; the later pages (named by its id in their cursor) read the parts they show, from any hub.
-- A report is kept 10 minutes, and at most 20 of them (hub.storage.reports.VARIANCE_KEEP_*): removed as the next
-- one is kept.
CREATE TABLE IF NOT EXISTS variance_reports (
    report_id   text COLLATE "C" PRIMARY KEY, -- random hex, named by its pages' cursors
    made_ms     bigint NOT NULL,     -- when its first page read the ledger
    from_ms     bigint NOT NULL,     -- its period: from (included) to (excluded), Unix ms
    to_ms       bigint NOT NULL,
    location    text COLLATE "C",     -- its filters (NULL: none)
    sku         text COLLATE "C",
    row_count   bigint NOT NULL,
    counts      bigint NOT NULL,     -- the totals of every row
    shrinkage   bigint NOT NULL,
    overage     bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS variance_reports_made ON variance_reports (made_ms);

CREATE TABLE IF NOT EXISTS variance_report_parts (
    report_id text COLLATE "C" NOT NULL,
    part      bigint NOT NULL,      -- rows part * 1000 to part * 1000 + 999 of the report's order
    rows      text NOT NULL,         -- JSON [[location, sku, counts, shrinkage, overage, first_at, last_at], ...]
    PRIMARY KEY (report_id, part)
);

-- shelfsync hub, SQLite schema version 24: one location's ledger, newest first, read by an index.
--
-- GET /v1/ledger?location=X (and its CSV export, a page at a time) had no index serving (location, order):
-- SQLite read every event of the location by events_order and sorted them all for each page (0.24 s a page
-- for a location of 160,000 events; the only other way, events_time, walks the whole ledger's events). This
-- index leads with the location and follows the ledger's order; the table's primary key (agent_id, event_id)
-- ends it, so it holds the whole order key (occurred_at, agent_id, seq, event_id) and a page is a range of it.
CREATE INDEX events_place_time ON events (location, occurred_at, agent_id, seq);

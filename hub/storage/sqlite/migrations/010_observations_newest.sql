-- shelfsync hub, SQLite schema version 10: the newest observation of each (system, location, sku), with the
-- hub's on_hand as of its time, kept as observations arrive and as ingest moves the key's stock
-- (hub.storage.reports.add_newest, settle_observed). The divergence reads (GET /v1/divergence, the exceptions'
-- divergence source) walk its diverging rows in their order through a partial index and stop at a page; they
-- used to number every observation ever received and compute the hub's figure of each newest one until a page
-- of them diverged (all of them when the stores agree with the hub). A hub of version 9 still sharing the
-- database would not keep it: it is taken out of service by this version (check_not_newer).
CREATE TABLE observations_newest (
    location       TEXT NOT NULL,
    sku            TEXT NOT NULL,
    system         TEXT NOT NULL,
    on_hand        INTEGER NOT NULL,
    observed_at_ms INTEGER NOT NULL,
    agent_id       TEXT NOT NULL,
    obs_id         TEXT NOT NULL,
    source_file    TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL,
    hub_on_hand    INTEGER NOT NULL,   -- the hub's on_hand as of observed_at_ms (hub.storage.reports.on_hand_as_of)
    from_events    INTEGER NOT NULL,   -- 1: stock moved after the observation, hub_on_hand was summed from the events
    diverging      INTEGER NOT NULL,   -- 1: hub.resolver.diverges(on_hand, hub_on_hand)
    PRIMARY KEY (location, sku, system)
) WITHOUT ROWID;
-- The exceptions' order (newest received first), and GET /v1/divergence's (its primary key's).
CREATE INDEX observations_diverging_time ON observations_newest (received_at_ms DESC, location, sku, system)
    WHERE diverging = 1;
CREATE INDEX observations_diverging ON observations_newest (location, sku, system) WHERE diverging = 1;

-- What the hub holds already: the newest of each key, its figure from the stock row when nothing is ordered after
-- the observation, else from the events (the last count ordered before it plus the deltas after that count).
INSERT INTO observations_newest
    (location, sku, system, on_hand, observed_at_ms, agent_id, obs_id, source_file, received_at_ms, hub_on_hand,
     from_events, diverging)
SELECT location, sku, system, on_hand, observed_at_ms, agent_id, obs_id, source_file, received_at_ms, 0, 0, 0
FROM (SELECT o.*, ROW_NUMBER() OVER (PARTITION BY system, location, sku
      ORDER BY observed_at_ms DESC, received_at_ms DESC, agent_id DESC, obs_id DESC) AS newest
      FROM observations o) AS latest
WHERE newest = 1;
UPDATE observations_newest SET from_events = 1 WHERE EXISTS (
    SELECT 1 FROM stock s WHERE s.location = observations_newest.location AND s.sku = observations_newest.sku
    AND s.max_at >= (observations_newest.observed_at_ms + 1) * 65536);
UPDATE observations_newest SET hub_on_hand = COALESCE((
    SELECT s.on_hand FROM stock s WHERE s.location = observations_newest.location AND s.sku = observations_newest.sku
), 0) WHERE from_events = 0;
UPDATE observations_newest SET hub_on_hand = COALESCE((
    SELECT c.qty FROM events c
    WHERE c.location = observations_newest.location AND c.sku = observations_newest.sku AND c.kind = 'count'
    AND c.occurred_at < (observations_newest.observed_at_ms + 1) * 65536
    ORDER BY c.occurred_at DESC, c.agent_id DESC, c.seq DESC, c.event_id DESC LIMIT 1
), 0) + (
    SELECT COALESCE(SUM(d.qty), 0) FROM events d
    WHERE d.location = observations_newest.location AND d.sku = observations_newest.sku
    AND d.kind IN ('adjust', 'receive', 'return', 'sale', 'transfer_in', 'transfer_out')
    AND d.occurred_at < (observations_newest.observed_at_ms + 1) * 65536
    AND NOT EXISTS (
        SELECT 1 FROM events c
        WHERE c.location = d.location AND c.sku = d.sku AND c.kind = 'count'
        AND c.occurred_at < (observations_newest.observed_at_ms + 1) * 65536
        AND (c.occurred_at, c.agent_id, c.seq, c.event_id) > (d.occurred_at, d.agent_id, d.seq, d.event_id))
) WHERE from_events = 1;
UPDATE observations_newest SET diverging = CASE
    WHEN on_hand <> hub_on_hand
         AND (abs(on_hand - hub_on_hand) >= 2 OR abs(on_hand - hub_on_hand) * 20 >= abs(hub_on_hand)) THEN 1
    ELSE 0 END;

-- The exceptions' negative stock and refused events, newest first, for the chain and for one store: read through
-- these and stopped at a page, not sorted whole (a sort of every negative row or refusal the hub ever raised).
DROP INDEX stock_negative;
CREATE INDEX stock_negative ON stock (location, updated_at_ms DESC, sku) WHERE on_hand < 0;
CREATE INDEX stock_negative_time ON stock (updated_at_ms DESC, location, sku) WHERE on_hand < 0;
CREATE INDEX rejections_listed ON rejections (received_at_ms DESC, agent_id, event_id, content_hash)
    WHERE code <> 'discarded';
CREATE INDEX rejections_listed_at ON rejections (location, received_at_ms DESC, agent_id, event_id, content_hash)
    WHERE code <> 'discarded';

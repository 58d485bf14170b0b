-- shelfsync hub, PostgreSQL schema version 9: the newest sent_ms heard from each agent (its wall clock when it
-- sent a sync). The clock skew is measured from a request's sent_ms only when it is newer than this: a request
-- held by a middlebox and replayed late (an empty heartbeat of a caught-up agent is not older than the mark, so
-- the mark alone does not tell it) would otherwise show the agent's clock behind by as long as it was held.
-- A hub of version 8 sharing the database during an upgrade leaves it as it is (it sets the skew as before).
ALTER TABLE agents ADD COLUMN clock_sent_ms bigint;

-- A channel order's reserve events, found by the order's ref (hub.channels.state.order_line_skus: the SKU each
-- line was reserved on, read when a line finds no reservation on its SKU — after a rename, and for every line of
-- an order holding a bundle). The ledger's other indexes lead with the location, the SKU or the time, so that read
-- walked every partition of the whole ledger. Partial: only reserve events are in it, a few per channel order.
-- Built once, at the upgrade, while the ledger takes no writes (a scan of the ledger: minutes at 100M events).
CREATE INDEX events_reserve_ref ON events (ref, agent_id) WHERE kind = 'reserve';

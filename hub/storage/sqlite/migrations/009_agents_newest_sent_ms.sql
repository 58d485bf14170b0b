-- shelfsync hub, SQLite schema version 9: the newest sent_ms heard from each agent (its wall clock when it sent
-- a sync). The clock skew is measured from a request's sent_ms only when it is newer than this: a request held
-- by a middlebox and replayed late (an empty heartbeat of a caught-up agent is not older than the mark, so the
-- mark alone does not tell it) would otherwise show the agent's clock behind by as long as it was held.
ALTER TABLE agents ADD COLUMN clock_sent_ms INTEGER;

-- shelfsync hub, PostgreSQL schema version 7: an agent's stored events are found through the locations it
-- stored events in, by the ledger's own primary key (location, agent_id, event_id).
--
-- Until version 6 every event also had a row in event_ids ((agent_id, event_id) -> location), written
-- beside it, so that a resend could find its partition and an id stored under two locations was refused by
-- a primary key. Both now come from the ledger itself:
-- * agent_locations lists the locations each agent has stored events in (a row when its first event of a
--   location is stored, in the same transaction), and a resend is looked up in those partitions only;
-- * every batch of an agent runs under that agent's lock (hub.storage.postgres.ingest.sender_lockable), so
--   one batch sees what the one before stored, under any location, before it stores an id.
CREATE TABLE agent_locations (
    agent_id text COLLATE "C" NOT NULL,
    location text COLLATE "C" NOT NULL,
    PRIMARY KEY (agent_id, location)
);
INSERT INTO agent_locations (agent_id, location) SELECT DISTINCT agent_id, location FROM events;
DROP TABLE event_ids;

-- The ids of an agent's events stored between two ids (and among p_ids, unless NULL), one location's partition
-- at a time: a statement that named the agent's locations as a set would have its cached plan open every
-- partition of the ledger and its indexes on each run, where one location per statement opens one.
CREATE FUNCTION agent_event_ids(p_agent text, p_low bytea, p_high bytea, p_limit bigint, p_ids bytea[])
RETURNS TABLE (event_id bytea, location text)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    at text;
    found_n bigint;
    left_n bigint := p_limit;
BEGIN
    FOR at IN SELECT a.location FROM agent_locations a WHERE a.agent_id = p_agent ORDER BY a.location LOOP
        IF p_ids IS NULL THEN
            RETURN QUERY SELECT e.event_id, e.location FROM events e
                WHERE e.location = at AND e.agent_id = p_agent AND e.event_id BETWEEN p_low AND p_high
                ORDER BY e.event_id LIMIT left_n;
        ELSE
            RETURN QUERY SELECT e.event_id, e.location FROM events e
                WHERE e.location = at AND e.agent_id = p_agent AND e.event_id = ANY(p_ids)
                AND e.event_id BETWEEN p_low AND p_high LIMIT left_n;
        END IF;
        GET DIAGNOSTICS found_n = ROW_COUNT;
        left_n := left_n - found_n;
        EXIT WHEN left_n <= 0;
    END LOOP;
END
$$;

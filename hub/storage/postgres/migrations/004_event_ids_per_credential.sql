-- shelfsync hub, schema version 4: event ids namespaced by the credential that sent them,
-- and each agent epoch's lineage (the changes of schema_sqlite_v4.sql).
--
-- An event is identified by (agent_id, event_id). event_ids maps that key to the event's
-- location (its partition), so a resend finds its row; events keeps the hash partitioning
-- by location, its primary key (location, agent_id, event_id) containing the partition key.

ALTER TABLE event_ids ADD COLUMN agent_id text COLLATE "C";
UPDATE event_ids i SET agent_id = e.agent_id FROM events e WHERE e.location = i.location AND e.event_id = i.event_id;
DELETE FROM event_ids WHERE agent_id IS NULL;  -- an id without its event: nothing to find by it
ALTER TABLE event_ids ALTER COLUMN agent_id SET NOT NULL;
ALTER TABLE event_ids DROP CONSTRAINT event_ids_pkey;
ALTER TABLE event_ids ADD PRIMARY KEY (agent_id, event_id);

ALTER TABLE events DROP CONSTRAINT events_pkey;
ALTER TABLE events ADD PRIMARY KEY (location, agent_id, event_id);

ALTER TABLE rejections DROP CONSTRAINT rejections_pkey;
ALTER TABLE rejections ADD PRIMARY KEY (agent_id, event_id, content_hash);

-- The sender's lineage digest at each mark (protocol.SyncRequest.chain); NULL: unknown.
ALTER TABLE agent_hwm ADD COLUMN chain bytea;

-- shelfsync hub, SQLite schema version 7: nothing changes in a SQLite hub's file.
--
-- The PostgreSQL hub's version 7 drops its separate event-id table: its ledger is partitioned by location,
-- so it finds an agent's events through the locations the agent stored events in. A SQLite ledger is one
-- table whose primary key (agent_id, event_id) finds an event wherever it is, as it did before. The step
-- exists so that a schema version means the same on both backends.
SELECT 1;

-- shelfsync hub, PostgreSQL schema version 33: the settings each hub process sharing the database judges events by.
--
-- hub_processes holds one row per hub process that started on the database: its name (HOST:PID, as its sessions'
-- application_name "shelfsync-hub HOST:PID POOL" names it), when it started (its own clock) and the settings by
-- which two hubs would judge the same stores differently (clock_window_s, a channel's buffer ...) as a JSON object
-- of texts. A hub compares its own with those of the hubs still running (those with a session in
-- pg_stat_activity) as it starts, says in its log which differ, and shows them in GET /v1/status
-- (hub.peer_settings). The rows of hubs no longer running are deleted by the next hub to start.
CREATE TABLE hub_processes (
    name       TEXT PRIMARY KEY,
    started_ms BIGINT NOT NULL,
    settings   TEXT NOT NULL
);

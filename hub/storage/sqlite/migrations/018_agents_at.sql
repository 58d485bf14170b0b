-- shelfsync hub, SQLite schema version 18: the locations each credential is bound to, a row per (location, credential),
-- beside agents.locations (a JSON list, which no index reads). An order webhook finds the store PCs booking at the
-- order's locations (their clock skew, hub.storage.credentials.clock_skews) by this table's primary key, instead of
-- reading every credential of every store: its cost no longer grows with the stores. Written with agents.locations
-- by the statements that add a credential and bind it (hub.storage.credentials); filled from the credentials held now.
CREATE TABLE agents_at (
    location TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    PRIMARY KEY (location, agent_id)
) WITHOUT ROWID;
INSERT OR IGNORE INTO agents_at (location, agent_id)
SELECT j.value, a.agent_id FROM agents a, json_each(a.locations) j;

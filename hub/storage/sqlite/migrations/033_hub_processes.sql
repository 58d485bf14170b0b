-- shelfsync hub, SQLite schema version 33: the settings each hub process sharing the database judges events by.
--
-- The table of PostgreSQL schema version 33 (hub_processes: one row per hub process, its HOST:PID name, when it
-- started, its settings as a JSON object of texts), kept so both backends have the same tables: one hub process
-- serves a SQLite file, so it has no other hub to compare its settings with, and writes no row.
CREATE TABLE hub_processes (
    name       TEXT PRIMARY KEY,
    started_ms INTEGER NOT NULL,
    settings   TEXT NOT NULL
);

-- shelfsync hub, PostgreSQL schema version 23: what the hub knew of its own clock when it held an event in the
-- clock quarantine (the columns of the SQLite schema's 023_quarantine_hub_clock.sql). NULL: not known.

ALTER TABLE quarantine
    ADD COLUMN sent_ms bigint,           -- the sender's wall clock when it sent the batch
    ADD COLUMN hub_clock_off_ms bigint;  -- the hub's clock was this far off its stores' then

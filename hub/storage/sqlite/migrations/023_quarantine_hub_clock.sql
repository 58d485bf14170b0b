-- shelfsync hub, SQLite schema version 23: what the hub knew of its own clock when it held an event in the clock
-- quarantine (hub.clock_window, docs/faults.md "Clocks"), so the events held because of the hub's own wrong clock
-- are released at their own time once it is right (hub.storage.held.release_hub_clock), not one by one.
-- NULL: not known (a row from before, or held while the hub had no reason to doubt its clock).
ALTER TABLE quarantine ADD COLUMN sent_ms INTEGER;           -- the sender's wall clock when it sent the batch
ALTER TABLE quarantine ADD COLUMN hub_clock_off_ms INTEGER;  -- the hub's clock was this far off its stores' then

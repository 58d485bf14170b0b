-- shelfsync hub, SQLite schema version 32: what the hub found of its own clock is kept in the database, and a
-- held event keeps whether the other stores sided with the hub's clock when it was held.
--
-- hub_clock_finding holds one row: how far the hub's clock was found off its stores' (offset_ms), at the hub's time
-- found_at_ms, and when it was found right again (right_at_ms, NULL: not yet). Every hub process sharing the
-- database writes it when it finds its clock off (SQLite has one writer: no lock besides), and the write of a held
-- event not known to be the hub clock's reads it: an event held by a sync judged before the hub noticed, written
-- after it marked what it held, is marked in its own transaction (hub.storage.held.finding_covers).
--
-- quarantine.hub_clock_vouched: how many of the other stores that synced lately put the hub's clock right when the
-- event was held, when they were more than half of them (the store's clock was the odd one); NULL: they did not,
-- or there were none. A release by an admin finding the hub's clock the wrong one is refused for such events.
CREATE TABLE hub_clock_finding (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    offset_ms   INTEGER NOT NULL,
    found_at_ms INTEGER NOT NULL,
    right_at_ms INTEGER
);
ALTER TABLE quarantine ADD COLUMN hub_clock_vouched INTEGER;

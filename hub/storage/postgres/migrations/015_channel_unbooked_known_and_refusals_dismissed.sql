-- shelfsync hub, PostgreSQL schema version 15: whether a level's last confirmation says what its count took off for
-- register sales whose orders had not reached the hub (less_units, sales_from_ms: schema 14). A count pushed before
-- schema 14 took them off in memory only and its row says nothing (0, NULL): it is unknown (less_known 0), and the
-- hub reads Square's sales once for that level, at its next push or reconciliation, instead of trusting the 0
-- (docs/channels.md "Square"). A row that says something was taken off is known. A hub of version 14 sharing the
-- database during an upgrade writes rows left unknown: they are read once more, which changes nothing.
-- A refused Square order names the hub location its Square location feeds (location, channel_location; NULL when
-- the refusal could not say: a location not in the pool), and an admin who booked its sale by hand dismisses it
-- (dismissed_at_ms, dismissed_by: off the exceptions list, still refused for the pusher). A refusal stored before
-- names none.
ALTER TABLE channel_pushed ADD COLUMN less_known smallint NOT NULL DEFAULT 0;
UPDATE channel_pushed SET less_known = 1 WHERE less_units > 0 OR sales_from_ms IS NOT NULL;
ALTER TABLE channel_orders_refused ADD COLUMN location text;
ALTER TABLE channel_orders_refused ADD COLUMN channel_location text;
ALTER TABLE channel_orders_refused ADD COLUMN dismissed_at_ms bigint;
ALTER TABLE channel_orders_refused ADD COLUMN dismissed_by text;

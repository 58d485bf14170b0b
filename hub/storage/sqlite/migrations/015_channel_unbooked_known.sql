-- shelfsync hub, SQLite schema version 15: whether a level's last confirmation says what its count took off for
-- register sales whose orders had not reached the hub (less_units, sales_from_ms: schema 14). A count pushed before
-- schema 14 took them off in memory only and its row says nothing (0, NULL): it is unknown (less_known 0), and the
-- hub reads Square's sales once for that level, at its next push or reconciliation, instead of trusting the 0
-- (docs/channels.md "Square"). A row that says something was taken off is known. A hub of version 14 sharing the
-- database during an upgrade writes rows left unknown: they are read once more, which changes nothing.
ALTER TABLE channel_pushed ADD COLUMN less_known INTEGER NOT NULL DEFAULT 0;
UPDATE channel_pushed SET less_known = 1 WHERE less_units > 0 OR sales_from_ms IS NOT NULL;

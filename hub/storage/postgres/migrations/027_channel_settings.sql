-- shelfsync hub, PostgreSQL schema version 27: the settings each channel last ran with that decide what it shows and
-- where (its kind, endpoint, pool, buffer and mapping CSV), as JSON. A hub started with other settings for the
-- channel (a location added to or taken out of its pool, another buffer, another shop or receiver) loads its mapping
-- again and pushes every level once (docs/channels.md "Loading the mapping pushes every level once"): its levels
-- are the hub's changes pushed, and a change of settings is no change of a count. NULL (a channel that last ran
-- before this version): the settings it runs with next are stored, and nothing is pushed for them.
ALTER TABLE channel_state ADD COLUMN settings text;

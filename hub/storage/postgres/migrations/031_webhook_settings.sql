-- shelfsync hub, PostgreSQL schema version 31: the settings each webhook's cursor was earned against (its url without
-- credentials or query, and its location), as JSON. A hub started with others for the webhook (another receiver,
-- another location) starts its feed from the first change again, so the receiver is told every current count
-- (docs/hub-api.md "Webhooks"); a hub started before those settings were stored leaves the webhook to the hubs
-- that stored them. NULL (a webhook that last ran before this version): the settings it runs with next are
-- stored, and its cursor stays.
ALTER TABLE webhooks ADD COLUMN settings text;

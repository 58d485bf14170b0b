-- shelfsync hub, PostgreSQL schema version 12: the exceptions' overdue-transfer, unknown-destination, clock-quarantine
-- and sales-channel sources are read through indexes in the list's order (newest first, then the row's key) and
-- stop at a page, for the chain and for one store; until now each sorted all its rows for every page.
-- transfers_open (by shipped time) made the overdue and unknown-destination sources read every open transfer and
-- sort them, and the unknown-destination source looked each one's destination up in the ledger; it is now in the
-- list's order, and one store's open transfers are read through either end (transfers_open_to, _from), as
-- schema 11's transfers with a finding are. The destinations of the open transfers are read from
-- transfers_open_to one each (a few hundred at most), and only those found unknown are looked for in the list.
-- These three are written only by transfer events while a transfer is open (shipped and not all received), as
-- transfers_open was; no other event writes them. quarantine_pending walked backwards sorted each time's rows
-- again (and one store's held events walked the chain's); channel_divergences_found likewise; channel_refusals had
-- no index of its time. Held events are written only for events outside the clock window, a channel's rows by
-- its pusher and reconciliation: none by the events ingest writes.
DROP INDEX transfers_open;
CREATE INDEX transfers_open ON transfers (updated_at_ms DESC, ref, sku) WHERE closed_at IS NULL AND shipped > received;
CREATE INDEX transfers_open_to ON transfers ((COALESCE(in_to, out_to)), updated_at_ms DESC, ref, sku)
    WHERE closed_at IS NULL AND shipped > received;
CREATE INDEX transfers_open_from ON transfers ((COALESCE(out_from, in_from)), updated_at_ms DESC, ref, sku)
    WHERE closed_at IS NULL AND shipped > received;
DROP INDEX quarantine_pending;
CREATE INDEX quarantine_pending ON quarantine (received_at_ms DESC, quarantine_id) WHERE status = 'pending';
CREATE INDEX quarantine_pending_at ON quarantine (location, received_at_ms DESC, quarantine_id)
    WHERE status = 'pending';
DROP INDEX channel_divergences_found;
CREATE INDEX channel_divergences_found ON channel_divergences (found_at_ms DESC, channel, divergence_id);
CREATE INDEX channel_divergences_at ON channel_divergences (location, found_at_ms DESC, channel, divergence_id);
CREATE INDEX channel_refusals_time ON channel_refusals (at_ms DESC, channel, level_key);
CREATE INDEX channel_refusals_at ON channel_refusals (location, at_ms DESC, channel, level_key);

-- shelfsync hub, SQLite schema version 26: an adjust carrying a ref makes no transfer of its own.
--
-- Since schema 25 an adjust carrying a ref other than its source books out a receipt of that ref at its location
-- (the wrong store's procedure, docs/faults.md Transfers). Ingest, and step 25 from the ledger, made a transfer row
-- of every such adjust, though most refs of adjusts are a POS's stock-take or damage note numbers: rows nothing was
-- shipped or received under, and one adjusting up (+3 on a stock-take) was listed as a transfer_unmatched of units
-- never received. Ingest now makes a transfer only of a shipment or a receipt, and reads the book-outs stored
-- before it from the ledger when it does (events_adjust_ref); this step drops the rows no shipment or receipt made
-- (no shipper, received nowhere). Nothing they held is lost: their book-outs stay in the ledger. No count moves:
-- such a row has nothing in transit.
--
-- events_adjust_ref finds one receipt's book-outs among a location's adjusts of a SKU; its build reads the ledger.
DELETE FROM transfers WHERE shippers = '' AND in_to IS NULL;
CREATE INDEX events_adjust_ref ON events (location, sku, ref) WHERE kind = 'adjust' AND ref IS NOT NULL;
-- A book-out of goods received by mistake that names no transfer books nothing out; the agent, the handheld and
-- POST /v1/events refuse one, and one queued before (an older agent, a POS export) is booked and listed
-- (book_out_without_ref, hub.storage.exceptions) by these indexes, newest first: a few rows of the ledger, the
-- chain's and one store's (without the second, one store's list walked events_place_time, all its events, and
-- sorted them).
CREATE INDEX events_book_out_unnamed ON events (received_at_ms DESC, agent_id, event_id)
    WHERE kind = 'adjust' AND qty < 0 AND reason = 'received by mistake, sent on' AND (ref IS NULL OR ref = source);
CREATE INDEX events_book_out_unnamed_at ON events (location, received_at_ms DESC, agent_id, event_id)
    WHERE kind = 'adjust' AND qty < 0 AND reason = 'received by mistake, sent on' AND (ref IS NULL OR ref = source);

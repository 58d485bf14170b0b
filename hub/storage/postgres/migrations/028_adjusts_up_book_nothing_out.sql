-- shelfsync hub, PostgreSQL schema version 28: an adjust up carrying a transfer's ref is no receipt, and the book-out
-- reason is the hub's whatever its capitals and spaces.
--
-- booked_out is the net of the adjusts carrying a receipt's ref where it was received (-sum of qty, schema 25): an
-- adjust down books units out, one up corrects a book-out (-5, then +2 as only 3 were sent on: 3 booked out). An
-- adjust up with nothing booked out made it below 0, and the rule "received > returned + booked_out" listed more
-- than was received (5 received, +2: 7 unmatched). Below 0 it books nothing: the rule is now also "received >
-- returned" (hub.storage.exceptions.TRANSFER_FINDING word for word), so the indexes whose WHERE holds it are made
-- again. No row changes: booked_out was always the net.
--
-- The reason "received by mistake, sent on" was matched as exact text, so a POS export's "Received by mistake,  sent
-- on" naming no transfer was never listed as book_out_without_ref. Ingest now stores it in the hub's words whatever
-- its capitals and spaces (protocol.stored_reason); the events stored before are worded so here, as step 29 words
-- them (its comment says how; this step's first version used lower() and \s, which follow the database's collation
-- and made "RECEİVED BY MİSTAKE, SENT ON" the reason, a text lost once rewritten). This reads the ledger
-- (hub.storage.migrations.LEDGER_STEPS).
UPDATE events SET reason = 'received by mistake, sent on'
WHERE reason ILIKE '%received%by%mi%a%e,%ent%on%' AND reason <> 'received by mistake, sent on'
  AND btrim(regexp_replace(
      translate(replace(replace(reason, chr(64261), 'st'), chr(64262), 'st'),
                'ABCDEFGHIJKLMNOPQRSTUVWXYZ' || chr(8490) || chr(383), 'abcdefghijklmnopqrstuvwxyzks'),
      '[\t\n\v\f\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+', ' ', 'g'), ' ')
    = 'received by mistake, sent on';
DROP INDEX transfers_finding;
DROP INDEX transfers_finding_to;
DROP INDEX transfers_finding_from;
CREATE INDEX transfers_finding ON transfers (updated_at_ms DESC, dest, ref, sku)
    WHERE ((shipped = 0 AND received > returned + booked_out AND received > returned) OR (shipped > 0
           AND received + returned > 0 AND received + returned <> shipped) OR (closed_at IS NOT NULL
           AND shipped > received + returned) OR shippers LIKE '%,%');
CREATE INDEX transfers_finding_to ON transfers (dest, updated_at_ms DESC, ref, sku)
    WHERE ((shipped = 0 AND received > returned + booked_out AND received > returned) OR (shipped > 0
           AND received + returned > 0 AND received + returned <> shipped) OR (closed_at IS NOT NULL
           AND shipped > received + returned) OR shippers LIKE '%,%');
CREATE INDEX transfers_finding_from ON transfers ((COALESCE(out_from, in_from)), updated_at_ms DESC, dest, ref, sku)
    WHERE ((shipped = 0 AND received > returned + booked_out AND received > returned) OR (shipped > 0
           AND received + returned > 0 AND received + returned <> shipped) OR (closed_at IS NOT NULL
           AND shipped > received + returned) OR shippers LIKE '%,%');

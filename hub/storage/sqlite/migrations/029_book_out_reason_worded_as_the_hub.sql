-- shelfsync hub, SQLite schema version 29 (nothing changes in the schema): the book-out reason stored
-- before ingest worded it is worded as ingest words it, in the ledger, the refused rows and the held ones.
--
-- Step 28 worded the stored reasons with lower() and plain spaces: SQLite's lower() folds ASCII letters only, so
-- a reason holding a no-break space, U+3000, a tab, the Kelvin sign, a long s or the ligature st stayed as it
-- came, was not listed as book_out_without_ref, and a resend of its event (worded by ingest) was refused as a
-- conflict; and it left the refused (rejections) and held (quarantine) rows as sent. Here each is worded by the
-- code ingest words it with (protocol.stored_reason: casefolded, split at Python's white space), which the
-- migration registers on its connection as shelfsync_stored_reason. The LIKE (ASCII letters in any case) passes
-- every spelling that folds to the reason: its letters k, s and st may come as the Kelvin sign, a long s or a
-- ligature, so it names none of them. This reads the ledger (hub.storage.migrations.LEDGER_STEPS).
UPDATE events SET reason = 'received by mistake, sent on'
WHERE reason LIKE '%received%by%mi%a%e,%ent%on%' AND reason <> 'received by mistake, sent on'
  AND shelfsync_stored_reason(reason) = 'received by mistake, sent on';
UPDATE rejections SET reason = 'received by mistake, sent on'
WHERE reason LIKE '%received%by%mi%a%e,%ent%on%' AND reason <> 'received by mistake, sent on'
  AND shelfsync_stored_reason(reason) = 'received by mistake, sent on';
UPDATE quarantine SET reason = 'received by mistake, sent on'
WHERE reason LIKE '%received%by%mi%a%e,%ent%on%' AND reason <> 'received by mistake, sent on'
  AND shelfsync_stored_reason(reason) = 'received by mistake, sent on';

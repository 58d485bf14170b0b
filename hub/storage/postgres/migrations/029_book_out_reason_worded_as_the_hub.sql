-- shelfsync hub, PostgreSQL schema version 29 (nothing changes in the schema): the book-out reason stored
-- before ingest worded it is worded as ingest words it, in the ledger, the refused rows and the held ones.
--
-- Step 28 worded the stored reasons with lower() and \s, which follow the database's collation, not Python: \s
-- leaves the no-break spaces (U+00A0, U+2007, U+202F) and U+001C-U+001F, U+0085; lower() leaves the long s, and
-- under most collations makes "i" of the dotted capital I (Python's casefold makes "i̇", no reason), so step 28
-- worded "RECEİVED BY MİSTAKE, SENT ON" as the book-out; and it left the refused (rejections) and held (quarantine)
-- rows as sent. Here each is worded exactly as ingest words it (protocol.stored_reason): a reason is the book-out
-- reason when, each run of Python's white space (str.split: the class below, character for character) made one
-- space and none left before or after, and casefolded, it is that text. The only characters whose casefold is
-- made of the reason's letters are A-Z, the Kelvin sign (k), the long s (s) and the ligatures U+FB05 and U+FB06
-- (st): translate and replace fold those and nothing else, whatever the collation. The ILIKE (ASCII letters in any
-- case) passes every spelling that folds to the reason: it names none of k, s and st. This reads the ledger
-- (hub.storage.migrations.LEDGER_STEPS).
UPDATE events SET reason = 'received by mistake, sent on'
WHERE reason ILIKE '%received%by%mi%a%e,%ent%on%' AND reason <> 'received by mistake, sent on'
  AND btrim(regexp_replace(
      translate(replace(replace(reason, chr(64261), 'st'), chr(64262), 'st'),
                'ABCDEFGHIJKLMNOPQRSTUVWXYZ' || chr(8490) || chr(383), 'abcdefghijklmnopqrstuvwxyzks'),
      '[\t\n\v\f\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+', ' ', 'g'), ' ')
    = 'received by mistake, sent on';
UPDATE rejections SET reason = 'received by mistake, sent on'
WHERE reason ILIKE '%received%by%mi%a%e,%ent%on%' AND reason <> 'received by mistake, sent on'
  AND btrim(regexp_replace(
      translate(replace(replace(reason, chr(64261), 'st'), chr(64262), 'st'),
                'ABCDEFGHIJKLMNOPQRSTUVWXYZ' || chr(8490) || chr(383), 'abcdefghijklmnopqrstuvwxyzks'),
      '[\t\n\v\f\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+', ' ', 'g'), ' ')
    = 'received by mistake, sent on';
UPDATE quarantine SET reason = 'received by mistake, sent on'
WHERE reason ILIKE '%received%by%mi%a%e,%ent%on%' AND reason <> 'received by mistake, sent on'
  AND btrim(regexp_replace(
      translate(replace(replace(reason, chr(64261), 'st'), chr(64262), 'st'),
                'ABCDEFGHIJKLMNOPQRSTUVWXYZ' || chr(8490) || chr(383), 'abcdefghijklmnopqrstuvwxyzks'),
      '[\t\n\v\f\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+', ' ', 'g'), ' ')
    = 'received by mistake, sent on';

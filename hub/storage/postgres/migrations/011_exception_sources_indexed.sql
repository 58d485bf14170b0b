-- shelfsync hub, PostgreSQL schema version 11: the exceptions' transfer and import-issue sources are read through
-- indexes in the list's order (newest first, then the row's key) and stop at a page, for the chain and for one
-- store. The transfer source's condition is an OR of three findings, which kept the planner off
-- transfers_exceptions (the first of them only): every page sorted every transfer the chain ever made.
-- transfers_finding holds the transfers with a finding (its WHERE is hub.storage.exceptions.TRANSFER_FINDING word
-- for word, which the planner needs); one store's are read through either end (transfers_finding_to, _from) and
-- where a misdirected transfer was shipped (transfers_misdirected). They are written only when a transfer event
-- changes a transfer with a finding (received short or over, misdirected, written off: not the many received in
-- full), never by other events; transfers_exceptions, read by nothing since the OR, is dropped. import_issues_time,
-- walked backwards, sorted each time's rows again; one store's issues walked the chain's dropping the others'.
-- Import issues are written when an agent reports a POS export's bad rows, not by events.
DROP INDEX transfers_exceptions;
CREATE INDEX transfers_finding ON transfers (updated_at_ms DESC, ref, sku)
    WHERE ((received > 0 AND received <> shipped) OR (closed_at IS NOT NULL AND shipped > received)
           OR (in_to IS NOT NULL AND out_to IS NOT NULL AND in_to <> out_to));
CREATE INDEX transfers_finding_to ON transfers ((COALESCE(in_to, out_to)), updated_at_ms DESC, ref, sku)
    WHERE ((received > 0 AND received <> shipped) OR (closed_at IS NOT NULL AND shipped > received)
           OR (in_to IS NOT NULL AND out_to IS NOT NULL AND in_to <> out_to));
CREATE INDEX transfers_finding_from ON transfers ((COALESCE(out_from, in_from)), updated_at_ms DESC, ref, sku)
    WHERE ((received > 0 AND received <> shipped) OR (closed_at IS NOT NULL AND shipped > received)
           OR (in_to IS NOT NULL AND out_to IS NOT NULL AND in_to <> out_to));
CREATE INDEX transfers_misdirected ON transfers (out_to, updated_at_ms DESC, ref, sku)
    WHERE out_to IS NOT NULL AND in_to IS NOT NULL AND out_to <> in_to;
DROP INDEX import_issues_time;
CREATE INDEX import_issues_time ON import_issues (received_at_ms DESC, agent_id, issue_id);
CREATE INDEX import_issues_at ON import_issues (location, received_at_ms DESC, agent_id, issue_id);

-- shelfsync hub, SQLite schema version 34: movements a store agent reports the hub lacks for good (protocol.LostReport):
-- the hub had acknowledged them, its database was then restored from a copy older than them, and the agent's
-- outbox no longer holds them to send again (retention purged them, or they were acknowledged to the agent id it
-- had before a rebind). Written in the ingest transaction of the sync request that carried the report; the same
-- report again (the agent sends it until a hub answers one carrying it) changes nothing, a dismissed one included.
-- Each one not dismissed is the exception agent_movements_lost (hub.storage.exceptions, LOST): the store's stock
-- must be counted again, and the hub cannot say which SKUs. An admin dismisses an agent's entries once it was
-- (POST /v1/agents/{agent_id}/lost/dismiss).
CREATE TABLE agent_lost (
    agent_id     TEXT NOT NULL,     -- the agent that reported them: its credential's locations are the store's
    epoch        INTEGER NOT NULL,  -- the outbox epoch their seqs are of
    first_seq    INTEGER NOT NULL,  -- their seqs, first_seq to last_seq
    last_seq     INTEGER NOT NULL,
    lost         INTEGER NOT NULL,  -- how many of those seqs are lost (at_least = 1: at least that many)
    at_least     INTEGER NOT NULL,  -- 1: acknowledged to of_agent before a rebind, the count a lower bound
    of_agent     TEXT,              -- the agent id they were acknowledged to, when not agent_id (NULL: agent_id)
    found_ms     INTEGER NOT NULL,  -- the agent's wall ms when it found the hub lacking them
    received_ms  INTEGER NOT NULL,  -- hub wall ms when the report first arrived: the exception's time
    dismissed_ms INTEGER,           -- hub wall ms when an admin dismissed it (NULL: listed)
    dismissed_by TEXT,              -- … and which admin
    PRIMARY KEY (agent_id, epoch, first_seq, last_seq)
);
-- The listed ones in the exception list's order.
CREATE INDEX agent_lost_listed ON agent_lost (received_ms, agent_id, epoch, first_seq, last_seq)
    WHERE dismissed_ms IS NULL;

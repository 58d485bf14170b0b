-- shelfsync hub, PostgreSQL schema version 34: movements a store agent reports the hub lacks for good (the table of
-- the SQLite schema's 034_agent_lost.sql, which says what each column holds), written in the ingest transaction of
-- the sync request that carried the report (protocol.LostReport). Each one not dismissed is the exception
-- agent_movements_lost; an admin dismisses an agent's entries once its store was counted again.
CREATE TABLE agent_lost (
    agent_id     text COLLATE "C" NOT NULL,
    epoch        bigint NOT NULL,
    first_seq    bigint NOT NULL,
    last_seq     bigint NOT NULL,
    lost         bigint NOT NULL,
    at_least     boolean NOT NULL,
    of_agent     text,
    found_ms     bigint NOT NULL,
    received_ms  bigint NOT NULL,
    dismissed_ms bigint,
    dismissed_by text,
    PRIMARY KEY (agent_id, epoch, first_seq, last_seq)
);
CREATE INDEX agent_lost_listed ON agent_lost (received_ms, agent_id, epoch, first_seq, last_seq)
    WHERE dismissed_ms IS NULL;

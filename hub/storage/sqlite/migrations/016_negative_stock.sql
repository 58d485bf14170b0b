-- shelfsync hub, SQLite schema version 16: nothing changes in a SQLite hub's file.
--
-- The PostgreSQL hub's version 16 keeps its stock rows below zero (their keys and times) in a table of their own,
-- for the exceptions' negative-stock source: its stock table has no index of on_hand, which would keep every
-- batch's stock updates from being heap-only. A SQLite hub walks them through its partial indexes stock_negative
-- and stock_negative_time (schema 10), as it did before. The step exists so that a schema version means the same
-- on both backends.
SELECT 1;

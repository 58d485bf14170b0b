-- shelfsync hub, SQLite schema version 17: nothing changes in a SQLite hub's file.
--
-- The PostgreSQL hub's version 17 keeps its change feed as runs (a statement's changes of one location in one
-- row, each column an array) instead of a row per change: there, the ~430 rows of a batch and their index entries
-- were written while the feed's counter row was held by the statement. A SQLite hub has one writer and keeps a
-- row per change, as before. The step exists so that a schema version means the same on both backends.
SELECT 1;

-- shelfsync hub, SQLite schema version 8: nothing changes in a SQLite hub's file.
--
-- The PostgreSQL hub's version 8 makes its stored-id lookup (a function of its version 7) keep one plan per
-- connection. The step exists so that a schema version means the same on both backends.
SELECT 1;

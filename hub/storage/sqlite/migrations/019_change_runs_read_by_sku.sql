-- shelfsync hub, SQLite schema version 19: nothing changes in a SQLite hub's file.
--
-- The PostgreSQL hub's version 19 keeps its change feed's runs (schema 17) compressed in their rows, so a SKU's read
-- does not take them from the TOAST table, and merges the GIN index of their SKUs outside the feed's counter row.
-- A SQLite hub keeps a row per change and its index by SKU, as before. The step exists so that a schema version
-- means the same on both backends.
SELECT 1;

"""How a PostgreSQL hub numbers its change-feed rows in commit order (the reads are ``hub.storage.feed``).

Change ids come from the one row of ``change_counter``: ``append_changes``
raises it by the number of rows as the last statement of an ingest
transaction, and the row lock that UPDATE takes is held until COMMIT. The next
transaction to append waits for that commit, so ids follow commit order across
every hub process, and a reader that sees change N+1 also sees change N. The
lock is held for the insert of the change rows and the commit only.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from hub.storage.feed import CHANGE_FIELDS, change_values
from hub.storage.ingest import NewChange

# One statement (one round trip while the counter row is locked): the rows travel as one array of the table's
# row type, numbered by their place in it (their change_id, None, is the counter's to give); it answers the
# counter's new value, the newest change id once this transaction commits.
APPEND_SQL = (
    "WITH counter AS (UPDATE change_counter SET last_id = last_id + $1 RETURNING last_id), "
    f"appended AS (INSERT INTO changes ({CHANGE_FIELDS}) SELECT counter.last_id - $1 + v.n, "
    + ", ".join(f"v.{c}" for c in CHANGE_FIELDS.split(", ")[1:])
    + f" FROM counter, unnest($2::changes[]) WITH ORDINALITY AS v({CHANGE_FIELDS}, n)) "
    "SELECT last_id FROM counter"
)


async def append_changes(conn: asyncpg.Connection, rows: Sequence[NewChange], now_ms: int) -> int | None:
    """Append ``rows`` with the next change ids, in order (see the module doc); return the last of them
    (None when there are none)."""
    if not rows:
        return None
    return int(await conn.fetchval(APPEND_SQL, len(rows), [(None, *change_values(c, now_ms)) for c in rows]))

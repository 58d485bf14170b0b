"""How a PostgreSQL hub numbers its change-feed rows in commit order (the reads are ``hub.storage.feed``).

Change ids come from the one row of ``change_counter``: ``append_changes``
(or ``append_ctes`` inside a batch's closing statement) raises it by the number
of rows in the last statement of an ingest transaction, and the row lock that
UPDATE takes is held until COMMIT. The next transaction to append waits for
that commit, so ids follow commit order across every hub process, and a
reader that sees change N+1 also sees change N. The lock is held for that
statement and the commit only.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from hub.storage.feed import CHANGE_FIELDS
from hub.storage.ingest import NewChange


def append_ctes(count: str, rows: str) -> str:
    """The WITH items that raise the counter by ``count`` and append ``rows`` (parameters: an int8 and an array of
    the table's row type, numbered by their place in it: their change_id, None, is the counter's to give); the
    counter's new value — the newest change id once this transaction commits — is ``SELECT last_id FROM counter``."""
    return (
        f"counter AS (UPDATE change_counter SET last_id = last_id + {count} RETURNING last_id), "
        f"appended AS (INSERT INTO changes ({CHANGE_FIELDS}) SELECT counter.last_id - {count} + v.n, "
        + ", ".join(f"v.{c}" for c in CHANGE_FIELDS.split(", ")[1:])
        + f" FROM counter, unnest({rows}::changes[]) WITH ORDINALITY AS v({CHANGE_FIELDS}, n))"
    )


# One statement (one round trip while the counter row is locked).
APPEND_SQL = f"WITH {append_ctes('$1', '$2')} SELECT last_id FROM counter"


def change_rows(rows: Sequence[NewChange], now_ms: int) -> list[tuple[object, ...]]:
    """``rows`` as the array parameter of ``append_ctes``: ``change_values`` after a None id, each row built in one
    step (hundreds a batch)."""
    return [(None, *snapshot, b"".join(ids), now_ms) for snapshot, ids in rows]


async def append_changes(conn: asyncpg.Connection, rows: Sequence[NewChange], now_ms: int) -> int | None:
    """Append ``rows`` with the next change ids, in order (see the module doc); return the last of them
    (None when there are none)."""
    if not rows:
        return None
    return int(await conn.fetchval(APPEND_SQL, len(rows), change_rows(rows, now_ms)))

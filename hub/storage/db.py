"""What the SQL both backends share needs of a connection: ``Db``, in ``?`` parameter markers.

The shared queries (``hub.storage.store`` and the query modules it calls, ``hub.channels.state``) are
written once, with ``?`` markers. ``SqliteDb`` runs them as they are on an aiosqlite connection or the
SQLite writer thread's; ``PostgresDb`` numbers the markers ``$1, $2, …`` (once per SQL string) for asyncpg.
Rows come back as tuples, BLOB and bytea as ``bytes``, on both.

asyncpg types each parameter from its place in the statement and refuses a value of another type: a
parameter the statement leaves untyped (``? IS NULL``) needs a cast both backends take (``CAST(? AS
TEXT)``). The markers are found by a plain search, so shared SQL holds no ``?`` in a literal.

No driver is imported here: each backend hands in its own connection.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    import asyncpg

    from hub.storage.sqlite.writer import Db as SqliteConnection

T = TypeVar("T")

Row = tuple[Any, ...]
IN_LIST_MAX_PARAMS = 5_000  # parameters of one IN (…) list: well under both backends' bound per statement
_MARK = re.compile(r"\?")


class Db(Protocol):
    """One connection of a backend (inside a transaction when the store opened one), in ``?`` markers."""

    async def fetch(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        """Every row the statement returns."""

    async def fetchone(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        """The first row the statement returns, None when it returns none."""

    async def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run one statement; return how many rows it changed."""

    async def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        """Run one statement once per row of parameters (nothing when there are none)."""


class SqliteDb:
    """``Db`` over an aiosqlite connection (reads) or the writer thread's ``InlineConnection`` (writes)."""

    __slots__ = ("conn",)

    def __init__(self, conn: SqliteConnection) -> None:
        self.conn = conn

    async def fetch(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        return [tuple(r) for r in await self.conn.execute_fetchall(sql, params)]

    async def fetchone(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        rows = await self.fetch(sql, params)
        return rows[0] if rows else None

    async def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        cursor = await self.conn.execute(sql, params)
        return max(0, int(cursor.rowcount))

    async def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        if rows:
            await self.conn.executemany(sql, rows)


class PostgresDb:
    """``Db`` over an asyncpg connection: the same SQL with its markers numbered."""

    __slots__ = ("conn", "flushed_change_id")

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.flushed_change_id: int | None = None  # the feed's counter after this transaction's change rows

    async def fetch(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        return [tuple(r) for r in await self.conn.fetch(numbered(sql), *params)]

    async def fetchone(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        row = await self.conn.fetchrow(numbered(sql), *params)
        return None if row is None else tuple(row)

    async def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        return rows_changed(await self.conn.execute(numbered(sql), *params))

    async def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        if rows:
            await self.conn.executemany(numbered(sql), rows)


@lru_cache(maxsize=1024)
def numbered(sql: str, first: int = 1) -> str:
    """``sql`` with its ``?`` markers as PostgreSQL's ``$first, $first+1, …``."""
    n = first - 1

    def mark(_: re.Match[str]) -> str:
        nonlocal n
        n += 1
        return f"${n}"

    return _MARK.sub(mark, sql)


def rows_changed(status: str) -> int:
    """The row count of a PostgreSQL command tag (``UPDATE 3`` → 3, ``INSERT 0 1`` → 1)."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def marks(n: int) -> str:
    """``n`` markers for an IN (…) list."""
    return ", ".join("?" * n)


def in_lists(items: Sequence[T], params_each: int = 1) -> Iterable[Sequence[T]]:
    """``items`` in parts small enough for one statement's IN (…) list, ``params_each`` parameters an item."""
    step = max(1, IN_LIST_MAX_PARAMS // params_each)
    return (items[i : i + step] for i in range(0, len(items), step))


class Where:
    """A `` WHERE …`` clause built term by term, and its parameters in the order of their markers."""

    __slots__ = ("params", "terms")

    def __init__(self, *terms: str) -> None:
        self.terms = list(terms)
        self.params: list[Any] = []

    def add(self, term: str, *values: Any) -> Where:
        """Add ``term`` (one ``?`` per value) unless its first value is None (an absent filter)."""
        if values and values[0] is not None:
            self.terms.append(term)
            self.params += values
        return self

    def page(self, term: tuple[str, tuple[Any, ...]] | None) -> Where:
        """Add a paging term of ``hub.storage.keys`` (``{}`` where each parameter goes), if there is one."""
        if term is not None:
            sql, values = term
            self.terms.append(sql.format(*("?" * len(values))))
            self.params += values
        return self

    @property
    def sql(self) -> str:
        return " WHERE " + " AND ".join(self.terms) if self.terms else ""

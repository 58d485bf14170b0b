"""How a PostgreSQL hub numbers its change-feed rows in commit order, and keeps them as runs (schema 17).

Change ids come from the one row of ``change_counter``: ``append_changes``
(or ``append_ctes`` inside a batch's closing statement) raises it by the number
of rows in the last statement of an ingest transaction, and the row lock that
UPDATE takes is held until COMMIT. The next transaction to append waits for
that commit, so ids follow commit order across every hub process, and a
reader that sees change N+1 also sees change N. The lock is held for that
statement and the commit only.

A statement's changes are kept as **runs**, not a row each (``change_runs``):
a run is the changes of one location that one statement appended one after the
other, with ids ``first_id``…``last_id`` in that order, each column an array
(element ``i`` is change ``first_id + i - 1``). A batch is one store's: its
~430 changes were as many rows, each with three index entries, and the
statement that writes them holds the counter's row; as one run they are one row
and a few index entries (in-process, 430 changes a statement: PostgreSQL
2.5–3.2 → 0.5 ms). A run never holds one SKU twice (``runs`` starts a new one),
so a SKU's change in a run is found by its place in ``skus``. ``changes`` reads
them back as the feed's rows, in id order, by the run's location or a SKU it
holds (a GIN index of ``skus``) when filtered.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from typing import Any

import asyncpg

from hub.storage.base import ChangeRow
from hub.storage.feed import EVENT_ID_BYTES, change_row
from hub.storage.ingest import NewChange
from hub.storage.postgres.texts import text_list, text_list_sql

# The parameters of ``append_ctes`` in order; ``run_params`` gives their values.
RUN_PARAMS = 15
# A run's SKUs go to the GIN index's pending list, which PostgreSQL merged into the index inside the insert that
# found it over 4 MB (gin_pending_list_limit): in the statement holding the counter row, up to 32 ms while every
# other ingest waited for it. The statement whose changes reach a multiple of MERGE_EVERY merges it (schema 19's
# change_runs_skus_merge) before it takes the row, reading the counter without locking it: ~19 batches' SKUs at a
# time, ~330 kB of list, which every read by SKU also scans.
MERGE_EVERY = 8192


def append_ctes(first: int) -> str:
    """The WITH items that raise the counter by the number of changes and append them as runs, from the
    ``RUN_PARAMS`` parameters ``$first``… that ``run_params`` gives (the ids are the counter's to give); the
    counter's new value — the newest change id once this transaction commits — is ``SELECT last_id FROM counter``.
    Before the counter is raised, the GIN index's pending list is merged when these changes reach a multiple of
    ``MERGE_EVERY``."""
    p = [f"${first + i}" for i in range(RUN_PARAMS)]
    count, locations, starts, ends, id_starts, id_lengths = p[:6]
    skus = text_list_sql(p[6], p[7])
    on_hand, reserved, available, in_transit, ids, id_ends, at_ms = p[8:]
    return (
        "merged AS (SELECT change_runs_skus_merge() FROM change_counter "
        f"WHERE last_id / {MERGE_EVERY} <> (last_id + {count}::int8) / {MERGE_EVERY}), "
        f"counter AS (UPDATE change_counter SET last_id = last_id + {count}::int8 "
        "WHERE (SELECT count(*) FROM merged) >= 0 RETURNING last_id), "
        "appended AS (INSERT INTO change_runs (last_id, first_id, location, skus, on_hand, reserved, available, "
        "in_transit, event_ids, id_ends, at_ms) "
        f"SELECT counter.last_id - {count}::int8 + r.e, counter.last_id - {count}::int8 + r.s, r.location, "
        f"({skus})[r.s:r.e], ({on_hand}::int8[])[r.s:r.e], ({reserved}::int8[])[r.s:r.e], "
        f"({available}::int8[])[r.s:r.e], ({in_transit}::int8[])[r.s:r.e], "
        f"substring({ids}::bytea FROM r.i FOR r.n), ({id_ends}::int4[])[r.s:r.e], "
        f"{at_ms}::int8 FROM counter, "
        f"unnest({locations}::text[], {starts}::int4[], {ends}::int4[], {id_starts}::int4[], {id_lengths}::int4[]) "
        "AS r(location, s, e, i, n))"
    )


# One statement (one round trip while the counter row is locked).
APPEND_SQL = f"WITH {append_ctes(1)} SELECT last_id FROM counter"


def run_params(rows: Sequence[NewChange], now_ms: int) -> list[Any]:
    """The ``RUN_PARAMS`` values of ``append_ctes`` for ``rows`` (in the order they take their ids): every
    change's columns, and where each run of them starts and ends (1-based, inclusive) in them and in their ids'
    bytes. A run ends where the location changes or a SKU comes again."""
    snapshots = [r[0] for r in rows]
    locations, skus, on_hand, reserved, available, in_transit = map(list, zip(*snapshots, strict=True))
    counts = [len(r[1]) for r in rows]
    ids = b"".join([b"".join(r[1]) for r in rows])
    bounds: list[tuple[int, int]] = []
    if len(set(locations)) == 1 and len(set(skus)) == len(skus):  # a batch: one store's keys, each once
        bounds.append((1, len(rows)))
    else:
        start, seen = 1, set[str]()
        for i, (location, sku) in enumerate(zip(locations, skus, strict=True), 1):
            if i > start and (location != locations[start - 1] or sku in seen):
                bounds.append((start, i - 1))
                start, seen = i, set()
            seen.add(sku)
        bounds.append((start, len(rows)))
    ends: list[int] = []  # each change's last id's place in its run's ids, counted from 1
    for s, e in bounds:
        ends += accumulate(counts[s - 1 : e])
    before = [0, *accumulate(counts)]  # ids before change i (0-based)
    joined, listed = text_list(skus)
    return [
        len(rows),
        [locations[s - 1] for s, _ in bounds],
        [s for s, _ in bounds],
        [e for _, e in bounds],
        [before[s - 1] * EVENT_ID_BYTES + 1 for s, _ in bounds],
        [(before[e] - before[s - 1]) * EVENT_ID_BYTES for s, e in bounds],
        joined,
        listed,
        on_hand,
        reserved,
        available,
        in_transit,
        ids,
        ends,
        now_ms,
    ]


async def append_changes(conn: asyncpg.Connection, rows: Sequence[NewChange], now_ms: int) -> int | None:
    """Append ``rows`` with the next change ids, in order (see the module doc); return the last of them
    (None when there are none)."""
    if not rows:
        return None
    return int(await conn.fetchval(APPEND_SQL, *run_params(rows, now_ms)))


# At most $2 runs with a change after change $1 (with $4: of that location), in id order, each cut to its changes
# after change $1 that a page of $3 still has room for after the runs before it (``upto`` counts them; a run with
# no room is left out): the hub splits the parts (``_split``). Split by
# PostgreSQL, each change's reference to its run's arrays (toasted: compressed, apart from the row) unpacked them
# again, and a page of 1,000 changes took 19 ms instead of 2.7 as rows; cut once a column, a run is unpacked a few
# times. Sent whole, a page of 2 inside a catch-up batch's run of 10,000 changes took that run and the three after
# it: 22 ms, not 0.11 as rows, and 40,000 changes read for a read budget charged 2; cut so, 0.5 ms.
_RUNS = (
    "SELECT r.first_id - 1 + c.s, r.location, r.skus[c.s:c.e], r.on_hand[c.s:c.e], r.reserved[c.s:c.e], "
    "r.available[c.s:c.e], r.in_transit[c.s:c.e], "
    f"substring(r.event_ids FROM c.b * {EVENT_ID_BYTES} + 1 FOR (r.id_ends[c.e] - c.b) * {EVENT_ID_BYTES}), "
    "r.id_ends[c.s:c.e], c.b, r.at_ms, r.last_id "
    "FROM (SELECT q.*, sum(q.last_id - greatest(q.first_id - 1, $1)) OVER (ORDER BY q.last_id) AS upto "
    "FROM (SELECT * FROM change_runs WHERE last_id > $1{} ORDER BY last_id LIMIT $2) q) r "
    "CROSS JOIN LATERAL (SELECT f.s, least(r.last_id - r.first_id + 1, f.s - 1 + $3 - f.before)::int4 AS e, "
    "COALESCE(r.id_ends[f.s - 1], 0) AS b FROM (SELECT greatest(1, $1 - r.first_id + 2)::int4 AS s, "
    "r.upto - (r.last_id - greatest(r.first_id - 1, $1)) AS before) f) c "
    "WHERE r.upto - (r.last_id - greatest(r.first_id - 1, $1)) < $3 ORDER BY r.last_id"
)
RUNS_SQL = _RUNS.format("")
RUNS_AT_SQL = _RUNS.format(" AND location = $4")
# A SKU's changes after change $1 (with $3 the SKU, $4 a location), at most $2: a run holds a SKU once, so each
# run found through the GIN index of ``skus`` gives one row, but the first, whose row may be $1 or before. Each
# reference to a run's array unpacks it again (toasted), and a SKU's page far behind is one run a change: its SKU
# is $3, not ``skus[p]``, and where its ids start and end is one slice of ``id_ends`` (``OFFSET 0``: taken once),
# 10 unpackings a run down to 7 — with 430,000 changes in runs of 430 all holding the SKU, a page of 1,000 from
# the start 40.7 → 31.6 ms (3.7 as rows: each run is unpacked for its one change). Since schema 19 a run's arrays
# are unpacked from its own row, not the TOAST table: 20-22 → 13 ms of PostgreSQL's CPU (1.6 as rows).
_SKU_ROWS = (
    "SELECT r.first_id - 1 + p, r.location, $3::text, r.on_hand[p], r.reserved[p], r.available[p], "
    f"r.in_transit[p], substring(r.event_ids FROM i.ends[1] * {EVENT_ID_BYTES} + 1 "
    f"FOR (i.ends[2] - i.ends[1]) * {EVENT_ID_BYTES}), r.at_ms "
    "FROM (SELECT * FROM change_runs WHERE skus @> ARRAY[$3::text] AND last_id > $1{} ORDER BY last_id "
    "LIMIT $2 + 1) r CROSS JOIN LATERAL array_position(r.skus, $3::text) AS p "
    "CROSS JOIN LATERAL (SELECT CASE WHEN p = 1 THEN ARRAY[0, r.id_ends[1]] ELSE r.id_ends[p - 1:p] END AS ends "
    "OFFSET 0) i WHERE r.first_id - 1 + p > $1 ORDER BY 1 LIMIT $2"
)
SKU_ROWS_SQL = _SKU_ROWS.format("")
SKU_ROWS_AT_SQL = _SKU_ROWS.format(" AND location = $4")
# Change $1 alone (the one a feed cursor names, hub.feed.change_at), cut out of its run by PostgreSQL: split by the
# hub, a run of a batch's 430 changes took 0.22 ms to read and unpack, the one change 0.07 (as the newest id).
ONE_SQL = (
    "SELECT r.first_id - 1 + p, r.location, r.skus[p], r.on_hand[p], r.reserved[p], r.available[p], "
    f"r.in_transit[p], substring(r.event_ids FROM COALESCE(r.id_ends[p - 1], 0) * {EVENT_ID_BYTES} + 1 "
    f"FOR (r.id_ends[p] - COALESCE(r.id_ends[p - 1], 0)) * {EVENT_ID_BYTES}), r.at_ms "
    "FROM (SELECT * FROM change_runs WHERE last_id >= $1 ORDER BY last_id LIMIT 1) r "
    "CROSS JOIN LATERAL (SELECT ($1 - r.first_id + 1)::int4 AS p) AS at WHERE r.first_id <= $1"
)
RUNS_FIRST, RUNS_MAX = 4, 256  # runs a read asks for at first, and at most, doubling while their rows are too few


async def changes(
    conn: asyncpg.Connection, after: int, limit: int, location: str | None, sku: str | None
) -> list[ChangeRow]:
    """The feed's changes after ``after`` in id order, at most ``limit`` (of ``location``, of ``sku``)."""
    if sku is not None:
        extra = () if location is None else (location,)
        # A statement of its own, planned for this SKU and cursor: which of the primary key (a SKU in most runs)
        # and the GIN index (one in few, or none) finds its runs sooner is the SKU's. Kept, its plan was fixed
        # after five reads, by a guess at a SKU's share of the runs: with 10,000 runs, a SKU in none read every
        # one (178 ms, 0.5 planned for it).
        statement = await conn.prepare(SKU_ROWS_SQL if location is None else SKU_ROWS_AT_SQL)
        return [change_row(r) for r in await statement.fetch(after, limit, sku, *extra)]
    if limit == 1 and location is None:  # the next change alone: a feed cursor's (ids are given without a gap)
        one = await conn.fetch(ONE_SQL, after + 1)
        if one:
            return [change_row(one[0])]
    sql, extra = (RUNS_SQL, ()) if location is None else (RUNS_AT_SQL, (location,))
    out: list[ChangeRow] = []
    runs = RUNS_FIRST
    while True:
        found = await conn.fetch(sql, after, runs, limit - len(out), *extra)
        for run in found:
            _split(run, limit, out)
        if len(out) >= limit or len(found) < runs:
            return out[:limit]
        after, runs = found[-1][11], min(runs * 2, RUNS_MAX)


def _split(part: Sequence[Any], limit: int, out: list[ChangeRow]) -> None:
    """Append the changes of ``part`` (a run's, as ``_RUNS`` cut it) to ``out`` until it holds ``limit``."""
    first, location, skus, on_hand, reserved, available, in_transit, ids, ends, base, at_ms = part[:11]
    at = 0
    for i in range(min(len(skus), limit - len(out))):
        end = (ends[i] - base) * EVENT_ID_BYTES
        out.append(
            ChangeRow(
                first + i, location, skus[i], on_hand[i], reserved[i], available[i], in_transit[i],
                tuple([ids[j : j + EVENT_ID_BYTES] for j in range(at, end, EVENT_ID_BYTES)]), at_ms,
            )
        )  # fmt: skip
        at = end

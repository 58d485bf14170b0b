"""Step 29: the book-out reason stored before ingest worded it is worded as the live code words it, on SQLite and on
PostgreSQL, in the ledger, the refused rows and the held ones.

Found: step 28 folded the stored reasons in SQL: on SQLite lower() and plain spaces only, so "Received by
mistake,\\u00a0sent on" (a no-break space), a tab, U+3000, the Kelvin sign or a long s stayed as they came, the
book-out was not listed as book_out_without_ref and a resend of it was refused as a conflict (the resend is stored
in the hub's words); on PostgreSQL lower() and ``\\s`` of the database's collation, which miss the no-break space
and make "RECEİVED BY MİSTAKE, SENT ON" the book-out reason (Python's casefold makes "i̇" of "İ"). The rows held or
refused before ingest worded the reason kept it as sent. The upgraded hub holds every one of them as
``protocol.stored_reason`` makes it, and releases the held one as ingest books it.

The hub of schema 28 is made by the current hub (steps 28 and 29 change no table the rows are in, 28 makes its
indexes again), its reasons then written back as a hub of schema 27 stored them, its version set back to 28, or to
27: step 28 words them as step 29 does since on PostgreSQL (its first version made the dotted I's text the reason).
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from hub import open_store
from hub.storage.migrations import Migration
from hub.storage.postgres.schema import MIGRATIONS as PG_MIGRATIONS
from hub.storage.sqlite.schema import MIGRATIONS
from protocol import BOOK_OUT_REASON, Kind, event_id_hex, stored_reason
from tests.harness.pg import fresh_schema
from tests.hub.event_factory import EventFactory

STEP = next(v for v, m in MIGRATIONS.items() if m.name == "book_out_reason_worded_as_the_hub")
WINDOW_MS = 5 * 60_000
CENTURY_MS = 100 * 365 * 86_400_000
# Python's white space (str.split) a reason may hold (no control character), the characters whose casefold is the
# reason's letters, then look-alikes that are not (the dotted capital I, a full-width r, a zero-width space, the
# Mongolian vowel separator, sharp s).
WHITE = "\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
SPELLINGS = [
    *(f"Received{c}by mistake, sent{c}{c}on" for c in WHITE),
    "\u3000 RECEIVED BY MISTA\u212aE, \u017fENT ON\xa0",  # the Kelvin sign, the long s
    "received by mi\ufb06ake, sent on",  # the ligature st: one character shorter than the reason
    "received by mi\ufb05ake,\xa0sent on",
    "RECE\u0130VED BY M\u0130STAKE, SENT ON",  # not the reason: "İ" casefolds to "i̇"
    "\uff52eceived by mistake, sent on",
    "received\u200bby mistake, sent on",
    "received\u180eby mistake, sent on",
    "received by mi\xdftake, sent on",
]
# An older hub's stored text may hold what a reason may not now: the control characters Python splits at.
LEGACY = "\tReceived\x1cby\x85mistake,\nsent\x1f\ron\v"


@contextlib.contextmanager
def _later_steps_already_made() -> Iterator[None]:
    """The hub is made by the current code and set back to 28 or 27: the steps after 29 already made what they make
    (a column added twice is an error), so at the upgrade they run as nothing."""
    with pytest.MonkeyPatch.context() as patch:
        for steps in (MIGRATIONS, PG_MIGRATIONS):
            for version, step in list(steps.items()):
                if version > STEP:
                    patch.setitem(steps, version, Migration(version, step.name, lambda: "SELECT 1;"))
        yield


async def _stored_as_of_27(url: str, backend: str, rows: dict[str, list[tuple[bytes, str]]], old: int) -> None:
    """Write ``rows`` (table -> (event_id, reason)) back as sent, and set the version back to ``old``."""
    if backend == "sqlite":
        conn = sqlite3.connect(url)
        try:
            for table, pairs in rows.items():
                conn.executemany(f"UPDATE {table} SET reason = ? WHERE event_id = ?", [(r, i) for i, r in pairs])
            conn.execute(f"PRAGMA user_version = {old}")
            conn.commit()
        finally:
            conn.close()
        return
    pg = await asyncpg.connect(url)
    try:
        for table, pairs in rows.items():
            await pg.executemany(f"UPDATE {table} SET reason = $1 WHERE event_id = $2", [(r, i) for i, r in pairs])
        await pg.execute("DELETE FROM schema_migrations WHERE version > $1", old)
    finally:
        await pg.close()


async def _upgrade(backend: str, tmp_path: Path, old: int) -> None:
    url = str(tmp_path / "hub.db")
    if backend == "postgres":
        async with fresh_schema("reasons") as pg_url:
            await _check(pg_url, backend, old)
        return
    await _check(url, backend, old)


async def _check(url: str, backend: str, old: int) -> None:
    async with open_store(url) as store:
        agent_id, token = await store.add_agent(["S003"])
        who = await store.authenticate(token)
        assert who is not None
        ev = EventFactory(agent_id, location="S003")
        receipt = ev(Kind.TRANSFER_IN, 5, at_ms=1, ref="T-1", attrs={"from": "S001"})  # unmatched: none shipped
        adjusts = [ev(Kind.ADJUST, -1, at_ms=2 + i, reason=r) for i, r in enumerate(SPELLINGS)]
        legacy = ev(Kind.ADJUST, -1, at_ms=99, reason="damaged")
        assert (await store.ingest(who, 1, [receipt, *adjusts, legacy])).rejected == ()
        refused = ev(Kind.ADJUST, -1, at_ms=100, location="S001", reason=SPELLINGS[0])  # not its store's
        held = ev(Kind.ADJUST, -1, at_ms=CENTURY_MS, reason=SPELLINGS[1])
        result = await store.ingest(who, 1, [refused, held], clock_window_ms=WINDOW_MS)
        assert sorted(r.code for r in result.rejected) == ["forbidden_location", "quarantined"]
    await _stored_as_of_27(url, backend, {
        "events": [*((e.event_id, str(e.reason)) for e in adjusts), (legacy.event_id, LEGACY)],
        "rejections": [(refused.event_id, SPELLINGS[0])],
        "quarantine": [(held.event_id, SPELLINGS[1])],
    }, old)  # fmt: skip

    with _later_steps_already_made():
        async with open_store(url):  # the upgrade
            pass
    async with open_store(url) as store:
        rows = {r.event_id: r for r in await store.ledger(location="S003")}
        stored = [rows[e.event_id].reason for e in (*adjusts, legacy)]
        assert stored == [stored_reason(r) for r in (*SPELLINGS, LEGACY)]
        book_outs = {event_id_hex(e.event_id) for e in (*adjusts, legacy) if rows[e.event_id].reason == BOOK_OUT_REASON}
        assert len(book_outs) == len(WHITE) + 4  # the white space, the Kelvin sign and long s, the ligatures, LEGACY
        listed = {e.data["event_id"] for e in await store.exceptions(kind="book_out_without_ref")}
        assert listed == book_outs

        who = await store.authenticate(token)
        assert who is not None
        again = await store.ingest(who, 1, adjusts[:3])  # an outbox sending them again: resends, no conflict
        assert again.rejected == ()
        duplicates = {r.event_id: r.duplicates for r in await store.ledger(location="S003")}
        assert [duplicates[e.event_id] for e in adjusts[:3]] == [1] * 3

        [refused_row] = [r for r in await store.ledger(location="S001") if r.event_id == refused.event_id]
        assert refused_row.reason == BOOK_OUT_REASON  # as ingest stores a refused row now
        held_now = ev(Kind.ADJUST, -1, at_ms=CENTURY_MS + 1, reason=SPELLINGS[len(WHITE)])  # held by this hub
        assert [r.code for r in (await store.ingest(who, 1, [held_now], clock_window_ms=WINDOW_MS)).rejected] == [
            "quarantined"
        ]
        assert [r.reason for r in await store.quarantine()] == [BOOK_OUT_REASON] * 2
        assert await store.release_held(WINDOW_MS, "admin-1", "store") == (2, 0)  # POST /v1/quarantine/release
        listed = {e.data["event_id"] for e in await store.exceptions(kind="book_out_without_ref")}
        assert listed == {*book_outs, event_id_hex(held.event_id), event_id_hex(held_now.event_id)}


@pytest.mark.parametrize("old", [STEP - 1, STEP - 2], ids=["from-28", "from-27"])
async def test_the_upgrade_words_every_spelling_of_the_book_out_reason_as_the_live_code(
    backend: str, tmp_path: Path, old: int
) -> None:
    await _upgrade(backend, tmp_path, old)


def _usable(text: str) -> bool:
    """Whether a character folded to ``text`` may be part of the reason: ASCII, and one of its characters or "st"."""
    return text.isascii() and (len(text) == 1 and text in BOOK_OUT_REASON or text == "st")


async def test_postgres_words_each_character_as_python(pg_server: str) -> None:
    """Step 29's fold on PostgreSQL (its first statement's, the others' the same) makes of each character what
    Python's white space and casefold make of it, wherever that may be part of the reason (``_usable``); and every
    other character is no part of it either way. Every code point but the surrogates, under the test database's
    collation (the fold uses none)."""
    script = PG_MIGRATIONS[STEP].read()
    [fold] = {m.group(1) for m in re.finditer(r"AND (btrim\(regexp_replace\(.*?, ' '\))\s*= '", script, re.DOTALL)}
    padded = fold.replace("(reason,", "('x' || chr(g) || 'x',")
    assert padded.count("chr(g)") == 1
    async with fresh_schema("fold") as url:
        pg = await asyncpg.connect(url)
        try:
            changed = {g: m[1:-1] for g, m in await pg.fetch(
                f"SELECT g, {padded} FROM generate_series(1, 1114111) g "
                f"WHERE (g < 55296 OR g > 57343) AND {padded} <> 'x' || chr(g) || 'x'"
            )}  # fmt: skip
        finally:
            await pg.close()
    differ = []
    for g in (*range(1, 0xD800), *range(0xE000, 0x110000)):
        c = chr(g)
        python = " ".join(f"x{c}x".split()).casefold()[1:-1]
        sql = changed.get(g, c)
        if (_usable(python) or _usable(sql)) and python != sql:
            differ.append(f"U+{g:04X}: Python {python!r}, PostgreSQL {sql!r}")
    assert not differ, differ
    assert sum(c == " " for c in changed.values()) == 28  # Python's white space but the space itself

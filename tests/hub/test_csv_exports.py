"""CSV exports of the hub's lists over real HTTP on 127.0.0.1, against a real SQLite hub database.

Every CSV answer is parsed with the csv module and compared with the JSON walk of the same list: the whole
list, not one page, each row once; formulas are neutralised, numbers stay numbers; the answer is streamed
a page at a time.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import unicodedata
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st

from hub import HubStore, csvexport
from hub.storage.base import AgentIdentity, CatalogItem, StoreError
from protocol import Kind, StockEvent, csvcells, new_event_id, pack_hlc, wall_ms_now

DAY_MS = 86_400_000
NOW_MS = wall_ms_now()
CSV_TYPE = "text/csv; charset=utf-8; header=present"


@pytest.fixture
async def reader(store: HubStore) -> dict[str, str]:
    _, token = await store.add_agent([], role="reader")
    return {"Authorization": f"Bearer {token}"}


class Till:
    """A store agent writing straight into the store (the same ingest as POST /v1/sync)."""

    def __init__(self, store: HubStore, who: AgentIdentity) -> None:
        self.store, self.who, self.seq = store, who, itertools.count(1)

    async def record(self, *moves: tuple[str, str, int, str], at_ms: int = NOW_MS, **extra: Any) -> None:
        """(location, kind, qty, sku) moves, all stamped ``at_ms`` (counters 0, 1, …)."""
        events = [
            StockEvent(new_event_id(), self.who.agent_id, 1, next(self.seq), loc, sku, Kind(kind), qty,
                       pack_hlc(at_ms, i), at_ms, "scanner:till-1", extra.get("ref"), extra.get("reason"))
            for i, (loc, kind, qty, sku) in enumerate(moves)
        ]  # fmt: skip
        result = await self.store.ingest(self.who, 1, events)
        assert not result.rejected, result.rejected


@pytest.fixture
async def till(store: HubStore) -> Till:
    _, token = await store.add_agent(["S001", "S002"])
    who = await store.authenticate(token)
    assert who is not None
    return Till(store, who)


def parse(body: bytes) -> list[dict[str, str]]:
    text = body.decode("utf-8")  # UTF-8, no byte-order mark
    assert not text.startswith("\ufeff")
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")  # CRLF line ends (outside quotes here)
    return list(csv.DictReader(io.StringIO(text, newline="")))


async def get_csv(client: TestClient[Any, Any], path: str, headers: dict[str, str], **how: str) -> list[dict[str, str]]:
    async with client.get(path, headers=headers | how) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"] == CSV_TYPE
        assert resp.headers["Content-Disposition"].startswith('attachment; filename="')
        return parse(await resp.read())


async def walk_json(client: TestClient[Any, Any], path: str, field: str, headers: dict[str, str]) -> list[Any]:
    rows: list[Any] = []
    sep = "&" if "?" in path else "?"
    url = path
    for _ in range(10_000):
        async with client.get(url, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        rows += body[field]
        if body["next"] is None:
            return rows
        url = f"{path}{sep}cursor={body['next']}"
    raise AssertionError("the walk did not end")


async def test_counts_csv_is_the_whole_list_not_one_page(
    client: TestClient[Any, Any], store: HubStore, till: Till, reader: dict[str, str]
) -> None:
    await till.record(*(("S001", "receive", i + 1, f"SKU-{i:05d}") for i in range(2_345)))
    await till.record(("S002", "sale", -3, "SKU-00007"))
    await store.put_catalog([CatalogItem("4006381333931", "SKU-00007", 1, "Stainless mug, 350 ml")])
    rows = await get_csv(client, "/v1/counts", reader, Accept="text/csv")
    assert len(rows) == 2_346  # above the JSON route's default page of 1,000: every page
    assert list(rows[0]) == list(csvexport.COUNT_HEADER)
    walked = await walk_json(client, "/v1/counts?limit=700", "counts", reader)
    assert [(r["location"], r["sku"], int(r["on_hand"])) for r in rows] == [
        (c["location"], c["sku"], c["on_hand"]) for c in walked
    ]
    mug = [r for r in rows if r["sku"] == "SKU-00007"]
    assert [(r["location"], r["on_hand"], r["name"]) for r in mug] == [
        ("S001", "8", "Stainless mug, 350 ml"),
        ("S002", "-3", "Stainless mug, 350 ml"),  # a negative count stays a number, never '-3
    ]
    one_location = await get_csv(client, "/v1/locations/S002/counts?format=csv", reader)
    assert [(r["sku"], r["on_hand"]) for r in one_location] == [("SKU-00007", "-3")]
    one_sku = await get_csv(client, "/v1/skus/SKU-00007/counts", reader, Accept="text/csv")
    assert [r["location"] for r in one_sku] == ["S001", "S002"]
    capped = await get_csv(client, "/v1/counts?format=csv&limit=1500", reader)
    assert [r["sku"] for r in capped] == [r["sku"] for r in rows[:1500]]


async def test_the_ledger_csv_streams_page_by_page_through_a_burst_on_one_timestamp(
    client: TestClient[Any, Any], store: HubStore, till: Till, reader: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for batch in range(3):  # 3 × 40 events sharing one wall time: a page ends inside each burst
        await till.record(*(("S001", "sale", -1, "TEE") for _ in range(40)), at_ms=NOW_MS - 1000 + batch)
    await till.record(("S001", "count", 5, "TEE"), ref="count-session-1")
    asked: list[int] = []
    real_ledger = store.ledger

    async def ledger(**kwargs: Any) -> Any:
        asked.append(kwargs["limit"])
        return await real_ledger(**kwargs)

    monkeypatch.setattr(store, "ledger", ledger)
    monkeypatch.setattr(csvexport, "PAGE_ROWS", 7)
    async with client.get("/v1/ledger?sku=TEE&format=csv", headers=reader) as resp:
        assert resp.headers["Content-Type"] == CSV_TYPE
        assert resp.headers.get("Transfer-Encoding") == "chunked"  # streamed, not built whole in memory
        assert resp.headers["Content-Disposition"].startswith('attachment; filename="ledger-TEE-')
        rows = parse(await resp.read())
    assert len(asked) > 121 // 7 and max(asked) == 7  # read a page of 7 at a time, never the whole ledger
    monkeypatch.undo()
    walked = await walk_json(client, "/v1/ledger?sku=TEE&limit=13", "events", reader)
    assert [r["event_id"] for r in rows] == [e["event_id"] for e in walked]
    assert len({r["event_id"] for r in rows}) == 121  # every event once
    count = rows[0]
    assert (count["kind"], count["qty"], count["variance"], count["ref"]) == ("count", "5", "125", "count-session-1")
    assert rows[1]["qty"] == "-1" and rows[1]["effect"] == "superseded"
    assert count["occurred_at"] == str(walked[0]["occurred_at"])  # the packed HLC exactly, beyond 2**53
    assert count["occurred_at_time"].endswith("Z") and count["received_at"].endswith("Z")


async def test_text_cells_cannot_become_formulas_and_rfc4180_quoting_round_trips(
    client: TestClient[Any, Any], store: HubStore, till: Till, reader: dict[str, str]
) -> None:
    hostile = '=HYPERLINK("http://evil.example","click")'
    await till.record(("S001", "receive", 3, hostile), ref="+44 20 7946 0000", reason="@team")
    await till.record(("S001", "adjust", -2, "-LEFT"), ref='box "B", shelf 4', reason="damaged")
    await store.put_catalog([CatalogItem("4006381333931", "-LEFT", 1, 'Café ☕, "the" mug')])
    rows = await get_csv(client, "/v1/ledger", reader, Accept="text/csv")
    by_sku = {r["sku"]: r for r in rows}
    formula = by_sku["'" + hostile]
    assert formula["ref"] == "'+44 20 7946 0000" and formula["reason"] == "'@team"
    left = by_sku["'-LEFT"]
    assert left["qty"] == "-2"  # a number is a number
    assert left["ref"] == 'box "B", shelf 4'  # a comma and quotes, quoted by RFC 4180 rules
    assert left["name"] == 'Café ☕, "the" mug'  # UTF-8, a comma and quotes
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "@")), value
            assert not value.startswith("-") or value.lstrip("-").isdigit(), value


async def test_exceptions_and_divergence_answer_csv(
    client: TestClient[Any, Any], store: HubStore, till: Till, reader: dict[str, str]
) -> None:
    await till.record(("S001", "sale", -4, "CAP-NAVY"), ("S002", "receive", 1, "unknown:04006381333931"))
    rows = await get_csv(client, "/v1/exceptions?format=csv", reader)
    assert list(rows[0]) == list(csvexport.EXCEPTION_HEADER)
    kinds = {r["kind"]: r for r in rows}
    assert kinds["negative_on_hand"]["sku"] == "CAP-NAVY" and kinds["negative_on_hand"]["location"] == "S001"
    assert json.loads(kinds["negative_on_hand"]["data"])["on_hand"] == -4
    assert json.loads(kinds["unknown_barcode"]["data"])["barcode"] == "04006381333931"
    walked = await walk_json(client, "/v1/exceptions", "exceptions", reader)
    assert [r["detail"] for r in rows] == [e["detail"] for e in walked]
    only_s002 = await get_csv(client, "/v1/exceptions?location=S002", reader, Accept="text/csv")
    assert {r["location"] for r in only_s002} == {"S002"}
    divergence = await get_csv(client, "/v1/divergence", reader, Accept="text/csv")
    assert divergence == []  # no observation yet: just the header
    async with client.get("/v1/divergence?format=csv", headers=reader) as resp:
        assert (await resp.read()) == (
            b"location,sku,name,system,observed,hub_on_hand,difference,observed_at,agent_id,id,source_file,received_at\r\n"
        )


def test_encode_quotes_by_rfc_4180_and_guards_only_text() -> None:
    text = csvexport.encode([("a,b", 'say "hi"', "line\nbreak", -3, "-3", "=1+1", None, True, {"k": "=v"})])
    assert text == b'"a,b","say ""hi""","line\nbreak",-3,\'-3,\'=1+1,,true,"{""k"":""=v""}"\r\n'
    assert next(csv.reader(io.StringIO(text.decode(), newline=""))) == [
        "a,b",
        'say "hi"',
        "line\nbreak",
        "-3",
        "'-3",
        "'=1+1",
        "",
        "true",
        '{"k":"=v"}',
    ]
    assert [csvcells.unguard(v) for v in ("'-3", "'=1+1", "'quoted", "'")] == ["-3", "=1+1", "'quoted", "'"]


# Text biased to what a guard and an import's strip act on: apostrophes, formula starts and blanks at either end.
TRICKY_TEXT = st.builds(
    lambda head, body, tail: head + body + tail,
    st.sampled_from(["", "'", "''", "'=", "'-", "=", "-", "+", "@", "\t", " ", " '", "\u00a0", "'\u00a0", "\ufeff=",
                     "\u200b-", "\ufeff\u200d@", "'\ufeff=", "\uff1d", "\uff0b", "\uff0d", "\uff20", "\ufe66", "\u202e=",
                     "\u2066+", "\u202e", "\u200f", "\u00ad@", "\u034f=", "'\uff1d", "\u3000\uff0b"]),
    st.text(max_size=12),
    st.sampled_from(["", " ", "'", "\u00a0"]),
)  # fmt: skip


@given(TRICKY_TEXT)
def test_an_imported_cell_is_the_text_the_export_was_given(text: str) -> None:
    guarded = csvexport.cell(text)
    assert csvcells.uncell(str(guarded)) == text and csvcells.unguard(str(guarded)) == text
    assert not str(guarded).startswith(csvcells.FORMULA_STARTS)  # never a formula in a spreadsheet
    # nor behind characters that show nothing (a byte-order mark, zero-width spaces, direction marks), which a
    # reader may drop, nor as a full-width sign a reader may take for the sign itself: a cell that starts with one
    # of those starts with the guard
    assert str(guarded).startswith("'") or not (shows_nothing(text[:1]) or looks_like_formula(text)), repr(guarded)


def shows_nothing(char: str) -> bool:
    """A format character (Cf: byte-order mark, zero-width spaces and joiners, direction marks and overrides) or
    another of Unicode's default-ignorable ones (a combining grapheme joiner, the Hangul fillers)."""
    return char != "" and (unicodedata.category(char) == "Cf" or char in "\u034f\u115f\u1160\u3164\uffa0")


def looks_like_formula(text: str) -> bool:
    """Whether ``text`` starts, behind what shows nothing, with a formula start in any width (NFKC folds ＝ to =)."""
    shown = text.lstrip("".join(c for c in set(text) if shows_nothing(c)))
    return unicodedata.normalize("NFKC", shown[:1]).startswith(csvcells.FORMULA_STARTS)


# What a spreadsheet may run or show as something else: a formula start in full width (or a small form) and one
# behind a direction override or isolate, a soft hyphen, a combining grapheme joiner, a Hangul filler; a cell led
# by a direction override shows its text reversed (``exe.txt`` read ``txt.exe``).
DISGUISED = [
    '\uff1dHYPERLINK("http://evil.example","click")',
    "\uff0b44 20 7946 0000",
    "\uff0d2+3",
    "\uff20SUM(A1:A9)",
    "\ufe66 1+1",
    "\u202e=1+1",
    "\u2066+1",
    "\u200f@team",
    "\u00ad-1",
    "\u034f=1",
    "\u3164=1",
    "\u202etxt.exe",
]


def test_a_formula_behind_an_invisible_character_is_guarded() -> None:
    """Found by the operator-side attack: ``\ufeff=1`` went out as it was, a formula to a reader that drops the
    byte-order mark (as most do at a field's start when they drop it at the file's)."""
    assert [csvexport.cell(t) for t in ("\ufeff=1", "\u200b+1", "a\ufeff=1")] == ["'\ufeff=1", "'\u200b+1", "a\ufeff=1"]


def test_a_formula_in_full_width_or_behind_a_direction_or_invisible_character_is_guarded() -> None:
    """Found by review against OWASP's list of CSV injection starts: a full-width ``＝`` (which a spreadsheet in an
    East Asian locale reads as ``=``), a formula behind a right-to-left override, a soft hyphen or a combining
    grapheme joiner went out as it was. A cell led by a character that shows nothing is guarded whatever follows."""
    assert [csvexport.cell(t) for t in DISGUISED] == ["'" + t for t in DISGUISED]
    assert [csvexport.cell(t) for t in ("a\uff1d1", "\u00e9=1", "\uff21BC", "1\u202e")] == [
        "a\uff1d1", "\u00e9=1", "\uff21BC", "1\u202e",
    ]  # fmt: skip  # a sign or a mark after the first character shown, or a full-width letter, is text


async def test_disguised_formulas_are_guarded_in_every_csv_answer(
    client: TestClient[Any, Any], store: HubStore, till: Till, reader: dict[str, str]
) -> None:
    for text in DISGUISED:
        await till.record(("S001", "count", 2, text), ref=text, reason=text, at_ms=NOW_MS - 1000)
        await till.record(("S001", "sale", -3, text), ref=text, reason=text)  # a negative count: an exception too
    await store.put_catalog([CatalogItem(f"DIS-{i}", text, 1, text) for i, text in enumerate(DISGUISED)])
    guarded = {"'" + t for t in DISGUISED}
    ledger = await get_csv(client, "/v1/ledger?format=csv", reader)
    assert {r["sku"] for r in ledger} == guarded
    assert all(r["ref"] == r["reason"] == r["sku"] == r["name"] for r in ledger)
    counts = await get_csv(client, "/v1/counts", reader, Accept="text/csv")
    assert {r["sku"] for r in counts} == {r["name"] for r in counts} == guarded
    exceptions = await get_csv(client, "/v1/exceptions?format=csv&kind=negative_on_hand", reader)
    assert {r["sku"] for r in exceptions} == guarded
    variance = await get_csv(client, "/v1/reports/variance?by=count&format=csv", reader)
    assert {(r["sku"], r["name"], r["ref"], r["reason"]) for r in variance} == {(t,) * 4 for t in guarded}
    catalog = await get_csv(client, "/v1/catalog?format=csv", reader)
    assert {r["sku"] for r in catalog} == {r["description"] for r in catalog} == guarded


@pytest.mark.parametrize(
    ("accept", "is_csv"),
    [
        ("text/csv", True),
        ("text/csv;q=0.9, application/json;q=0.5", True),
        ("application/json, text/csv;q=0.5", False),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),  # a browser
        ("*/*", False),
        ("", False),
        ("text/csv;q=0", False),
        ("text/csv;q=bogus, application/json", False),
    ],
)
async def test_accept_negotiation(
    client: TestClient[Any, Any], till: Till, reader: dict[str, str], accept: str, is_csv: bool
) -> None:
    await till.record(("S001", "receive", 2, "TEE"))
    async with client.get("/v1/ledger", headers=reader | {"Accept": accept}) as resp:
        assert resp.status == 200
        assert resp.content_type == ("text/csv" if is_csv else "application/json")


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("format=xml", "format takes only csv"),
        ("format=csv&format=csv", "format takes only csv"),
        ("format=csv&limit=0", "limit must be a whole number"),
        ("format=csv&cursor=AAAA", "cursor is not one this hub gave out"),
        ("format=csv&colour=red", "unknown query parameter(s) colour"),
        ("format=csv&location=S%0A1", "location"),
    ],
)
async def test_bad_csv_requests_are_one_sentence_400s(
    client: TestClient[Any, Any], reader: dict[str, str], query: str, words: str
) -> None:
    async with client.get(f"/v1/ledger?{query}", headers=reader) as resp:
        assert resp.status == 400
        assert words in (await resp.json())["detail"]


async def test_a_csv_export_needs_a_credential_and_head_sends_no_rows(
    client: TestClient[Any, Any], till: Till, reader: dict[str, str]
) -> None:
    async with client.get("/v1/counts?format=csv") as resp:
        assert resp.status == 401
    await till.record(("S001", "receive", 2, "TEE"))
    async with client.head("/v1/counts?format=csv", headers=reader) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == CSV_TYPE
        assert await resp.read() == b""


async def test_a_database_failure_mid_stream_never_looks_like_a_whole_file(
    client: TestClient[Any, Any], store: HubStore, till: Till, reader: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    await till.record(*(("S001", "receive", 1, f"SKU-{i}") for i in range(30)))
    monkeypatch.setattr(csvexport, "PAGE_ROWS", 10)
    real_counts = store.counts
    calls = itertools.count()

    async def counts(**kwargs: Any) -> Any:
        if next(calls) == 1:
            raise StoreError("the disk went away")
        return await real_counts(**kwargs)

    monkeypatch.setattr(store, "counts", counts)
    async with client.get("/v1/counts?format=csv", headers=reader) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):  # the chunked body never ends: an unfinished download
            await resp.read()
    calls = itertools.count(1)  # the first page failing is an ordinary answer: 503 with one sentence
    async with client.get("/v1/counts?format=csv", headers=reader) as resp:
        assert resp.status == 503
        assert "the disk went away" in (await resp.json())["detail"]


# --- the shrinkage (variance) report ----------------------------------------------------------------------

JAN_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
FEB_MS = JAN_MS + 31 * DAY_MS


async def counted(till: Till) -> None:
    """January: S001 loses 3 TEE and finds 1 MUG; S002 loses 2 TEE. February: S001 loses 5 more TEE."""
    await till.record(("S001", "receive", 10, "TEE"), ("S001", "receive", 4, "MUG"), ("S002", "receive", 6, "TEE"),
                      at_ms=JAN_MS + DAY_MS)  # fmt: skip
    await till.record(("S001", "count", 7, "TEE"), ("S001", "count", 5, "MUG"), ("S002", "count", 4, "TEE"),
                      at_ms=JAN_MS + 10 * DAY_MS, ref="cycle-count-jan")  # fmt: skip
    await till.record(("S001", "count", 2, "TEE"), at_ms=FEB_MS + DAY_MS, ref="cycle-count-feb")
    await till.record(("S001", "count", 0, "unknown:04006381333931"), at_ms=JAN_MS + 11 * DAY_MS)  # left out


async def test_the_variance_report_by_sku_location_and_count(
    client: TestClient[Any, Any], store: HubStore, till: Till, reader: dict[str, str]
) -> None:
    await counted(till)
    await store.put_catalog([CatalogItem("4006381333931", "TEE", 1, "T-shirt, black, M")])
    january = "from=2026-01-01&to=2026-02-01"
    async with client.get(f"/v1/reports/variance?{january}", headers=reader) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    assert (body["from"], body["to"], body["by"]) == ("2026-01-01T00:00:00.000Z", "2026-02-01T00:00:00.000Z", "sku")
    assert [(r["location"], r["sku"], r["counts"], r["shrinkage"], r["overage"], r["net_variance"])
            for r in body["rows"]] == [("S001", "TEE", 1, 3, 0, -3), ("S002", "TEE", 1, 2, 0, -2),
                                       ("S001", "MUG", 1, 0, 1, 1)]  # fmt: skip  (the most shrinkage first)
    assert body["rows"][0]["name"] == "T-shirt, black, M"
    assert body["totals"] == {"counts": 3, "shrinkage": 5, "overage": 1, "net_variance": -4}

    by_location = await get_csv(client, f"/v1/reports/variance?{january}&by=location", reader, Accept="text/csv")
    assert by_location == [
        {"location": "S001", "counts": "2", "skus": "2", "shrinkage": "3", "overage": "1", "net_variance": "-2"},
        {"location": "S002", "counts": "1", "skus": "1", "shrinkage": "2", "overage": "0", "net_variance": "-2"},
    ]
    both = await get_csv(client, "/v1/reports/variance?from=2026-01-01&to=2026-03-01&location=S001&sku=TEE&by=count"
                         "&format=csv", reader)  # fmt: skip
    assert [(r["counted_at"][:10], r["counted"], r["expected"], r["variance"], r["ref"]) for r in both] == [
        ("2026-02-02", "2", "7", "-5", "cycle-count-feb"),
        ("2026-01-11", "7", "10", "-3", "cycle-count-jan"),
    ]
    feb = await get_csv(client, "/v1/reports/variance?from=2026-02-01T00:00:00%2B01:00&to=2026-03-01&format=csv",
                        reader)  # fmt: skip
    assert [(r["location"], r["sku"], r["shrinkage"]) for r in feb] == [("S001", "TEE", "5")]


async def test_variance_by_count_pages_in_json_and_the_csv_has_them_all(
    client: TestClient[Any, Any], till: Till, reader: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for day in range(25):
        await till.record(("S001", "receive", 3, "TEE"), ("S001", "count", 2, "TEE"), ("S001", "sale", -1, "MUG"),
                          at_ms=JAN_MS + day * DAY_MS)  # fmt: skip
    monkeypatch.setattr(csvexport, "PAGE_ROWS", 4)  # the ledger is read 4 rows at a time
    walked = await walk_json(client, "/v1/reports/variance?from=2026-01-01&to=2026-02-01&by=count&limit=6",
                             "rows", reader)  # fmt: skip
    assert len(walked) == 25 and len({r["event_id"] for r in walked}) == 25
    assert [r["counted_at"][:10] for r in walked] == [f"2026-01-{25 - d:02d}" for d in range(25)]
    rows = await get_csv(client, "/v1/reports/variance?from=2026-01-01&to=2026-02-01&by=count", reader,
                         Accept="text/csv")  # fmt: skip
    assert [r["event_id"] for r in rows] == [r["event_id"] for r in walked]


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("from=2026-13-01", "from must be a date"),
        ("to=2026-01-01T10:00:00", "has no time zone"),
        ("from=2026-02-01&to=2026-01-01", "from must be before to"),
        ("by=week", "by must be sku, location or count"),
        ("by=sku&cursor=abc", "cursor is not one this hub gave out"),
        ("from=1900-01-01", "outside the times the hub can hold"),
    ],
)
async def test_bad_variance_requests_are_one_sentence_400s(
    client: TestClient[Any, Any], reader: dict[str, str], query: str, words: str
) -> None:
    async with client.get(f"/v1/reports/variance?{query}", headers=reader) as resp:
        assert resp.status == 400
        assert words in (await resp.json())["detail"]

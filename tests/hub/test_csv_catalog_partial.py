"""A catalog CSV with some bad rows: ``PUT /v1/catalog?partial=true`` and ``shelfsync-hub catalog import`` take the
good rows and name every refused one (line, column, why), with the refused rows as a CSV to fix and send again;
without ``partial`` the route stays all or nothing. Each hostile file here was first sent to a real hub on
127.0.0.1 and broke it (docs/hub-api.md, "PUT /v1/catalog")."""

from __future__ import annotations

import csv
import io
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from hub import HubStore, open_store
from hub.storage.base import CatalogItem
from tests.harness.commands import hub_env, new_hub_db
from tests.harness.credentials import add_credential
from tests.harness.hub_process import HubProcess
from tests.hub.test_csv_catalog import MUG, PEN, PEN_CASE, admin, big_catalog, put_csv, run

__all__ = ["admin"]  # the fixture, shared with test_csv_catalog

HTTP_TIMEOUT_S = 120
REFUSED_MAX = 10_000  # hub.catalog.REFUSED_MAX


async def put_partial(client: TestClient[Any, Any], token: str, body: bytes, query: str = "?partial=true") -> Any:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/csv"}
    async with client.put("/v1/catalog" + query, data=body, headers=headers) as resp:
        return resp.status, await resp.json()


def rows_of(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


MIXED = (
    "barcode,sku,pack_size,description\n"  # line 1
    f"{PEN},PEN,1,a pen\n"  # line 2: good
    '4006381333932,PEN,1,=HYPERLINK("http://evil")\n'  # line 3: check digit (and a formula in its description)
    f"{MUG},,1,a mug\n"  # line 4: no sku
    f"{PEN_CASE},PEN,1.5,\n"  # line 5: not a whole pack size
    "ABC-3,MUG,1,one,two\n"  # line 6: a field too many
    "ABC-1,TOTE,1,a tote\n"  # line 7: good
).encode()


async def test_partial_takes_the_good_rows_and_names_each_refused_one_by_line_and_column(
    client: TestClient[Any, Any], store: HubStore, admin: str
) -> None:
    status, answer = await put_partial(client, admin, MIXED)
    assert status == 200, answer
    assert {k: answer[k] for k in ("version", "updated", "rows", "imported", "refused_count")} == {
        "version": 1, "updated": 2, "rows": 6, "imported": 2, "refused_count": 4
    }  # fmt: skip
    assert [(r["line"], r["column"]) for r in answer["refused"]] == [
        (3, "barcode"), (4, "sku"), (5, "pack_size"), (6, None)
    ]  # fmt: skip
    reasons = {r["line"]: r["reason"] for r in answer["refused"]}
    assert "check digit" in reasons[3] and "sku must not be empty" in reasons[4]
    assert "'1.5'" in reasons[5] and "5 fields but the header names 4" in reasons[6]
    assert {(i.barcode, i.sku) for i in (await store.catalog()).items} == {(PEN, "PEN"), ("ABC-1", "TOTE")}
    refused = rows_of(answer["refused_csv"])
    assert refused[0] == ["problem", "barcode", "sku", "pack_size", "description"]
    assert [row[1:] for row in refused[1:]] == [
        ["4006381333932", "PEN", "1", '\'=HYPERLINK("http://evil")'],  # guarded: a spreadsheet never runs it
        [MUG, "", "1", "a mug"],
        [PEN_CASE, "PEN", "1.5", ""],
        ["ABC-3", "MUG", "1", "one", "two"],
    ]
    assert refused[1][0].startswith("line 3: barcode 4006381333932 looks like a GTIN-13")

    status, again = await put_partial(client, admin, MIXED)  # the same file again: nothing changes
    assert (status, again["version"], again["updated"], again["refused"]) == (200, 1, 0, answer["refused"])

    fixed = answer["refused_csv"].replace("4006381333932", "4006381333948").replace(f"{MUG},,", f"{MUG},MUG,")
    fixed = fixed.replace("1.5", "12").replace(",one,two", ",one two")
    status, last = await put_partial(client, admin, fixed.encode(), "")  # the problem column is left as it is
    assert status == 200, last
    assert (last["imported"], last["refused_count"], last["updated"]) == (4, 0, 4)
    assert len((await store.catalog()).items) == 6


async def test_without_partial_a_bad_row_still_refuses_the_file_and_says_how_to_take_the_good_ones(
    client: TestClient[Any, Any], store: HubStore, admin: str
) -> None:
    status, answer = await put_csv(client, admin, MIXED)
    assert status == 400
    assert [(p["line"], p["column"]) for p in answer["problems"]] == [
        (3, "barcode"), (4, "sku"), (5, "pack_size"), (6, None)
    ]  # fmt: skip
    assert "?partial=true" in answer["detail"] and "the 2 good rows" in answer["detail"]
    assert await store.catalog_version() == 0
    status, answer = await put_partial(client, admin, MIXED, "?partial=false")
    assert status == 400 and await store.catalog_version() == 0
    status, answer = await put_partial(client, admin, MIXED, "?partial=yes")
    assert status == 400 and "partial must be true or false" in answer["detail"]


async def test_a_barcode_twice_with_other_content_refuses_both_rows_so_no_guess_is_written(
    client: TestClient[Any, Any], store: HubStore, admin: str
) -> None:
    """Found black-box: the first of two rows of one barcode was the one kept (the second refused); taking good
    rows would then have written a guess, and re-booked scans onto it."""
    body = f"barcode,sku\n{PEN},PEN\n{MUG},MUG\n{PEN},PEN-RED\n{MUG},MUG\n".encode()
    status, answer = await put_partial(client, admin, body)
    assert status == 200, answer
    assert [(r["line"], r["column"]) for r in answer["refused"]] == [(2, "barcode"), (4, "barcode")]
    assert "lines 2 and 4" in answer["refused"][0]["reason"]
    assert (answer["imported"], answer["updated"]) == (2, 1)  # the mug's two identical rows are one item
    assert [i.barcode for i in (await store.catalog()).items] == [MUG]


@pytest.mark.parametrize("order", ["plain first", "look-alike first"])
async def test_a_look_alike_sku_is_the_refused_one_whatever_the_order_of_the_rows(
    client: TestClient[Any, Any], store: HubStore, admin: str, order: str
) -> None:
    """Found black-box: the spelling met first was the right one, so a zero-width space in the first row made
    the plain MUG-01 of the next row the refused one (and with partial, MUG\u200b-01 written)."""
    rows = [f"{MUG},MUG-01", "ABC-1,MUG\u200b-01"]
    if order != "plain first":
        rows.reverse()
    status, answer = await put_partial(client, admin, ("barcode,sku\n" + "\n".join(rows) + "\n").encode())
    assert status == 200, answer
    assert [r["column"] for r in answer["refused"]] == ["sku"]
    assert "write it as MUG-01" in answer["refused"][0]["reason"]
    assert [i.sku for i in (await store.catalog()).items] == ["MUG-01"]


async def test_two_look_alikes_neither_plain_are_both_refused(
    client: TestClient[Any, Any], store: HubStore, admin: str
) -> None:
    body = "barcode,sku\nABC-1,MUG\u200b-01\nABC-2,ＭＵＧ-01\nABC-3,TOTE\n".encode()
    status, answer = await put_partial(client, admin, body)
    assert status == 200, answer
    assert [r["line"] for r in answer["refused"]] == [2, 3]
    assert [i.sku for i in (await store.catalog()).items] == ["TOTE"]


@pytest.mark.parametrize(
    ("name", "body", "refused", "column", "words"),
    [
        # a description of 300,000 characters stopped the reader: the whole file was refused
        (
            "huge field",
            b"barcode,sku,description\nA1,X1," + b"y" * 300_000 + b"\nA2,X2,ok\n",
            2,
            "description",
            "300000 characters long; the limit is 256",
        ),
        ("NUL byte", b"barcode,sku\nA1,X\x001\nA2,X2\n", 2, "sku", "is not a SKU"),
        ("huge barcode", b"barcode,sku\n" + b"9" * 5000 + b",X1\nA2,X2\n", 2, "barcode", "the limit is 64"),
    ],
)
async def test_a_hostile_row_is_one_refused_row(
    client: TestClient[Any, Any],
    store: HubStore,
    admin: str,
    name: str,
    body: bytes,
    refused: int,
    column: str,
    words: str,
) -> None:
    status, answer = await put_partial(client, admin, body)
    assert status == 200, answer
    assert [(r["line"], r["column"]) for r in answer["refused"]] == [(refused, column)], name
    assert words in answer["refused"][0]["reason"]
    assert len(answer["refused"][0]["reason"]) < 400  # the value is shown cut, never whole
    assert [i.barcode for i in (await store.catalog()).items] == ["A2"]


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("Excel's Unicode Text: UTF-16 with its byte-order mark, tab separated",
         f"barcode\tsku\tdescription\r\n{PEN}\tPEN\tCafé\r\n".encode("utf-16")),
        ("UTF-16 big-endian", f"barcode,sku,description\r\n{PEN},PEN,Café\r\n".encode("utf-16-be")
         .join([b"\xfe\xff", b""])),
        ("old Mac line ends", f"barcode,sku,description\r{PEN},PEN,Café\r".encode()),
    ],
)  # fmt: skip
async def test_a_file_in_another_unicode_form_is_read(
    client: TestClient[Any, Any], store: HubStore, admin: str, name: str, body: bytes
) -> None:
    status, answer = await put_partial(client, admin, body)
    assert status == 200, (name, answer)
    assert [(i.barcode, i.sku, i.description) for i in (await store.catalog()).items] == [(PEN, "PEN", "Café")]


async def test_a_file_that_is_not_utf8_is_refused_whole_even_with_partial(
    client: TestClient[Any, Any], store: HubStore, admin: str
) -> None:
    body = "barcode,sku,description\nA1,X1,plain\nA2,X2,Caf\xe9\n".encode("cp1252")
    status, answer = await put_partial(client, admin, body)
    assert status == 400
    assert answer["problems"] == [
        {"line": 3, "column": None, "reason": 'the file is not UTF-8 text (byte 0xe9 at offset 45); save it as "CSV '
         'UTF-8" (Excel) or UTF-8 CSV, or name the charset it is saved in (charset=windows-1252)'}
    ]  # fmt: skip
    assert answer["detail"].startswith("the file cannot be read, so nothing was imported")
    assert await store.catalog_version() == 0


async def test_a_file_of_ever_more_bad_rows_is_refused_once_past_the_limit(
    client: TestClient[Any, Any], store: HubStore, admin: str
) -> None:
    """Found black-box on a real hub: 8 MB of rows without a SKU took 27 s of the hub's time and 1.3 GB of its
    memory to name all four million of them; the hub now stops reading past ``REFUSED_MAX``."""
    body = f"barcode,sku\n{PEN},PEN\n".encode() + b"x\n" * (REFUSED_MAX + 10)
    for query in ("?partial=true", ""):
        status, answer = await put_partial(client, admin, body, query)
        assert status == 400
        assert answer["problem_count"] == REFUSED_MAX + 1 and len(answer["problems"]) == 100
        assert f"more than {REFUSED_MAX:,} rows cannot be used" in answer["detail"]
        assert "read up to line" in answer["detail"]
    assert await store.catalog_version() == 0


def vm_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_four_million_bad_rows_leave_a_real_hubs_memory_alone(tmp_path: Path) -> None:
    db = new_hub_db(tmp_path / "hub.db", hub_env())
    admin_token = add_credential(db, role="admin").token
    with HubProcess(tmp_path / "hub.log", db=db, port=0, env=hub_env()) as hub:
        assert hub.proc is not None
        before = vm_peak_kib(hub.proc.pid)
        request = urllib.request.Request(
            hub.url + "/v1/catalog?partial=true", data=b"barcode,sku\n" + b"x\n" * 4_000_000, method="PUT",
            headers={"Authorization": f"Bearer {admin_token}", "Content-Type": "text/csv"},
        )  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S)
        assert refused.value.code == 400
        assert f"more than {REFUSED_MAX:,} rows cannot be used" in refused.value.read().decode()
        grown_mib = (vm_peak_kib(hub.proc.pid) - before) // 1024
        assert grown_mib < 200, f"the hub's peak memory grew by {grown_mib} MiB"  # it grew by 1,200 before


# --- the command -------------------------------------------------------------------------------------------


async def test_the_command_imports_the_good_rows_and_writes_the_refused_ones_beside_the_file(
    client: TestClient[Any, Any], store: HubStore, admin: str, tmp_path: Path
) -> None:
    bad = tmp_path / "catalog.csv"
    bad.write_bytes(MIXED)
    hub = str(client.make_url("/")).rstrip("/")
    code, out, err = await run(str(bad), "--hub", hub, env={"SHELFSYNC_ADMIN_TOKEN": admin})
    assert code == 2, err
    refused_file = tmp_path / "catalog.refused.csv"
    assert out.splitlines()[0].startswith(f"imported 2 catalog row(s) from {bad}: 2 new or changed")
    assert f"4 row(s) refused, written to {refused_file}" in out
    lines = err.splitlines()
    assert (
        lines[0]
        == f"shelfsync-hub catalog import: {bad}: 4 rows cannot be used; fix them in {refused_file} and import that file:"
    )
    assert lines[1].startswith("  line 3, barcode: barcode 4006381333932") and lines[4].startswith("  line 6: ")
    assert [row[1] for row in rows_of(refused_file.read_text(encoding="utf-8"))[1:]] == [
        "4006381333932", MUG, PEN_CASE, "ABC-3"
    ]  # fmt: skip
    assert {(i.barcode, i.sku) for i in (await store.catalog()).items} == {(PEN, "PEN"), ("ABC-1", "TOTE")}
    code, out, err = await run(str(bad), "--hub", hub, "--all-or-nothing", env={"SHELFSYNC_ADMIN_TOKEN": admin})
    assert code == 2 and out == "" and "so nothing was imported" in err


async def test_the_command_checks_look_alikes_against_the_hubs_catalog(
    client: TestClient[Any, Any], store: HubStore, admin: str, tmp_path: Path
) -> None:
    """Through ``--hub`` the command read no catalog, so a look-alike of one of its SKUs came back from the hub as
    a 400 for its chunk (the chunks before it written); now it is a refused row like any other."""
    await store.put_catalog([CatalogItem(PEN, "PEN-BLUE", 1, "")])
    file = tmp_path / "more.csv"
    file.write_text(f"barcode,sku\n{MUG},MUG\nABC-1,\u200bPEN-BLUE\n", encoding="utf-8")
    hub = str(client.make_url("/")).rstrip("/")
    code, _, err = await run(str(file), "--hub", hub, env={"SHELFSYNC_ADMIN_TOKEN": admin})
    assert code == 2, err
    assert "line 3, sku: sku '\\u200bPEN-BLUE' looks like the SKU PEN-BLUE of the catalog" in err
    assert {i.sku for i in (await store.catalog()).items} == {"PEN-BLUE", "MUG"}


async def test_the_command_imports_more_than_one_requests_worth_into_the_database(tmp_path: Path) -> None:
    """Found black-box: a 1,000,000-row file was refused ("send at most 100,000 per request (shelfsync-hub catalog
    import splits it)") by that very command, which writes 5,000 rows at a time."""
    db = tmp_path / "hub.db"
    async with open_store(db):
        pass
    code, out, err = await run(str(big_catalog(tmp_path / "catalog.csv", 100_010)), "--db", str(db))
    assert code == 0, err[-2000:]
    assert "imported 100,010 catalog row(s)" in out
    async with open_store(db) as store:
        assert len((await store.catalog()).items) == 100_010


async def test_the_refused_file_is_never_the_file_imported(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    async with open_store(db):
        pass
    again = tmp_path / "catalog.refused.csv"  # the refused rows of a run before, fixed by hand but one
    again.write_text(f"problem,barcode,sku\nline 2: …,{PEN},PEN\nline 3: …,{MUG},\n", encoding="utf-8")
    code, out, err = await run(str(again), "--db", str(db))
    assert code == 2, err
    assert re.search(r"1 row\(s\) refused, written to .*catalog\.refused\.refused\.csv", out)
    assert again.read_text(encoding="utf-8").startswith("problem,barcode,sku\nline 2")  # untouched


async def test_a_stray_double_quote_refuses_its_row_not_the_file(
    client: TestClient[Any, Any], store: HubStore, admin: str
) -> None:
    """Found black-box: a hand-typed size, "12" mug", stopped the reader: the whole file was refused as unreadable,
    with partial too, for one row's quote."""
    body = b'barcode,sku,description\nA1,X1,plain\nA2,X2,"12" mug"\nA3,X3,ok\n'
    status, answer = await put_partial(client, admin, body)
    assert status == 200, answer
    assert [(r["line"], r["column"]) for r in answer["refused"]] == [(3, None)]
    assert 'double it ("") and put the whole field in double quotes' in answer["refused"][0]["reason"]
    assert rows_of(answer["refused_csv"])[1][1:] == ["A2", "X2", "", '12 mug"']  # as a lenient reader sees it
    assert sorted(i.barcode for i in (await store.catalog()).items) == ["A1", "A3"]
    status, answer = await put_partial(client, admin, b'barcode,sku\nA1,X1\nA2,"X2\nA3,X3\n')
    assert status == 400 and "must end with one" in answer["detail"]  # never closed: the rest is one field


async def test_a_refusal_of_a_wide_or_long_file_stays_short_and_names_what_it_met_first(
    client: TestClient[Any, Any], store: HubStore, admin: str
) -> None:
    """Found black-box: a header of 10,000 unknown columns was answered with a 138 KB sentence naming each; and
    10,002 rows of one barcode with ever other SKUs were refused past the limit naming none of them."""
    wide = b"barcode,sku," + b",".join(b"c%d" % i for i in range(10_000)) + b"\nA1,X1\n"
    status, answer = await put_partial(client, admin, wide)
    assert status == 400 and len(answer["detail"]) < 1_000, len(answer["detail"])
    assert "does not take: c0, c1, c2, c3, c4, c5, c6, c7, c8, c9 and 9,990 more" in answer["detail"]
    one_barcode = b"barcode,sku\n" + b"".join(b"A1,X%d\n" % i for i in range(REFUSED_MAX + 2))
    status, answer = await put_partial(client, admin, one_barcode)
    assert status == 400
    assert answer["detail"].startswith(
        f"more than {REFUSED_MAX:,} rows cannot be used (the file was read up to line 10,002), so nothing was imported:"
    )
    assert [p["line"] for p in answer["problems"][:3]] == [2, 3, 4]
    assert "barcode A1 is on lines 2, 3, 4, 5, 6 and 9,996 more with another SKU" in answer["problems"][0]["reason"]
    assert await store.catalog_version() == 0


@pytest.mark.timeout(120)  # the hub's one event loop was busy with it for about 40 minutes
async def test_a_header_naming_one_column_a_million_times_is_refused_at_once(
    client: TestClient[Any, Any], store: HubStore, admin: str
) -> None:
    """Found black-box: the check for a column named twice counted each column among all of them, so a 4 MB
    header of "sku" a million times held the hub's event loop (100,000 took 6 s; the time grows as the square)."""
    body = b"barcode," + b",".join([b"sku"] * 1_000_000) + b"\nA1,X1\n"
    status, answer = await put_partial(client, admin, body)
    assert status == 400 and "the header names sku more than once" in answer["detail"]

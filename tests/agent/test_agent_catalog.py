"""The agent's catalog: CSV/JSON files with bad rows reported by line, lookups by any GTIN form, hub refresh."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import pytest

from agent.catalog import (
    AgentCatalog,
    Catalog,
    CatalogError,
    CatalogItem,
    load_catalog_file,
    normalise_barcode,
    parse_catalog_json,
)
from hardware import decode
from protocol import csvtext
from tests.agent.agent_scan_helpers import ContractHub, gtin, wrong_check_digit

EAN13 = gtin("590123412345")  # 5901234123457
UPC_A = gtin("03600029145")  # 12 digits
EAN8 = gtin("9638507")
CASE = gtin("1" + EAN13[:-1])  # the case GTIN-14 of EAN13's item (indicator 1)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_keeps_good_rows_and_reports_each_bad_row_with_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "catalog.csv",
        "Barcode,SKU,Pack Size,Description\n"
        f"{EAN13},MUG-01,,Mug\n"  # line 2
        f"{CASE},MUG-01,12,Case of 12 mugs\n"  # line 3
        f"{UPC_A},SOAP-1,two,Soap\n"  # line 4: pack size is not a number
        ",NOSKU,1,\n"  # line 5: no barcode
        "\n"  # line 6: blank, skipped
        f"{EAN8},,1,\n"  # line 7: no sku
        f"{EAN13},OTHER,1,\n"  # line 8: the same barcode as another SKU
        'TOTE-00731,TOTE,1,"a tote,\n with a newline"\n'  # line 9 (two physical lines)
        f"{EAN8},unknown:x,1,\n"  # line 11: reserved prefix
        f"{EAN8},PEN-1,0,\n",  # line 12: pack size 0
    )
    loaded = load_catalog_file(path)
    assert {(i.barcode, i.sku, i.pack_size) for i in loaded.catalog} == {
        ("0" + EAN13, "MUG-01", 1),
        (CASE, "MUG-01", 12),
        ("TOTE-00731", "TOTE", 1),
    }
    problems = {p.line: p.reason for p in loaded.problems}
    assert sorted(problems) == [4, 5, 7, 8, 11, 12]
    assert "pack_size must be a whole number" in problems[4] and "'two'" in problems[4]
    assert "barcode is empty" in problems[5]
    assert "sku must be non-empty" in problems[7]
    assert "already MUG-01 × 1 on line 2" in problems[8]
    assert "reserved for unknown barcodes" in problems[11]
    assert "got 0" in problems[12]
    assert str(loaded.problems[0]).startswith("line 4: ")


def test_a_quote_never_closed_costs_its_own_row_only_and_is_reported_by_line(tmp_path: Path) -> None:
    """Found black-box: a description opened with a double quote and never closed swallowed every later row into
    it, silently: the file's next items were gone from the catalog and no problem was reported."""
    path = write(
        tmp_path / "catalog.csv",
        "barcode,sku,description\n"
        'TOTE-00731,TOTE,"a tote,\n with a newline"\n'  # line 2 (two physical lines)
        f'{EAN13},MUG-01,"Mug, blue\n'  # line 4: the quote is never closed
        f"{UPC_A},SOAP-1,Soap\n"  # line 5
        f'{EAN8},PEN-1,"Pen\r\n'  # line 6: another
        "CUP-9,CUP,Cup\n",  # line 7
    )
    loaded = load_catalog_file(path)
    assert {(i.barcode, i.sku, i.description) for i in loaded.catalog} == {
        ("TOTE-00731", "TOTE", "a tote,\n with a newline"),
        ("00" + UPC_A, "SOAP-1", "Soap"),
        ("CUP-9", "CUP", "Cup"),
    }
    why = (
        "a double quote opens a field on this line and does not close it where the field ends; the row is left out "
        "and the lines after it are read as rows of their own (close the quote to keep it)"
    )
    assert [(p.line, p.reason) for p in loaded.problems] == [(4, why), (6, why)]


def test_a_header_row_again_is_no_item_and_names_the_columns_of_the_rows_after_it(tmp_path: Path) -> None:
    """Found black-box: two files joined made the second header an item, barcode "barcode" of SKU "sku"."""
    path = write(
        tmp_path / "catalog.csv",
        f"barcode,sku\n{EAN13},MUG-01\n\ufeffBarcode, SKU\n{EAN8},PEN-1\nsku,pack_size,barcode\nCASE-1,12,{CASE}\n",
    )
    loaded = load_catalog_file(path)
    assert {(i.sku, i.pack_size) for i in loaded.catalog} == {("MUG-01", 1), ("PEN-1", 1), ("CASE-1", 12)}
    assert loaded.problems == ()


def test_a_quote_inside_a_quoted_field_is_reported_not_merged(tmp_path: Path) -> None:
    path = write(tmp_path / "catalog.csv", f'barcode,sku,description\n{EAN13},MUG-01,"Mug" blue\n{UPC_A},SOAP-1,Soap\n')
    loaded = load_catalog_file(path)
    assert [i.sku for i in loaded.catalog] == ["SOAP-1"]
    assert [p.line for p in loaded.problems] == [2]
    assert "does not close it where the field ends" in loaded.problems[0].reason


def test_the_hubs_csv_export_of_the_catalog_reads_back_as_the_hub_holds_it(tmp_path: Path) -> None:
    """Found black-box: a store catalog made from the hub's catalog CSV (GET /v1/catalog?format=csv, whose text
    cells starting with = + - @ carry a leading ' so that no spreadsheet runs them) kept that ': the SKU +PEN was
    read as '+PEN, another SKU than the hub's, and its scans booked under it."""
    path = write(
        tmp_path / "catalog.csv",
        "barcode,sku,pack_size,description\r\n"
        f"{EAN13},'+PEN,1,'@SUM(A1)\r\n"  # as the hub writes them
        f'{UPC_A},\'=cmd|calc,1,"\'=HYPERLINK(""x"")"\r\n'
        f"{EAN8},'-1,1,'isn't\r\n",  # a ' that guards nothing is the text's own
    )
    loaded = load_catalog_file(path)
    assert {(i.sku, i.description) for i in loaded.catalog} == {
        ("+PEN", "@SUM(A1)"),
        ("=cmd|calc", '=HYPERLINK("x")'),
        ("-1", "'isn't"),
    }
    assert loaded.problems == ()


def test_json_in_the_hubs_shape_or_as_a_list_reports_bad_items_by_number(tmp_path: Path) -> None:
    path = write(
        tmp_path / "catalog.json",
        json.dumps(
            {
                "version": 7,
                "items": [
                    {"barcode": EAN13, "sku": "MUG-01", "pack_size": 1, "description": "Mug"},
                    {"barcode": CASE, "sku": "MUG-01", "pack_size": 12},
                    {"barcode": UPC_A, "sku": "SOAP-1", "pack_size": -3},
                    "not an object",
                    {"barcode": 5901234123457, "sku": "NUM"},
                ],
            }
        ),
    )
    loaded = load_catalog_file(path)
    assert loaded.catalog.version == 7
    assert len(loaded.catalog) == 2
    assert [(p.where, p.line) for p in loaded.problems] == [("item", 3), ("item", 4), ("item", 5)]
    assert "must be an object" in loaded.problems[1].reason
    assert "barcode must be text" in loaded.problems[2].reason
    as_list = parse_catalog_json([{"barcode": EAN8, "sku": "PEN"}])
    assert as_list.catalog.get(EAN8) == CatalogItem("000000" + EAN8, "PEN", 1, "")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("missing.csv", None, "does not exist"),
        ("empty.csv", "", "is empty"),
        ("noheader.csv", "code,name\n1,2\n", "has no barcode or sku column"),
        ("bad.json", "{not json", "is not valid JSON"),
        ("shape.json", '{"items": 3}', "must be a list of items"),
        # Excel's "CSV (Comma delimited)" on Windows writes cp1252: the byte, its offset and line, what to do
        (
            "ansi.csv",
            b"barcode,sku,description\r\n5901234123457,MUG-01,Caf\xe9\r\n",
            (
                r"byte 0xe9 at offset 49 \(line 2\) is not UTF-8 text; save it as \"CSV UTF-8\" \(Excel\) or UTF-8, "
                r"or set \[catalog\] encoding to the charset it is saved in \(e\.g\. windows-1252\)$"
            ),
        ),
    ],
)
def test_a_file_that_cannot_be_read_at_all_is_one_clear_error(
    tmp_path: Path, name: str, text: str | bytes | None, message: str
) -> None:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        write(path, text)
    with pytest.raises(CatalogError, match=message) as caught:
        load_catalog_file(path)
    assert str(path) in str(caught.value)


def test_any_gtin_form_rcn_key_and_raw_text_find_the_item(tmp_path: Path) -> None:
    loaded = load_catalog_file(
        write(
            tmp_path / "c.csv",
            "barcode;sku;pack_size\n"
            f"{EAN13};MUG-01;1\n{UPC_A};SOAP-1;1\n{CASE};MUG-01;12\nTOTE-00731;TOTE;1\n0{UPC_A};DUP-SAME;1\n"
            "2012345000001;CHEESE;1\n",
        )
    )
    catalog = loaded.catalog
    # UPC-A and its 13-digit form are one key: the second row names another SKU for it.
    assert [p.line for p in loaded.problems] == [6]
    assert catalog.lookup(decode("]E0" + EAN13), "]E0" + EAN13).sku == "MUG-01"  # type: ignore[union-attr]
    assert catalog.lookup(decode("0" + EAN13), "0" + EAN13).sku == "MUG-01"  # type: ignore[union-attr]  # as GTIN-14
    assert catalog.lookup(decode(UPC_A), UPC_A).sku == "SOAP-1"  # type: ignore[union-attr]
    case = catalog.lookup(decode("]I1" + CASE), "]I1" + CASE)
    assert case is not None and case.pack_size == 12
    tote = catalog.lookup(decode("]C0TOTE-00731"), "]C0TOTE-00731")
    assert tote is not None and tote.sku == "TOTE"
    # A weighed item: the price is zeroed in the decoder's catalog key, so every label finds the cheese.
    weighed = decode("2012345102989", rcn_region="gb")
    assert weighed.gtin != "02012345000001"
    assert catalog.lookup(weighed, "2012345102989").sku == "CHEESE"  # type: ignore[union-attr]
    assert catalog.lookup(decode(EAN8), EAN8) is None
    assert normalise_barcode(f" {EAN8} ") == "000000" + EAN8
    assert normalise_barcode(wrong_check_digit(EAN13)) == wrong_check_digit(EAN13)  # not a GTIN: kept as text


def test_merged_catalog_lets_the_hub_win_for_a_barcode_both_know() -> None:
    local = Catalog([CatalogItem("0" + EAN13, "LOCAL"), CatalogItem("TOTE", "TOTE")])
    hub = Catalog([CatalogItem("0" + EAN13, "HUB", 6)], version=3)
    merged = local.merged(hub)
    assert (merged.get(EAN13), merged.get("TOTE"), merged.version) == (
        CatalogItem("0" + EAN13, "HUB", 6),
        CatalogItem("TOTE", "TOTE"),
        3,
    )


async def test_hub_refresh_uses_the_etag_and_a_304_changes_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "catalog-cache.json"
    local = write(tmp_path / "local.csv", f"barcode,sku\n{EAN13},LOCAL-MUG\nTOTE-1,TOTE\n")
    async with ContractHub() as hub:
        hub.catalog = {
            "version": 4,
            "items": [
                {"barcode": EAN13, "sku": "MUG-01", "pack_size": 1, "description": "Mug"},
                {"barcode": CASE, "sku": "MUG-01", "pack_size": 12, "description": "Case"},
                {"barcode": "", "sku": "BROKEN", "pack_size": 1, "description": ""},
            ],
        }
        catalog = AgentCatalog(file=local, hub_url=hub.url, token=hub.token, cache=cache)
        await catalog.load()
        assert catalog.catalog.get(EAN13).sku == "LOCAL-MUG"  # type: ignore[union-attr]

        first = await catalog.refresh()
        assert (first.status, first.version) == ("updated", 4)
        assert catalog.catalog.get(EAN13).sku == "MUG-01"  # type: ignore[union-attr]  # the hub wins
        assert catalog.catalog.get("TOTE-1").sku == "TOTE"  # type: ignore[union-attr]  # the file still counts
        assert catalog.catalog.get(CASE).pack_size == 12  # type: ignore[union-attr]

        second = await catalog.refresh()
        assert second.status == "not_modified"
        assert hub.catalog_requests == [None, '"4"']
        assert catalog.catalog.get(CASE).pack_size == 12  # type: ignore[union-attr]

        hub.catalog = {"version": 5, "items": [{"barcode": CASE, "sku": "MUG-01", "pack_size": 24, "description": ""}]}
        third = await catalog.refresh()
        assert (third.status, third.version) == ("updated", 5)
        assert catalog.catalog.get(CASE).pack_size == 24  # type: ignore[union-attr]
        assert catalog.catalog.get(EAN13).sku == "LOCAL-MUG"  # type: ignore[union-attr]  # no longer on the hub
        await catalog.stop()

    # Later, the hub is gone: a new agent starts from the cached copy and its ETag.
    offline = AgentCatalog(file=None, hub_url=hub.url, token="token-1", cache=cache, timeout_s=2.0)
    await offline.load()
    assert (offline.hub_version, offline.catalog.get(CASE).pack_size) == (5, 24)  # type: ignore[union-attr]
    with pytest.raises(CatalogError, match=r"nothing listens at 127\.0\.0\.1:\d+ \(connection refused\): the hub is not running there"):
        await offline.refresh()
    assert offline.catalog.get(CASE) is not None  # a failed refresh keeps what was known
    await offline.stop()


async def test_the_refresh_loop_keeps_the_catalog_fresh_and_reports_refused_credentials(tmp_path: Path) -> None:
    async with ContractHub() as hub:
        hub.catalog = {"version": 1, "items": [{"barcode": EAN8, "sku": "PEN", "pack_size": 1, "description": ""}]}
        async with AgentCatalog(hub_url=hub.url, token=hub.token, refresh_s=30.0) as catalog:
            await hub.wait_for(lambda: len(hub.catalog_requests) >= 1)
            hub.catalog = {
                "version": 2,
                "items": [{"barcode": EAN8, "sku": "PEN-2", "pack_size": 1, "description": ""}],
            }
            catalog.refresh_soon()
            await catalog.wait_for(lambda: catalog.hub_version == 2, timeout_s=10.0)
        assert hub.catalog_requests[:2] == [None, '"1"']
        assert catalog.catalog.get(EAN8).sku == "PEN-2"  # type: ignore[union-attr]

        refused = AgentCatalog(hub_url=hub.url, token="wrong")
        with pytest.raises(CatalogError, match="refused this agent's credentials"):
            await refused.refresh()
        await refused.stop()


async def test_a_changed_file_is_read_again_and_a_broken_one_keeps_the_last_good_items(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", f"barcode,sku\n{EAN8},PEN\n")
    catalog = AgentCatalog(file=path)
    await catalog.load()
    write(path, f"barcode,sku,pack_size\n{EAN8},PEN,10\n{EAN13},MUG\n")
    assert (await catalog.refresh()).status == "file_reloaded"
    assert catalog.catalog.get(EAN8).pack_size == 10  # type: ignore[union-attr]
    write(path, "nothing useful here\n")
    with pytest.raises(CatalogError, match="has no barcode or sku column"):
        await catalog.refresh()
    assert catalog.catalog.get(EAN13).sku == "MUG"  # type: ignore[union-attr]


# A store's catalog with characters outside ASCII, as Excel and Windows tools save it.
SAVED = f"barcode;sku;description\r\n{EAN13};MUG-01;Tasse « Café » für Müller\r\n{EAN8};PEN;Stylo 5 €\r\n"
DESCRIPTIONS = {"0" + EAN13: "Tasse « Café » für Müller", "000000" + EAN8: "Stylo 5 €"}


@pytest.mark.parametrize(
    ("mark", "codec"),
    [
        (b"", "utf-8"),
        (codecs.BOM_UTF8, "utf-8"),  # Excel's "CSV UTF-8", Notepad's "UTF-8 with BOM"
        (codecs.BOM_UTF16_LE, "utf-16-le"),  # Excel's "Unicode Text", PowerShell's >
        (codecs.BOM_UTF16_BE, "utf-16-be"),
        (codecs.BOM_UTF32_LE, "utf-32-le"),
        (codecs.BOM_UTF32_BE, "utf-32-be"),
    ],
)
@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_a_file_is_read_in_the_charset_its_byte_order_mark_says(
    tmp_path: Path, mark: bytes, codec: str, suffix: str
) -> None:
    items = [{"barcode": k, "sku": "X" + k, "description": d} for k, d in DESCRIPTIONS.items()]
    text = SAVED if suffix == ".csv" else json.dumps({"items": items}, ensure_ascii=False)
    path = tmp_path / f"catalog{suffix}"
    path.write_bytes(mark + text.encode(codec))
    loaded = load_catalog_file(path)
    assert loaded.problems == ()
    assert {i.barcode: i.description for i in loaded.catalog} == DESCRIPTIONS


@pytest.mark.parametrize(
    ("encoding", "codec", "text"),
    [
        ("windows-1252", "cp1252", SAVED),  # Excel's "CSV (Comma delimited)" on a Western European Windows
        ("cp1252", "cp1252", SAVED),
        ("ISO-8859-15", "iso8859_15", SAVED),
        ("Shift_JIS", "shift_jis", f"barcode,sku,description\n{EAN13},MUG-01,マグ\n{EAN8},PEN,青いペン\n"),
        ("utf-16", "utf-16", SAVED),  # with its byte-order mark
        ("utf-16le", "utf-16-le", SAVED),  # without one: the name says which end
    ],
)
async def test_a_file_is_read_in_the_charset_encoding_names(
    tmp_path: Path, encoding: str, codec: str, text: str
) -> None:
    path = tmp_path / "catalog.csv"
    path.write_bytes(text.encode(codec))
    catalog = AgentCatalog(file=path, encoding=encoding)
    await catalog.load()
    expected = {line.split(text[7])[0]: line.split(text[7])[2] for line in text.splitlines()[1:]}
    assert {i.barcode.lstrip("0"): i.description for i in catalog.catalog} == {
        k.lstrip("0"): v for k, v in expected.items()
    }


@pytest.mark.parametrize(
    ("encoding", "data", "words"),
    [
        # no encoding named: by the mark, else UTF-8; the offset counts the mark, as the file does
        (None, codecs.BOM_UTF8 + b"barcode,sku\n\n" + EAN8.encode() + b",PEN\n\xff2,X\n", "0xff at offset 29 (line 4)"),
        (None, codecs.BOM_UTF16_LE + "barcode,sku\n".encode("utf-16-le") + b"\x00\xdc", "offset 26 (line 2)"),
        (None, codecs.BOM_UTF16_LE + "barcode,sku\n".encode("utf-16-le") + b"\x00\xdc", "UTF-16 (little-endian)"),
        ("windows-1252", b"barcode,sku,description\n" + EAN8.encode() + b",PEN,\x81\n", "0x81 at offset 37 (line 2)"),
        ("windows-1252", b"barcode,sku,description\n" + EAN8.encode() + b",PEN,\x81\n", "not windows-1252 text"),
        # a mark that says another charset than the configuration: which one is it?
        (
            "windows-1252",
            codecs.BOM_UTF8 + b"barcode,sku\n",
            "starts with a UTF-8 byte-order mark but [catalog] encoding is windows-1252; set [catalog] encoding to",
        ),
        ("utf-16-be", codecs.BOM_UTF16_LE + "barcode,sku\n".encode("utf-16-le"), "UTF-16 (little-endian) byte-order"),
    ],
)
def test_a_file_not_text_in_its_charset_is_refused_whole_naming_the_file_offset_and_line(
    tmp_path: Path, encoding: str | None, data: bytes, words: str
) -> None:
    path = tmp_path / "catalog.csv"
    path.write_bytes(data)
    charset = None if encoding is None else csvtext.lookup(encoding)
    with pytest.raises(CatalogError) as caught:
        load_catalog_file(path, charset)
    message = str(caught.value)
    assert message.startswith(f"the catalog file {path} cannot be read: "), message
    assert words in message, message
    assert message.count(". ") == message.count("e.g. ") and "? " not in message and "\n" not in message, "one sentence"


async def test_a_rewrite_in_another_charset_is_refused_and_the_catalog_read_before_stays_in_use(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(SAVED.encode("utf-8"))
    catalog = AgentCatalog(file=path)
    await catalog.load()
    path.write_bytes(SAVED.replace("PEN", "PEN-2").encode("cp1252"))  # saved again by Excel as "CSV (Comma delimited)"
    with pytest.raises(CatalogError, match=r"byte 0xab at offset \d+ \(line 2\) is not UTF-8 text"):
        await catalog.refresh()
    assert catalog.catalog.get(EAN8).sku == "PEN"  # type: ignore[union-attr]  # nothing of the bad file
    assert catalog.catalog.get(EAN13).description == DESCRIPTIONS["0" + EAN13]  # type: ignore[union-attr]

    named = AgentCatalog(file=path, encoding="windows-1252")  # the configuration names its charset
    await named.load()
    assert named.catalog.get(EAN8).sku == "PEN-2"  # type: ignore[union-attr]
    assert named.catalog.get(EAN13).description == DESCRIPTIONS["0" + EAN13]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("encoding", "words"),
    [
        ("utf-7", "[catalog] encoding 'utf-7' hides characters in plain ASCII"),
        ("klingon-8", "[catalog] encoding 'klingon-8' is not one the agent knows"),
        ("base64", "[catalog] encoding 'base64' is not a character set"),
    ],
)
def test_a_charset_no_file_is_read_in_is_refused_at_the_start(tmp_path: Path, encoding: str, words: str) -> None:
    with pytest.raises(CatalogError) as caught:
        AgentCatalog(file=tmp_path / "c.csv", encoding=encoding)
    assert str(caught.value).startswith(words), caught.value


async def test_a_stopped_catalog_still_answers_lookups_but_refuses_to_refresh(tmp_path: Path) -> None:
    catalog = AgentCatalog(file=write(tmp_path / "c.csv", f"barcode,sku\n{EAN8},PEN\n"))
    await catalog.start()
    await catalog.stop()
    await catalog.stop()  # twice is fine
    assert catalog.catalog.get(EAN8) is not None
    with pytest.raises(CatalogError, match="was stopped"):
        await catalog.refresh()

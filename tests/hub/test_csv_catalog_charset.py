"""A catalog CSV in the charset its Content-Type declares: ``PUT /v1/catalog`` with ``text/csv; charset=...``, and
``shelfsync-hub catalog import --encoding``, on a real hub on 127.0.0.1 (docs/hub-api.md, "PUT /v1/catalog").

Found black-box: a retailer's ERP export in Windows-1252 sent with ``Content-Type: text/csv; charset=windows-1252``
was refused with advice to save it as UTF-8, though the client said what it was; the command had no way to say a
file's encoding at all. A declared charset is now the one the body is read in; one the hub does not take (unknown,
or one that hides characters in plain ASCII, as UTF-7 does) is a 415 naming it and the charsets it takes."""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from hub import HubStore, csvtext, open_store
from tests.hub.test_csv_catalog import MUG, PEN, admin, put_csv, run

__all__ = ["admin"]  # the fixture, shared with test_csv_catalog

ERP_EXPORT = f"barcode;sku;description\r\n{PEN};PEN-BLUE;Stylo bleu « Café » 5 €\r\n{MUG};MUG;Tasse für Müller\r\n"


async def put_as(client: TestClient[Any, Any], token: str, body: bytes, content_type: str, query: str = "") -> Any:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type}
    async with client.put("/v1/catalog" + query, data=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def descriptions(store: HubStore) -> dict[str, str]:
    return {i.barcode: i.description for i in (await store.catalog()).items}


@pytest.mark.parametrize(
    ("content_type", "encoding", "text"),
    [
        ("text/csv; charset=windows-1252", "cp1252", ERP_EXPORT),
        ('text/csv; charset="windows-1252"', "cp1252", ERP_EXPORT),  # quoted
        ("text/csv;CHARSET=WINDOWS-1252", "cp1252", ERP_EXPORT),  # the name and the parameter in upper case
        ("application/csv; charset=cp1252", "cp1252", ERP_EXPORT),
        ("text/csv; charset=ISO-8859-15", "iso8859_15", ERP_EXPORT),
        ("text/csv; charset=iso-8859-1", "latin_1", ERP_EXPORT.replace("€", "EUR")),
        ("text/csv; charset=Shift_JIS", "shift_jis", f"barcode,sku,description\n{PEN},PEN,青いペン\n{MUG},MUG,マグ\n"),
        ("text/csv; charset=utf-16le", "utf-16-le", ERP_EXPORT),  # no byte-order mark: the charset says which end
        ("text/csv; charset=utf-8", "utf-8-sig", ERP_EXPORT),  # Excel's "CSV UTF-8": its byte-order mark is dropped
        ("text/csv; charset=utf-16", "utf-16", ERP_EXPORT),  # with its byte-order mark
        ("text/csv; charset=utf-16", "utf-16-be", ERP_EXPORT),  # without one: big-endian, as UTF-16 says
        ("text/csv; charset=utf-32", "utf-32-be", ERP_EXPORT),  # … and UTF-32
    ],
)
async def test_a_csv_is_read_in_the_charset_its_content_type_declares(
    client: TestClient[Any, Any], store: HubStore, admin: str, content_type: str, encoding: str, text: str
) -> None:
    status, answer = await put_as(client, admin, text.encode(encoding), content_type)
    assert status == 200, answer
    assert (answer["imported"], answer["refused_count"]) == (2, 0)
    expected = {line.split(text[7])[0]: line.split(text[7])[2] for line in text.splitlines()[1:]}
    assert await descriptions(store) == expected


async def test_without_a_charset_the_body_is_utf8_as_before(
    client: TestClient[Any, Any], store: HubStore, admin: str
) -> None:
    status, answer = await put_csv(client, admin, ERP_EXPORT.encode("cp1252"))
    assert status == 400
    assert "the file is not UTF-8 text" in answer["problems"][0]["reason"]
    assert "charset=" in answer["problems"][0]["reason"]  # and says how to name the one it is in
    status, answer = await put_csv(client, admin, ERP_EXPORT.encode("utf-8"))
    assert status == 200, answer


@pytest.mark.parametrize("bom", [b"", codecs.BOM_UTF8])
def test_a_bad_byte_in_a_file_without_a_charset_is_named_where_it_is(bom: bytes) -> None:
    """Excel's "CSV UTF-8" starts with a byte-order mark: the bad byte and its line are counted from the file's
    start all the same, not from after the mark."""
    body = bom + b"barcode,sku\n\n\nA1,X1\n\xff2,X2\n"
    with pytest.raises(csvtext.TextUnreadable) as err:
        csvtext.text_of(body)
    assert err.value.line == 5
    assert f"byte 0xff at offset {len(bom) + 20}" in str(err.value), err.value


@pytest.mark.parametrize(
    ("charset", "words"),
    [
        ("klingon-8", "charset 'klingon-8' is not one the hub knows"),
        ("utf-7", "charset 'utf-7' hides characters in plain ASCII"),
        ("UTF7", "charset 'UTF7' hides characters in plain ASCII"),
        ("iso-2022-jp", "charset 'iso-2022-jp' hides characters in plain ASCII"),
        ("hz", "charset 'hz' hides characters in plain ASCII"),
        ("unicode_escape", "charset 'unicode_escape' is not a character set"),
        ("base64", "charset 'base64' is not a character set"),
        ("rot13", "charset 'rot13' is not a character set"),
        ("idna", "charset 'idna' is not a character set"),
        ("aliases", "charset 'aliases' is not one the hub knows"),
        ("", "charset is empty; name the file's (e.g. windows-1252), or none for UTF-8"),
        ("../../etc/passwd", "is not one the hub knows"),
        ("x" * 2000, "is not one the hub knows"),
    ],
)
async def test_a_charset_the_hub_does_not_take_is_a_415_naming_it_and_the_ones_it_takes(
    client: TestClient[Any, Any], store: HubStore, admin: str, charset: str, words: str
) -> None:
    body = f"barcode,sku\n{PEN},PEN\n".encode()
    for query in ("", "?partial=true"):
        status, answer = await put_as(client, admin, body, f"text/csv; charset={charset}", query)
        assert status == 415, answer
        assert answer["code"] == "unsupported_media_type"
        assert words in answer["detail"], answer["detail"]
        assert "nothing was imported" in answer["detail"]
        assert len(answer["detail"]) < 600  # a long name is shown cut, never whole
        assert {"utf-8", "utf-16", "cp1252", "iso8859-15", "shift_jis", "gb18030"} <= set(answer["charsets"])
        assert not {"utf-7", "hz", "iso2022_jp", "base64", "unicode_escape"} & set(answer["charsets"])
    assert await store.catalog_version() == 0


async def test_two_charsets_in_one_content_type_are_refused(
    client: TestClient[Any, Any], store: HubStore, admin: str
) -> None:
    body = f"barcode,sku\n{PEN},PEN\n".encode()
    status, answer = await put_as(client, admin, body, "text/csv; charset=cp1252; charset=utf-8")
    assert status == 415
    assert "names 2 charsets ('cp1252' and 'utf-8')" in answer["detail"]
    status, answer = await put_as(client, admin, body, 'text/csv; charset=utf-8; CHARSET="UTF-8"')
    assert status == 200, answer  # the same one twice says one thing


async def test_a_charset_parameter_of_10_kb_is_refused_and_the_hub_goes_on(
    client: TestClient[Any, Any], store: HubStore, admin: str
) -> None:
    body = f"barcode,sku\n{PEN},PEN\n".encode()
    async with client.put("/v1/catalog", data=body, headers={
            "Authorization": f"Bearer {admin}", "Content-Type": "text/csv; charset=" + "a" * 10_000}) as resp:  # fmt: skip
        assert resp.status == 400  # a header line past the HTTP server's 8 KiB, refused before the route
    assert await store.catalog_version() == 0
    status, answer = await put_as(client, admin, body, "text/csv; charset=" + "a" * 7_000)
    assert status == 415 and "is not one the hub knows" in answer["detail"] and len(answer["detail"]) < 600
    status, answer = await put_as(client, admin, body, "text/csv; charset=cp1252")
    assert status == 200, answer


@pytest.mark.parametrize(
    ("charset", "body", "line", "words"),
    [
        # 0x81 is no character in Windows-1252
        ("windows-1252", b"barcode,sku,description\nA1,X1,plain\nA2,X2,Caf\x81\n", 3,
         "byte 0x81 at offset 45 (line 3) is not windows-1252 text"),
        ("utf-8", "barcode,sku,description\nA1,X1,plain\nA2,X2,Café\n".encode("cp1252"), 3,
         "byte 0xe9 at offset 45 (line 3) is not utf-8 text"),
        ("shift_jis", "barcode,sku,description\nA1,X1,ペン\n".encode("shift_jis") + b"A2,X2,\x85\x40\n", 3,
         "byte 0x85 at offset 41 (line 3) is not shift_jis text"),
        ("utf-16le", "barcode,sku\nA1,X1\n".encode("utf-16-le") + b"\x00\xdc", 3,
         "bytes 0x00 0xdc at offset 36 (line 3) is not utf-16le text"),  # a lone low surrogate
    ],
)  # fmt: skip
async def test_a_body_not_valid_in_its_declared_charset_names_the_first_bad_byte_and_writes_nothing(
    client: TestClient[Any, Any], store: HubStore, admin: str, charset: str, body: bytes, line: int, words: str
) -> None:
    for query in ("", "?partial=true"):  # as a file not UTF-8 is today: the file's problem, not one row's
        status, answer = await put_as(client, admin, body, f"text/csv; charset={charset}", query)
        assert status == 400, answer
        assert [p["line"] for p in answer["problems"]] == [line]
        assert words in answer["problems"][0]["reason"], answer["problems"][0]["reason"]
        assert answer["detail"].startswith("the file cannot be read, so nothing was imported")
    assert await store.catalog_version() == 0


@pytest.mark.parametrize(
    ("charset", "body", "words"),
    [
        ("windows-1252", "\ufeffbarcode,sku\nA1,X1\n".encode(),
         "the file starts with a UTF-8 byte-order mark but its Content-Type says charset=windows-1252"),
        ("iso-8859-1", "barcode,sku\nA1,X1\n".encode("utf-16"),
         "the file starts with a UTF-16 (little-endian) byte-order mark but its Content-Type says charset=iso-8859-1"),
        ("utf-16be", "barcode,sku\nA1,X1\n".encode("utf-16-le").join([b"\xff\xfe", b""]),
         "the file starts with a UTF-16 (little-endian) byte-order mark but its Content-Type says charset=utf-16be"),
        ("utf-8", "barcode,sku\nA1,X1\n".encode("utf-16-be").join([b"\xfe\xff", b""]),
         "the file starts with a UTF-16 (big-endian) byte-order mark but its Content-Type says charset=utf-8"),
        ("utf-16", "\ufeffbarcode,sku\nA1,X1\n".encode(),
         "the file starts with a UTF-8 byte-order mark but its Content-Type says charset=utf-16"),
    ],
)  # fmt: skip
async def test_a_byte_order_mark_that_contradicts_the_declared_charset_is_said_so(
    client: TestClient[Any, Any], store: HubStore, admin: str, charset: str, body: bytes, words: str
) -> None:
    status, answer = await put_as(client, admin, body, f"text/csv; charset={charset}")
    assert status == 400, answer
    assert [p["line"] for p in answer["problems"]] == [1]
    assert words in answer["problems"][0]["reason"], answer["problems"][0]["reason"]
    assert "which one is it" in answer["problems"][0]["reason"]
    assert await store.catalog_version() == 0


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_no_charset_taken_decodes_to_more_characters_than_bytes(data: bytes) -> None:
    """So ``max_body_bytes`` bounds the decoded text too, whatever the charset: a 50 MB body is at most 50 million
    characters (the hub's peak memory for one, measured: about 10 bytes a character, whatever the charset)."""
    for name in csvtext.accepted():
        assert len(codecs.decode(data, name, "replace")) <= len(data), name


# --- the command ---------------------------------------------------------------------------------------------


async def test_the_command_reads_a_file_in_the_encoding_it_is_told(
    client: TestClient[Any, Any], store: HubStore, admin: str, tmp_path: Path
) -> None:
    export = tmp_path / "erp.csv"
    export.write_bytes(ERP_EXPORT.encode("cp1252"))
    hub = str(client.make_url("/")).rstrip("/")
    env = {"SHELFSYNC_ADMIN_TOKEN": admin}
    code, out, err = await run(str(export), "--hub", hub, env=env)  # as before: UTF-8, and told what to do
    assert code == 2 and out == ""
    assert "line 2: the file is not UTF-8 text" in err and "--encoding" in err, err
    assert await store.catalog_version() == 0
    code, out, err = await run(str(export), "--hub", hub, "--encoding", "cp1252", env=env)
    assert code == 0, err
    assert "imported 2 catalog row(s)" in out
    assert (await descriptions(store))[PEN] == "Stylo bleu « Café » 5 €"
    code, out, err = await run(str(export), "--hub", hub, "--encoding", "utf-7", env=env)
    assert (code, out) == (2, "")
    assert err == (
        "shelfsync-hub: --encoding 'utf-7' hides characters in plain ASCII (a byte sequence that looks like ASCII "
        "text decodes to other characters); save the file as UTF-8 or in another charset, e.g. windows-1252 or "
        "shift_jis; nothing was imported\n"
    )
    code, out, err = await run(str(export), "--hub", hub, "--encoding", "klingon-8", env=env)
    assert (code, out) == (2, "")
    assert err.startswith("shelfsync-hub: --encoding 'klingon-8' is not one the hub knows") and "cp1252" in err
    assert len(err.splitlines()) == 1  # one sentence, no traceback
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"barcode,sku,description\nA1,X1,Caf\x81\n")
    db = tmp_path / "offline-hub.db"
    async with open_store(db):
        pass
    code, out, err = await run(str(bad), "--db", str(db), "--encoding", "windows-1252")
    assert code == 2 and "line 2: byte 0x81 at offset 33 (line 2) is not windows-1252 text" in err, err
    code, out, err = await run(str(export), "--db", str(db), "--encoding", "Windows-1252")
    assert code == 0, err
    async with open_store(db) as offline:
        assert (await descriptions(offline))[MUG] == "Tasse für Müller"

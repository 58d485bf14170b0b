"""A channel's ``mapping_csv`` as Excel and Windows tools save it: read in ``mapping_encoding``, else by its
byte-order mark, else UTF-8 (``protocol.csvtext.file_text``, as the agent reads its catalog file), against a webhook
receiver on 127.0.0.1 (tests/channels/test_webhook_channel.py).

Found: the file was read as UTF-8 only. Excel's "Unicode Text" (UTF-16 with a mark) could not be read at all, a
UTF-8 mark made the header's first name "\\ufeffsku", and a Windows-1252 file could not be named as such."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from hub.channels import ChannelConfigError, SqliteChannelState
from hub.channels.mapping import MappingError
from protocol import Kind
from tests.channels.helpers import Hub, wait_until
from tests.channels.test_webhook_channel import Receiver, holds, hook_spec, pushing, receiver

__all__ = ["receiver"]  # the fixture

MAPPING = "sku,item_id\r\nCAFÉ-1,artículo-0001\r\n"


@pytest.mark.parametrize(
    ("encoding", "data"),
    [
        (None, codecs.BOM_UTF8 + MAPPING.encode()),  # Excel's "CSV UTF-8"
        (None, codecs.BOM_UTF16_LE + MAPPING.encode("utf-16-le")),  # Excel's "Unicode Text"
        (None, codecs.BOM_UTF32_BE + MAPPING.encode("utf-32-be")),
        ("windows-1252", MAPPING.encode("cp1252")),  # Excel's "CSV (Comma delimited)"
    ],
)
async def test_a_mapping_csv_is_read_in_its_charset(
    hub: Hub, state: SqliteChannelState, receiver: Receiver, tmp_path: Path, encoding: str | None, data: bytes
) -> None:
    csv = tmp_path / "map.csv"
    csv.write_bytes(data)
    await hub.move((Kind.RECEIVE, 5, "S1", "CAFÉ-1"))
    extra = {"mapping_encoding": encoding} if encoding else {}
    async with pushing(hook_spec(receiver, pool={"S1": "web"}, mapping_csv=str(csv), **extra), hub, state):
        await wait_until(holds(receiver, {("artículo-0001", "web"): 5}), "CAFÉ-1 under the receiver's id")


async def test_a_mapping_csv_not_text_in_its_charset_is_refused_whole_and_the_mapping_stays(
    hub: Hub, state: SqliteChannelState, receiver: Receiver, tmp_path: Path
) -> None:
    csv = tmp_path / "map.csv"
    csv.write_bytes(MAPPING.encode())
    await hub.move((Kind.RECEIVE, 5, "S1", "CAFÉ-1"))
    async with pushing(hook_spec(receiver, pool={"S1": "web"}, mapping_csv=str(csv)), hub, state) as pusher:
        await wait_until(holds(receiver, {("artículo-0001", "web"): 5}), "the first mapping")
        csv.write_bytes(MAPPING.replace("0001", "0002").encode("cp1252"))  # saved again as "CSV (Comma delimited)"
        with pytest.raises(MappingError) as caught:
            await pusher.refresh_mapping()
        assert str(caught.value) == (
            f"the mapping CSV {csv} of channel feed cannot be read: byte 0xc9 at offset 16 (line 2) is not UTF-8 "
            'text; save it as "CSV UTF-8" (Excel) or UTF-8, or set the channel\'s mapping_encoding (e.g. windows-1252)'
        )
        assert pusher.mapping is not None and pusher.mapping.by_sku() == {"CAFÉ-1": "artículo-0001"}
        await hub.move((Kind.SALE, -2, "S1", "CAFÉ-1"))
        await wait_until(holds(receiver, {("artículo-0001", "web"): 3}), "pushed under the mapping read before")


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"mapping_csv": "map.csv", "mapping_encoding": "utf-7"}, "mapping_encoding 'utf-7' hides characters"),
        ({"mapping_csv": "map.csv", "mapping_encoding": "klingon"}, "'klingon' is not one the hub knows"),
        ({"mapping_csv": "map.csv", "mapping_encoding": 1252}, "mapping_encoding must be the name of a charset"),
        ({"mapping_encoding": "windows-1252"}, "names the charset of mapping_csv, which is not set"),
    ],
)
def test_a_mapping_encoding_no_file_is_read_in_is_a_configuration_error(
    receiver: Receiver, extra: dict[str, object], words: str
) -> None:
    with pytest.raises(ChannelConfigError, match=words):
        hook_spec(receiver, **extra)

"""The hub's catalog over real HTTP on 127.0.0.1: ETag/304, admin upserts, and
re-booking of unknown-barcode scans through the normal ingest path."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from hub import HubStore
from hub.catalog import HUB_AGENT_ID, corrections
from hub.storage.base import CatalogItem, Effect, InvalidInput, LedgerRow
from protocol import (
    MSGPACK_CONTENT_TYPE,
    Kind,
    StockEvent,
    SyncRequest,
    decode_sync_response,
    encode_sync_request,
    new_event_id,
    pack_hlc,
)
from protocol.catalog import unknown_sku
from tests.harness.clock import RECENT_MS

WALL_MS = RECENT_MS  # inside the hub's clock window (tests/harness/clock.py)
CASE = "14006381333938"
ITEM = "4006381333931"


async def bearer(store: HubStore, role: str, locations: list[str] | None = None) -> dict[str, str]:
    _, token = await store.add_agent(locations or [], role=role)
    return {"Authorization": f"Bearer {token}"}


def scan(agent_id: str, seq: int, kind: Kind, qty: int, barcode: str, *, location: str = "S001") -> StockEvent:
    wall_ms = WALL_MS + seq
    return StockEvent(
        new_event_id(),
        agent_id,
        1,
        seq,
        location,
        unknown_sku(barcode),
        kind,
        qty,
        pack_hlc(wall_ms, 0),
        wall_ms,
        "scanner:back-door",
        attrs={"barcode": barcode, "unknown": True},
    )


async def sync(client: TestClient[Any, Any], token: str, agent_id: str, events: list[StockEvent]) -> Any:
    body = encode_sync_request(SyncRequest(agent_id, 1, tuple(events), acked_seq=0))
    headers = {"Authorization": f"Bearer {token}", "Content-Type": MSGPACK_CONTENT_TYPE}
    async with client.post("/v1/sync", data=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return decode_sync_response(await resp.read())


async def test_get_answers_the_version_and_history_as_etag_and_304_when_unchanged(
    client: TestClient[Any, Any], store: HubStore
) -> None:
    reader = await bearer(store, "reader")
    history = store.feed_history
    assert history, "a SQLite hub's database has a feed history"
    async with client.get("/v1/catalog", headers=reader) as resp:
        assert resp.status == 200 and resp.headers["ETag"] == f'"0.{history}"'
        assert await resp.json() == {"version": 0, "items": []}
    admin = await bearer(store, "admin")
    items = [{"barcode": ITEM, "sku": "PEN", "description": "Pen"}, {"barcode": CASE, "sku": "PEN", "pack_size": 12}]
    async with client.put("/v1/catalog", json={"items": items}, headers=admin) as resp:
        assert resp.status == 200, await resp.text()
        assert await resp.json() == {"version": 1, "updated": 2, "rebooked": 0}
        assert resp.headers["ETag"] == f'"1.{history}"'
    async with client.get("/v1/catalog", headers=reader | {"If-None-Match": f'"0.{history}"'}) as resp:
        assert resp.status == 200 and resp.headers["ETag"] == f'"1.{history}"'
        body = await resp.json()
    assert body == {
        "version": 1,
        "items": [
            {"barcode": CASE, "sku": "PEN", "pack_size": 12, "description": ""},
            {"barcode": ITEM, "sku": "PEN", "pack_size": 1, "description": "Pen"},
        ],
    }
    for tag in (f'"1.{history}"', f'W/"1.{history}"', f'"0.{history}", "1.{history}"', "*"):
        async with client.get("/v1/catalog", headers=reader | {"If-None-Match": tag}) as resp:
            assert resp.status == 304 and resp.headers["ETag"] == f'"1.{history}"'
            assert await resp.read() == b""
    async with client.get("/v1/catalog", headers=reader | {"If-None-Match": '"1"'}) as resp:  # the older form
        assert resp.status == 200, "a tag without the history may be of another history: answered in full"


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"items": [{"barcode": "4006381333932", "sku": "PEN"}]}, 400, "check digit"),
        ({"items": [{"barcode": ITEM, "sku": "PEN", "pack_size": 0}]}, 400, "pack_size"),
        ({"items": [{"barcode": ITEM, "sku": "PEN", "colour": "red"}]}, 400, "unknown field(s) colour"),
        ({"items": [{"barcode": ITEM}]}, 400, "no sku"),
        ({"items": [{"barcode": ITEM, "sku": ".."}]}, 400, "'..' is not a SKU: browsers and HTTP clients remove it"),
        ({"items": [ITEM]}, 400, "items[0] must be an object"),
        ({"things": []}, 400, '{"items": [...]}'),
        ({"items": [{"barcode": 4006381333931, "sku": "PEN"}]}, 400, "barcode must be a string"),
    ],
)
async def test_a_bad_put_is_one_clear_error_and_writes_nothing(
    client: TestClient[Any, Any], store: HubStore, body: Any, status: int, words: str
) -> None:
    async with client.put("/v1/catalog", json=body, headers=await bearer(store, "admin")) as resp:
        assert resp.status == status
        assert words in (await resp.json())["detail"]
    assert await store.catalog_version() == 0


async def test_only_admins_write_the_catalog(client: TestClient[Any, Any], store: HubStore) -> None:
    for role, locations in (("agent", ["S001"]), ("reader", None)):
        headers = await bearer(store, role, locations)
        async with client.put("/v1/catalog", json={"items": []}, headers=headers) as resp:
            assert resp.status == 403
            assert "only admin credentials can" in (await resp.json())["detail"]
    async with client.put("/v1/catalog", data=b"{", headers=await bearer(store, "admin")) as resp:
        assert resp.status == 400 and "not valid JSON" in (await resp.json())["detail"]


async def test_learning_a_case_barcode_rebooks_scans_onto_the_sku_times_pack_size(
    client: TestClient[Any, Any], store: HubStore
) -> None:
    agent_id, token = await store.add_agent(["S001"])
    reader = await bearer(store, "reader")
    scans = [scan(agent_id, 1, Kind.RECEIVE, 1, CASE), scan(agent_id, 2, Kind.RECEIVE, 1, CASE)]
    answer = await sync(client, token, agent_id, scans)
    assert [(c.sku, c.on_hand) for c in answer.counts] == [(unknown_sku(CASE), 2)]
    async with client.get("/v1/exceptions", headers=reader) as resp:
        (exc,) = (await resp.json())["exceptions"]
    assert (exc["kind"], exc["sku"], exc["data"]) == (
        "unknown_barcode",
        unknown_sku(CASE),
        {
            "barcode": "14006381333938",
            "on_hand": 2,
        },
    )

    admin = await bearer(store, "admin")
    put = {"items": [{"barcode": CASE, "sku": "PEN", "pack_size": 12}]}
    async with client.put("/v1/catalog", json=put, headers=admin) as resp:
        assert await resp.json() == {"version": 1, "updated": 1, "rebooked": 2}
    async with client.get("/v1/locations/S001/counts", headers=reader) as resp:
        counts = {c["sku"]: c["on_hand"] for c in (await resp.json())["counts"]}
    assert counts == {"PEN": 24, unknown_sku(CASE): 0}
    async with client.get("/v1/exceptions", headers=reader) as resp:
        assert (await resp.json())["exceptions"] == []
    async with client.put("/v1/catalog", json=put, headers=admin) as resp:  # again: a no-op
        assert await resp.json() == {"version": 1, "updated": 0, "rebooked": 0}

    # an agent with an old copy of the catalog scans the case again: re-booked after its sync
    await sync(client, token, agent_id, [scan(agent_id, 3, Kind.SALE, -1, CASE)])
    async with client.get("/v1/locations/S001/counts", headers=reader) as resp:
        counts = {c["sku"]: c["on_hand"] for c in (await resp.json())["counts"]}
    assert counts == {"PEN": 12, unknown_sku(CASE): 0}
    async with client.get("/v1/ledger?sku=PEN", headers=reader) as resp:
        rows = (await resp.json())["events"]
    assert [(r["agent_id"], r["kind"], r["qty"], r["source"]) for r in rows] == [
        (HUB_AGENT_ID, "sale", -12, "hub:catalog"),
        (HUB_AGENT_ID, "receive", 12, "hub:catalog"),
        (HUB_AGENT_ID, "receive", 12, "hub:catalog"),
    ]
    assert rows[0]["ref"] == rows[0]["attrs"]["rebooked_from"]
    assert rows[0]["attrs"]["barcode"] == CASE and rows[0]["attrs"]["pack_size"] == 12


def _row(kind: Kind, qty: int, *, ref: str | None = None, attrs: dict[str, Any] | None = None) -> LedgerRow:
    return LedgerRow(
        event_id=new_event_id(),
        agent_id="agent-1",
        epoch=1,
        seq=7,
        location="S001",
        sku=unknown_sku(CASE),
        kind=kind.value,
        qty=qty,
        occurred_at=pack_hlc(WALL_MS, 3),
        wall_ms=WALL_MS,
        source="scanner:x",
        ref=ref,
        reason=None,
        attrs=attrs or {"barcode": CASE, "unknown": True},
        effect=Effect.APPLIED,
        variance=None,
        duplicates=0,
        received_at_ms=WALL_MS,
    )


@pytest.mark.parametrize(
    ("kind", "qty", "ref", "cancel", "book"),
    [
        (Kind.COUNT, 5, None, (Kind.COUNT, 0), (Kind.COUNT, 60)),
        (Kind.SALE, -1, "receipt-9", (Kind.ADJUST, 1), (Kind.SALE, -12)),
        (Kind.RECEIVE, 2, None, (Kind.ADJUST, -2), (Kind.RECEIVE, 24)),
        (Kind.TRANSFER_OUT, -1, "T-1", (Kind.ADJUST, 1), (Kind.TRANSFER_OUT, -12)),
        (Kind.RESERVE, 1, "order-5", (Kind.RELEASE, -1), (Kind.RESERVE, 12)),
    ],
)
def test_corrections_cancel_the_unknown_key_and_book_the_sku(
    kind: Kind, qty: int, ref: str | None, cancel: tuple[Kind, int], book: tuple[Kind, int]
) -> None:
    original = _row(kind, qty, ref=ref, attrs={"barcode": CASE, "unknown": True, "to": "S002"})
    item = CatalogItem(CASE, "PEN", 12)
    undo, do = corrections(original, item)
    assert (undo.sku, undo.kind, undo.qty) == (original.sku, *cancel)
    assert (do.sku, do.kind, do.qty) == ("PEN", *book)
    for ev in (undo, do):
        assert (ev.agent_id, ev.location, ev.occurred_at, ev.source) == (
            "hub",
            "S001",
            original.occurred_at,
            "hub:catalog",
        )
    assert "unknown" not in do.attrs and do.attrs["pack_size"] == 12 and do.attrs["to"] == "S002"
    if kind in (Kind.TRANSFER_OUT, Kind.RESERVE):
        assert do.ref == ref  # the document ref pairs it: kept
    else:
        assert do.ref == do.attrs["rebooked_from"]
    again = corrections(original, item)
    assert again == (undo, do)  # deterministic: a second re-booking is a resend
    assert len({undo.event_id, do.event_id, original.event_id}) == 3


async def test_no_credential_takes_the_hubs_own_id_whose_unknown_scans_would_never_be_rebooked(
    store: HubStore,
) -> None:
    """The re-booking books as ``hub`` and skips every stored event of ``hub``: an agent issued that id had its
    unknown-barcode scans left under ``unknown:…`` for good once the catalog learnt them (rebooked 0)."""
    with pytest.raises(InvalidInput, match="the agent id hub is the hub's own"):
        await store.add_agent(["S001"], agent_id=HUB_AGENT_ID)
    assert await store.agent_status(HUB_AGENT_ID) == []

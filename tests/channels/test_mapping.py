"""SKU mapping from the channels' listings (through the emulators) and from a CSV, with findings."""

from __future__ import annotations

import aiohttp
import pytest

from hub.channels import (
    ListingEntry,
    MappingError,
    ShopifyConnector,
    SquareConnector,
    build_mapping,
    parse_mapping_csv,
)
from hub.channels.connector import COUNTED_PAGES_FACTOR, COUNTED_PAGES_SLACK, ChannelUnavailable
from tests.channels.emulators.shopify import ShopifyEmulator
from tests.channels.emulators.square import SquareEmulator
from tests.channels.helpers import spec_of


def test_findings_say_what_to_do() -> None:
    entries = [
        ListingEntry("i1", "A", barcode="4006381333931"),
        ListingEntry("i2", "B", barcode="4006381333931"),  # one barcode on two SKUs
        ListingEntry("i3", "C"),
        ListingEntry("i4", "C"),  # one SKU on two items
        ListingEntry("i5", "", title="Gift card"),
    ]
    m = build_mapping("web", entries, {"A", "B", "C", "D"}, where="Shopify")
    assert m.by_sku() == {"A": "i1", "B": "i2"}
    kinds = {f.kind: f for f in m.findings}
    assert set(kinds) == {"sku_twice", "barcode_twice", "no_sku", "unmapped_sku"}
    assert kinds["sku_twice"].sku == "C" and "give each item its own SKU in Shopify" in kinds["sku_twice"].detail
    assert "4006381333931" in kinds["barcode_twice"].detail and "A, B" in kinds["barcode_twice"].detail
    assert "Gift card" in kinds["no_sku"].detail
    assert kinds["unmapped_sku"].sku == "D" and "add it to the item" in kinds["unmapped_sku"].detail


def test_one_item_given_two_skus_maps_neither_and_says_so() -> None:
    text = "sku,item_id\nA,V1\nB,V1\nC,V2\n"  # a CSV row copied and its SKU edited, its item_id not
    m = build_mapping("pos", parse_mapping_csv(text), {"A", "B", "C"}, where="the mapping CSV")
    assert m.by_sku() == {"C": "V2"}, "an item updated from two SKUs shows each SKU's level in turn"
    (finding,) = m.findings
    assert (finding.kind, finding.sku) == ("item_twice", "A")
    assert "item V1" in finding.detail and "A, B" in finding.detail and "\n" not in finding.detail


def test_a_csv_maps_skus_and_a_bad_one_names_the_line() -> None:
    text = "sku,item_id,variant_id,barcode\nA,gid://shopify/InventoryItem/1,gid://shopify/ProductVariant/9,123\n\nB,gid://shopify/InventoryItem/2,,\n"
    entries = parse_mapping_csv(text)
    assert [(e.sku, e.item_id, e.variant_id, e.barcode) for e in entries] == [
        ("A", "gid://shopify/InventoryItem/1", "gid://shopify/ProductVariant/9", "123"),
        ("B", "gid://shopify/InventoryItem/2", "", ""),
    ]
    with pytest.raises(MappingError, match="has no item_id column"):
        parse_mapping_csv("sku,id\nA,1\n")
    with pytest.raises(MappingError, match="line 3 of the mapping CSV: item_id must be"):
        parse_mapping_csv("sku,item_id\nA,1\nB,\n")


async def test_the_shopify_listing_is_read_page_by_page() -> None:
    async with ShopifyEmulator(maximum_available=100.0) as shop, aiohttp.ClientSession() as session:
        loc = shop.add_location()
        made = [shop.add_variant(f"S{i:03d}", barcode=f"B{i}", stocked_at=[loc]) for i in range(130)]
        shop.add_variant("")
        spec = spec_of({"name": "web", "kind": "shopify", "url": shop.url, "pool": {"S1": loc}}, shop.token)
        entries = await ShopifyConnector(spec, session).listing()
    assert [(e.sku, e.item_id, e.variant_id) for e in entries[:130]] == [(v.sku, v.item_id, v.variant_id) for v in made]
    assert shop.stats.by_operation["productVariants"] >= 3  # a bucket of 100 allows pages of at most 49
    assert shop.stats.throttled <= 1
    assert build_mapping("web", entries, set()).findings[0].kind == "no_sku"


async def test_a_shop_inventing_a_variant_for_every_page_is_stopped_near_its_count() -> None:
    """Shopify's productVariantsCount bounds the listing: a shop handing out one new made-up variant per page under
    fresh cursors brings something new every time (the stale rule cannot see it) and would be followed to the
    10,000-page cap; it is stopped a few pages past what its 5 variants need, with one sentence."""
    async with ShopifyEmulator() as shop, aiohttp.ClientSession() as session:
        loc = shop.add_location()
        for i in range(5):
            shop.add_variant(f"S{i}", stocked_at=[loc])
        shop.invent_pages = 200  # far past the bound; the stand-in ends the walk itself after that many
        spec = spec_of({"name": "web", "kind": "shopify", "url": shop.url, "pool": {"S1": loc}}, shop.token)
        with pytest.raises(ChannelUnavailable, match=r"go on far past the 5 variant\(s\) Shopify counts") as err:
            await ShopifyConnector(spec, session).listing()
    pages = shop.stats.by_operation["productVariants"]
    assert pages == COUNTED_PAGES_FACTOR * 1 + COUNTED_PAGES_SLACK + 1, f"{pages} pages were asked for"  # 5 fit in 1
    message = str(err.value)
    assert message.startswith("Shopify's variant pages of channel web") and "reading stopped there" in message
    assert "\n" not in message


async def test_the_square_catalog_is_read_page_by_page() -> None:
    async with SquareEmulator() as sq, aiohttp.ClientSession() as session:
        loc = sq.add_location()
        ids = [sq.add_variation(f"Q{i:04d}", upc=f"0{i:011d}") for i in range(1_500)]
        spec = spec_of({"name": "pos", "kind": "square", "url": sq.url, "pool": {"S1": loc}}, sq.token)
        entries = await SquareConnector(spec, session).listing()
    assert [e.item_id for e in entries] == ids
    assert entries[3].sku == "Q0003" and entries[3].barcode == "000000000003"
    assert sq.stats.requests == 2


def test_a_csv_whose_header_names_a_column_twice_is_refused_not_read_by_its_first() -> None:
    """Two sku columns (a joined export: the hub's SKU and the channel's own): which one maps, the file does not say;
    the first was taken without a word, and every item was mapped from it. The catalog import refuses such a header
    the same way."""
    for header, twice in (("sku,item_id,sku", "sku"), ("SKU,item_id,barcode,Item_ID", "item_id")):
        with pytest.raises(MappingError) as caught:
            parse_mapping_csv(f"{header}\nA,1,B,2\n")
        assert str(caught.value) == (
            f"line 1 of the mapping CSV: the header names {twice} more than once; keep the one column it means"
        )


@pytest.mark.parametrize("separator", [";", "\t"])
def test_a_csv_saved_with_semicolons_or_tabs_is_read_by_its_header(separator: str) -> None:
    """Excel saves "CSV" with semicolons where the decimal mark is a comma, and "Unicode Text" with tabs: the
    catalog import reads both by their header line; the mapping said the file had no sku or item_id column."""
    text = separator.join(["sku", "item_id", "barcode"]) + "\n" + separator.join(["A", "gid://1", "123"]) + "\n"
    assert [(e.sku, e.item_id, e.barcode) for e in parse_mapping_csv(text)] == [("A", "gid://1", "123")]

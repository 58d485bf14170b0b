"""Columns are found by header name; profiles are detected from the header row or configured."""

from __future__ import annotations

import pytest

from agent.pos import BUILTIN_PROFILES, FileRejected, PosConfigError, PosImportConfig
from agent.pos.profiles import choose, match, profile_from_toml
from protocol import Kind

SQUARE_HEADER = ["Date", "Time", "Time Zone", "Category", "Item", "Qty", "Price Point Name", "SKU", "Modifiers Applied", "Gross Sales", "Discounts", "Net Sales", "Tax", "Transaction ID", "Payment ID", "Device Name", "Notes", "Details", "Event Type", "Location", "Dining Option", "Customer ID", "Customer Name", "Customer Reference ID", "Unit", "Count", "Itemization Type", "Fulfillment Note", "Channel", "Token", "Card Brand", "PAN Suffix", "GTIN"]
SHOPIFY_HEADER = ["Handle", "Title", "Option1 Name", "Option1 Value", "Option2 Name", "Option2 Value", "Option3 Name", "Option3 Value", "SKU", "HS Code", "COO", "Location", "Incoming", "Unavailable", "Committed", "Available", "On hand"]


def test_square_is_detected_and_columns_found_by_name_not_position() -> None:
    columns = choose(SQUARE_HEADER, BUILTIN_PROFILES)
    assert columns.profile.name == "square"
    assert columns.index["sku"] == SQUARE_HEADER.index("SKU")
    shuffled = list(reversed(SQUARE_HEADER))
    moved = choose(shuffled, BUILTIN_PROFILES)
    assert moved.profile.name == "square"
    assert moved.index["sku"] == shuffled.index("SKU")
    assert moved.index["ref"] == shuffled.index("Transaction ID")


def test_header_names_ignore_case_spacing_and_a_bom() -> None:
    header = ["\ufeffdate", "  SKU ", "QTY", "Kind"]
    columns = choose(header, BUILTIN_PROFILES)
    assert columns.profile.name == "generic"
    assert columns.index == {"date": 0, "sku": 1, "qty": 2, "kind": 3}


def test_shopify_inventory_is_detected_as_observations() -> None:
    columns = choose(SHOPIFY_HEADER, BUILTIN_PROFILES)
    assert columns.profile.name == "shopify"
    assert columns.profile.produces == "observations"
    assert columns.index["on_hand"] == SHOPIFY_HEADER.index("On hand")
    assert "on_hand" in choose([*SHOPIFY_HEADER[:-1], "On hand (current)"], BUILTIN_PROFILES).index


def test_an_unknown_header_row_names_what_it_saw() -> None:
    with pytest.raises(FileRejected, match=r"the header row \(Foo, Bar\) matches no import profile"):
        choose(["Foo", "Bar"], BUILTIN_PROFILES)


def test_a_named_profile_must_find_its_columns() -> None:
    with pytest.raises(FileRejected, match=r"lacks the Transaction ID column\(s\) that profile 'square' needs"):
        choose(["Date", "Time", "SKU", "Qty"], BUILTIN_PROFILES, "square")
    with pytest.raises(FileRejected, match="no import profile named 'clover'"):
        choose(SQUARE_HEADER, BUILTIN_PROFILES, "clover")


def test_equally_good_matches_ask_for_a_choice() -> None:
    twin = profile_from_toml("twin", {"columns": {"date": "date", "sku": "sku", "qty": "qty", "kind": "kind"}})
    with pytest.raises(FileRejected, match="equally well; set pos.profile"):
        choose(["date", "sku", "qty", "kind"], {"generic": BUILTIN_PROFILES["generic"], "twin": twin})


def test_a_custom_profile_from_toml() -> None:
    config = PosImportConfig.from_mapping(
        {
            "profiles": {
                "lightspeed": {
                    "vendor": "lightspeed",
                    "key": ["ref", "sku", "kind"],
                    "columns": {"date": "Sale Date", "sku": "Item SKU", "qty": ["Quantity", "Qty"], "ref": "Sale ID", "kind": "Type"},
                    "kinds": {"Sale": "sale", "Refund": "return"},
                }
            }
        }
    )
    columns = choose(["Sale ID", "Sale Date", "Type", "Item SKU", "Qty"], config.all_profiles())
    assert columns.profile.name == "lightspeed"
    assert columns.profile.source == "pos:lightspeed"
    assert columns.profile.kinds == {"sale": Kind.SALE, "refund": Kind.RETURN}
    assert columns.index == {"ref": 0, "date": 1, "kind": 2, "sku": 3, "qty": 4}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"columns": {"date": "d", "sku": "s"}}, "must map kind, qty"),
        ({"columns": {"colour": "c"}}, "is not a field"),
        ({"vendor": "Light Speed", "columns": {"date": "d"}}, "vendor must be a short lowercase name"),
        ({"columns": {"date": "d", "sku": "s", "qty": "q"}, "default_kind": "steal"}, "default_kind must be one of"),
        ({"columns": {"sku": "s", "on_hand": "o"}, "produces": "movements"}, "must map date, kind, qty"),
        ({"columns": {"date": "d", "sku": "s", "qty": "q", "kind": "k"}, "key": ["till"]}, "key must list mapped fields"),
        ({"columns": {"date": "d"}, "colour": 1}, "unknown key"),
    ],
)
def test_custom_profile_mistakes_name_the_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(PosConfigError, match=message):
        PosImportConfig.from_mapping({"profiles": {"mine": table}})


def test_observation_profiles_need_sku_and_on_hand_only() -> None:
    profile = profile_from_toml("counts", {"produces": "observations", "columns": {"sku": "Item", "on_hand": "Stock"}})
    assert not match(profile, ["Item", "Stock"]).missing()

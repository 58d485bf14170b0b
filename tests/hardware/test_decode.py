"""decode(): symbology identifiers, GTINs, GS1 element strings, RCNs, and the errors an operator sees."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from hardware import (
    GS,
    DecodedKind,
    DecodeError,
    GtinFormat,
    ScannerConfigError,
    WeightUnit,
    check_rcn_region,
    decode,
    scan_text,
)


def with_check_digit(payload: str) -> str:
    """The GS1 mod-10 check digit, computed here independently of the decoder's library."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(payload)))
    return payload + str((10 - total % 10) % 10)


def with_wrong_check_digit(payload: str) -> str:
    good = with_check_digit(payload)
    return good[:-1] + str((int(good[-1]) + 1) % 10)


# -- symbology identifiers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scanned", "aim_id", "name", "kind", "gtin"),
    [
        ("]E05901234123457", "]E0", "EAN-13 / UPC-A / UPC-E", DecodedKind.GTIN, "05901234123457"),
        ("]E496385074", "]E4", "EAN-8", DecodedKind.GTIN, "00000096385074"),
        ("]C10109501101530003", "]C1", "GS1-128", DecodedKind.GS1, "09501101530003"),
        (f"]d2{GS}0109501101530003", "]d2", "GS1 DataMatrix", DecodedKind.GS1, "09501101530003"),
        ("]Q30109501101530003", "]Q3", "GS1 QR Code", DecodedKind.GS1, "09501101530003"),
        ("]e00109501101530003", "]e0", "GS1 DataBar", DecodedKind.GS1, "09501101530003"),
        ("]I110950110153004", "]I1", "ITF-14", DecodedKind.GTIN, "10950110153004"),
        ("]C0SHELF-A-12", "]C0", "Code 128", DecodedKind.TEXT, None),
        ("]A0BIN42", "]A0", "Code 39", DecodedKind.TEXT, None),
        ("]Q1https://example.com/item/7", "]Q1", "QR Code", DecodedKind.TEXT, None),
    ],
)
def test_symbology_identifiers(scanned: str, aim_id: str, name: str, kind: DecodedKind, gtin: str | None) -> None:
    decoded = decode(scanned)
    assert decoded.symbology is not None
    assert (decoded.symbology.aim_id, decoded.symbology.name) == (aim_id, name)
    assert decoded.kind is kind
    assert decoded.gtin == gtin
    assert decoded.data == scanned[3:]


def test_plain_text_symbologies_are_not_read_as_gs1_or_gtin() -> None:
    decoded = decode("]C04006381333931")  # 13 digits in a plain Code 128: an internal label, not a GTIN
    assert decoded.kind is DecodedKind.TEXT
    assert decoded.gtin is None and decoded.catalog_key == "4006381333931"
    assert decoded.symbology is not None and not decoded.symbology.gs1


def test_an_unknown_symbology_identifier_is_an_error() -> None:
    with pytest.raises(DecodeError, match="not a known symbology identifier"):
        decode("]W0SOMETHING")


def test_an_identifier_without_data_is_an_error() -> None:
    with pytest.raises(DecodeError, match="carries no data after its identifier ]E0"):
        decode("]E0")


def test_an_empty_scan_is_an_error() -> None:
    with pytest.raises(DecodeError, match="empty"):
        decode(" \r\n")


# -- GTINs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "fmt"),
    [
        ("9638507", GtinFormat.GTIN_8),
        ("03600029145", GtinFormat.GTIN_12),
        ("590123412345", GtinFormat.GTIN_13),
        ("1095011015300", GtinFormat.GTIN_14),
    ],
)
def test_gtins_with_good_check_digits(payload: str, fmt: GtinFormat) -> None:
    digits = with_check_digit(payload)
    decoded = decode(digits)  # no identifier: all digits of a GTIN length is read as a GTIN
    assert decoded.kind is DecodedKind.GTIN
    assert decoded.gtin == digits.rjust(14, "0")
    assert decoded.gtin_original == digits
    assert decoded.gtin_format is fmt
    assert decoded.catalog_key == digits.rjust(14, "0")


@pytest.mark.parametrize(
    ("prefix", "payload"),
    [
        ("", "9638507"),
        ("", "03600029145"),
        ("", "590123412345"),
        ("", "1095011015300"),
        ("]E4", "9638507"),
        ("]E0", "03600029145"),
        ("]E0", "590123412345"),
        ("]I1", "1095011015300"),
    ],
)
def test_a_bad_check_digit_is_an_error_never_a_guess(prefix: str, payload: str) -> None:
    digits = with_wrong_check_digit(payload)
    expected = with_check_digit(payload)[-1]
    with pytest.raises(DecodeError) as caught:
        decode(prefix + digits)
    message = str(caught.value)
    assert f"{digits} has a wrong check digit (expected {expected}, got {digits[-1]})" in message
    assert message.count(".") <= 1 and message.endswith(".")  # one sentence
    assert caught.value.text == prefix + digits


def test_case_gtin_14_is_marked_as_a_case() -> None:
    case = decode("]I1" + with_check_digit("1095011015300"))
    unit = decode("]E0" + with_check_digit("590123412345"))
    variable = decode("]I1" + with_check_digit("9095011015300"))  # indicator 9: variable measure, not a case
    assert case.is_case and case.gtin_format is GtinFormat.GTIN_14
    assert not unit.is_case and not variable.is_case


def test_upc_e_under_e0_expands_to_upc_a() -> None:
    decoded = decode("]E001234565")
    assert decoded.gtin == "00012345000065"
    assert decoded.gtin_original == "01234565"
    assert decoded.gtin_format is GtinFormat.GTIN_12


def test_upc_e_bad_check_digit_is_an_error() -> None:
    with pytest.raises(DecodeError, match=r"UPC-E barcode 01234566 has a wrong check digit \(expected 5, got 6\)"):
        decode("]E001234566")


def test_ean_with_add_on() -> None:
    decoded = decode("]E3" + "5901234123457" + "12")
    assert (decoded.gtin, decoded.addon) == ("05901234123457", "12")
    assert decoded.attrs()["addon"] == "12"


def test_bytes_are_decoded_as_utf8_or_latin1() -> None:
    assert decode(b"]E05901234123457").gtin == "05901234123457"
    assert decode("Caf\u00e9".encode()).data == "Caf\u00e9"
    assert scan_text("Caf\u00e9".encode()) == "Caf\u00e9"
    assert scan_text(b"Caf\xe9") == "Caf\u00e9"  # not UTF-8: Latin-1, no byte lost


@pytest.mark.parametrize(
    ("scanned", "message"),
    [
        (b"\x00\xff\xfe" * 10, "bytes that are not text"),  # noise on the line, not UTF-8
        (b"Caf\xe9", "bytes that are not text"),  # Latin-1 (a scanner on another character set): not guessed
        (bytes(range(0x41, 0x50)) + b"\x00\x01", "control characters no barcode carries"),
        ("]C0\x1b[2J\x1b[31mFAKE", "control characters no barcode carries"),
        ("590123412345\x007", "control characters no barcode carries"),
        ("]C0BIN\u20287", "control characters no barcode carries"),
        ("1\ufffd2", "could not be read"),  # a key the wedge's layout does not know
        ("]E0\ufffd901234123457", "could not be read"),
    ],
)
def test_noise_control_characters_and_unreadable_keys_are_errors(scanned: str | bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message) as caught:
        decode(scanned)
    assert str(caught.value).isprintable()  # quoted with its control characters escaped


ARABIC_INDIC_GTIN = "".join(chr(0x660 + int(d)) for d in "4006381333931")  # ٤٠٠٦٣٨١٣٣٣٩٣١
FULLWIDTH_GTIN = "".join(chr(0xFF10 + int(d)) for d in "4006381333931")  # ４００６３８１３３３９３１


@pytest.mark.parametrize(
    ("scanned", "message"),
    [
        ("]E0" + ARABIC_INDIC_GTIN, "a GTIN holds only the digits 0-9"),
        ("]E0" + FULLWIDTH_GTIN, "a GTIN holds only the digits 0-9"),
        ("]E4" + ARABIC_INDIC_GTIN[:8], "a GTIN holds only the digits 0-9"),
        ("]I1" + "٠" + ARABIC_INDIC_GTIN, "a GTIN holds only the digits 0-9"),
        ("]C101" + "٠" + ARABIC_INDIC_GTIN, "GS1 data holds only ASCII characters"),
        ("]d201" + "０" + FULLWIDTH_GTIN, "GS1 data holds only ASCII characters"),
    ],
)
def test_digits_of_other_scripts_are_no_gtin(scanned: str, message: str) -> None:
    # Python's int() reads them as digits: they came out as a "GTIN" like '0٤٠٠٦٣٨١٣٣٣٩٣1' and were looked up
    with pytest.raises(DecodeError, match=message):
        decode(scanned.encode("utf-8"))


@pytest.mark.parametrize(
    ("scanned", "shown", "ident"),
    [
        ("12]E04006381333931", "12]E04006381333931", "]E0"),  # "12" typed into the scan field, then the scan
        ("]E04006381333931]E04006381333931", "]E04006381333931]E04006381333931", "]E0"),  # two scans, one Enter lost
        ("4006381333931]C0PAL-7", "4006381333931]C0PAL-7", "]C0"),  # a number keyed by hand, then a scan
        ("abc]C101095011015300031710", "abc]C101095011015300031710", "]C1"),
    ],
)
def test_a_symbology_identifier_after_the_start_is_two_things_run_together(
    scanned: str, shown: str, ident: str
) -> None:
    """Found at a handheld with a keyboard-wedge scanner: "12" typed into the scan field (meant for the quantity),
    then the scan typed its "]E0…" behind it, and the agent took '12]E04006381333931' as an unknown barcode: the
    item was not received, an unknown one was. A scanner sends its identifier first, once: one after the start is
    something typed before the scan, or two scans run together."""
    with pytest.raises(DecodeError) as caught:
        decode(scanned.encode())
    assert str(caught.value) == (
        f"The scan {shown!r} holds the symbology identifier {ident} after its start: something was typed before"
        " the scan, or two scans ran together; clear the field and scan the item again."
    )


def test_a_bracket_in_text_that_is_no_identifier_still_decodes() -> None:
    assert decode(b"]C0BIN]7").data == "BIN]7"
    assert decode(b"A]B").data == "A]B"


def test_what_barcodes_carry_still_decodes() -> None:
    assert decode(f"]C10109501101530003{GS}10LOT{GS}".encode()).lot == "LOT"  # GS: FNC1
    assert decode("]C0Caf\u00e9 \u00e0 la carte\t\r\n".encode()).data == "Caf\u00e9 \u00e0 la carte"
    assert decode("\t]E05901234123457\r").gtin == "05901234123457"  # a tab or CR around the value is a suffix


# -- GS1 element strings ---------------------------------------------------------------------------


def test_gs1_128_with_lot_expiry_serial_and_net_weight() -> None:
    decoded = decode(f"]C1010950110153000317260131310300018510ABC123{GS}21SER1")
    assert decoded.kind is DecodedKind.GS1
    assert decoded.gtin == "09501101530003" and decoded.gtin_original == "09501101530003"
    assert decoded.expiry == dt.date(2026, 1, 31)
    assert decoded.lot == "ABC123"
    assert decoded.serial == "SER1"
    assert decoded.net_weight is not None
    assert (decoded.net_weight.value, decoded.net_weight.unit) == (Decimal("0.185"), WeightUnit.KG)
    assert [(e.ai, e.value) for e in decoded.elements] == [
        ("01", "09501101530003"),
        ("17", "260131"),
        ("3103", "000185"),
        ("10", "ABC123"),
        ("21", "SER1"),
    ]
    assert decoded.attrs() == {
        "symbology": "]C1",
        "lot": "ABC123",
        "serial": "SER1",
        "expiry": "2026-01-31",
        "net_weight": "0.185",
        "net_weight_unit": "kg",
    }


def test_contents_and_count_on_a_logistic_label() -> None:
    sscc = with_check_digit("30614141123456789")
    decoded = decode(f"]C100{sscc}0209501101530003" + f"3712{GS}10LOT7")
    assert decoded.sscc == sscc
    assert decoded.content_gtin == "09501101530003" and decoded.count == 12
    assert decoded.gtin is None and decoded.lot == "LOT7"
    assert decoded.catalog_key == "09501101530003"


@pytest.mark.parametrize(("ai", "value"), [("3100", "000012"), ("3102", "001250"), ("3105", "001250")])
def test_net_weight_decimals_follow_the_ai(ai: str, value: str) -> None:
    decoded = decode(f"]C10109501101530003{ai}{value}")
    assert decoded.net_weight is not None
    assert decoded.net_weight.value == Decimal(value) / Decimal(10) ** int(ai[3])


def test_net_weight_in_pounds() -> None:
    decoded = decode("]C101950123456789033202001500")
    assert decoded.net_weight is not None
    assert (decoded.net_weight.value, decoded.net_weight.unit) == (Decimal("15.00"), WeightUnit.LB)


def test_expiry_day_00_means_the_last_day_of_the_month() -> None:
    assert decode("]C1010950110153000317260200").expiry == dt.date(2026, 2, 28)


def test_best_before() -> None:
    assert decode("]C1010950110153000315270415").best_before == dt.date(2027, 4, 15)


def test_leading_and_trailing_group_separators_are_tolerated() -> None:
    decoded = decode(f"]d2{GS}0109501101530003{GS}10LOT{GS}")
    assert (decoded.gtin, decoded.lot) == ("09501101530003", "LOT")


def test_gs1_without_identifier_by_group_separator_or_leading_ai() -> None:
    assert decode(f"10LOT{GS}0109501101530003").lot == "LOT"
    assert decode("0109501101530003" + "10ABC").gtin == "09501101530003"
    assert decode("(01)09501101530003(17)260131").expiry == dt.date(2026, 1, 31)


def test_gs1_digital_link_in_a_gs1_datamatrix() -> None:
    decoded = decode("]d2https://id.gs1.org/01/09501101530003/10/ABC")
    assert (decoded.gtin, decoded.lot) == ("09501101530003", "ABC")


@pytest.mark.parametrize(
    "scanned",
    [
        "]Q1https://id.gs1.org/01/04006381333931/10/LOT7/21/SN1?17=270630",  # a plain QR Code: how it is printed
        "https://id.gs1.org/01/04006381333931/10/LOT7/21/SN1?17=270630",  # a keyboard wedge sending no identifier
        "]d1http://shop.example.com/01/04006381333931/10/LOT7/21/SN1?17=270630",  # any domain, http, a Data Matrix
        "HTTPS://ID.GS1.ORG/01/04006381333931/10/LOT7/21/SN1?17=270630",  # a scanner upper-casing the scheme
    ],
)
def test_gs1_digital_link_in_any_symbology_is_gs1_data(scanned: str) -> None:
    decoded = decode(scanned)
    assert decoded.kind is DecodedKind.GS1
    assert (decoded.gtin, decoded.lot, decoded.serial) == ("04006381333931", "LOT7", "SN1")
    assert decoded.expiry == dt.date(2027, 6, 30)
    assert decoded.catalog_key == "04006381333931"
    assert decoded.attrs()["serial"] == "SN1"


@pytest.mark.parametrize("scanned", ["]Q1https://example.com/item/7", "https://example.com/01/abc", "http://shop.example/"])
def test_a_web_address_that_is_not_a_digital_link_stays_text(scanned: str) -> None:
    decoded = decode(scanned)
    assert decoded.kind is DecodedKind.TEXT and decoded.gtin is None
    assert decoded.data == scanned.removeprefix("]Q1")


def test_a_digital_link_with_a_bad_check_digit_is_refused_aloud() -> None:
    bad = with_wrong_check_digit("0400638133393")
    for scanned in (f"]Q1https://id.gs1.org/01/{bad}/21/SN1", f"https://id.gs1.org/01/{bad}/21/SN1"):
        with pytest.raises(DecodeError, match=rf"The GTIN in \(01\) {bad} has a wrong check digit"):
            decode(scanned)


def test_gs1_gtin_with_a_bad_check_digit_is_an_error() -> None:
    with pytest.raises(DecodeError, match=r"The GTIN in \(01\) 09501101530004 has a wrong check digit"):
        decode("]C10109501101530004" + "10LOT")
    with pytest.raises(DecodeError, match=r"The GTIN in \(02\)"):
        decode("]C10209501101530004" + "3712")


def test_gs1_sscc_with_a_bad_check_digit_is_an_error() -> None:
    with pytest.raises(DecodeError, match=r"The SSCC in \(00\)"):
        decode("]C100" + with_wrong_check_digit("30614141123456789"))


@pytest.mark.parametrize(
    "scanned",
    [
        "]C1011095011015300317261340",  # (17) month 13
        "]C1010950110153000x",  # (01) not digits
        "]C1ZZZ",  # no AI at all
    ],
)
def test_unreadable_gs1_is_an_error(scanned: str) -> None:
    with pytest.raises(DecodeError, match="The GS1-128 barcode .* cannot be read"):
        decode(scanned)


def test_values_that_only_look_like_gs1_stay_text() -> None:
    assert decode("0123456789012345678").kind is DecodedKind.TEXT  # 19 digits: no GTIN, no complete GS1
    assert decode("(staff) badge 7").kind is DecodedKind.TEXT


def test_values_with_a_group_separator_must_be_gs1() -> None:
    with pytest.raises(DecodeError, match="The GS1 barcode .* cannot be read"):
        decode(f"HELLO{GS}WORLD")


def test_gs1_without_identifier_still_checks_the_gtin() -> None:
    with pytest.raises(DecodeError, match="wrong check digit"):
        decode("(01)09501101530004(10)LOT")


# -- restricted circulation numbers (in-store weighed / priced items) ------------------------------


def test_rcn_price_in_great_britain() -> None:
    decoded = decode("]E02012345102989", rcn_region="gb")
    assert decoded.rcn is not None
    assert (decoded.rcn.region, decoded.rcn.price, decoded.rcn.currency) == ("gb", Decimal("2.98"), "GBP")
    assert decoded.rcn.weight_kg is None
    assert decoded.rcn.lookup_gtin == "02012345000001"
    assert decoded.catalog_key == "02012345000001"  # the same item at any price
    assert decode("]E02012345912342", rcn_region="gb").catalog_key == "02012345000001"
    assert decoded.attrs()["rcn_price"] == "2.98"


def test_rcn_weight_in_germany_and_sweden() -> None:
    german = decode("2812347012503", rcn_region="de")
    swedish = decode("2312345612502", rcn_region="SE")
    assert german.rcn is not None and german.rcn.weight_kg == Decimal("1.25")
    assert swedish.rcn is not None and swedish.rcn.weight_kg == Decimal("1.25")
    assert german.rcn.lookup_gtin == "02812340000002"


def test_rcn_price_in_denmark() -> None:
    decoded = decode("2201230024950", rcn_region="dk")
    assert decoded.rcn is not None and (decoded.rcn.price, decoded.rcn.currency) == (Decimal("24.95"), "DKK")


def test_rcn_with_a_bad_price_weight_check_digit_is_an_error() -> None:
    # The GTIN check digit is right; the weight's own check digit (German rules) is not.
    with pytest.raises(DecodeError, match="weighed or priced item whose price/weight check digit is wrong"):
        decode("2812348012502", rcn_region="de")


def test_rcn_without_a_region_is_flagged_but_not_interpreted() -> None:
    decoded = decode("]E02012345102989")
    assert decoded.rcn is not None
    assert (decoded.rcn.usage, decoded.rcn.region, decoded.rcn.price) == ("geo", None, None)
    assert decoded.catalog_key == "02012345102989"


def test_company_rcn() -> None:
    decoded = decode(with_check_digit("041234567890"), rcn_region="gb")
    assert decoded.rcn is not None and decoded.rcn.usage == "company"
    assert decoded.rcn.price is None


def test_an_ordinary_gtin_is_not_an_rcn() -> None:
    assert decode("]E05901234123457", rcn_region="gb").rcn is None


def test_unknown_rcn_region_is_a_config_error() -> None:
    with pytest.raises(ScannerConfigError, match="rcn_region 'xx' is not supported"):
        decode("]E05901234123457", rcn_region="xx")
    assert check_rcn_region(" GB ") == "gb"
    assert check_rcn_region(None) is None


@pytest.mark.parametrize(
    "scanned",
    [
        "]C10109501101530003" + "3712",
        "(01)09501101530003(37)12",
        "]C100" + with_check_digit("30614141123456789") + "3712",
    ],
    ids=["gs1-128", "hri", "sscc-only"],
)
def test_a_count_37_without_a_contents_gtin_02_is_refused_with_the_rule(scanned: str) -> None:
    with pytest.raises(DecodeError, match=r"a count \(37\) is valid only with the GTIN of contained items \(02\)"):
        decode(scanned)


@pytest.mark.parametrize(
    ("scanned", "ai"),
    [
        ("]C10109501101530003" + "21SN1" + GS + "21SN2", "21"),
        ("]C10109501101530003" + "10A" + GS + "10B", "10"),
        ("]C10109501101530003" + "3102001000" + "3103001000", "310n"),
        ("(01)09501101530003(01)09501101530010", "01"),
    ],
)
def test_an_element_string_twice_with_two_values_is_refused(scanned: str, ai: str) -> None:
    with pytest.raises(DecodeError, match=rf"\({ai}\) twice"):
        decode(scanned)


def test_an_element_string_repeated_with_the_same_value_is_taken_once() -> None:
    decoded = decode("]C10109501101530003" + "21SN1" + GS + "21SN1")
    assert decoded.serial == "SN1"


def test_a_gtin_01_with_a_contents_gtin_02_is_an_invalid_pair_and_refused() -> None:
    """(01) and (02) may not go together: with a count (37) the label was booked as one of (01), its count ignored."""
    with pytest.raises(DecodeError, match=r"\(01\) and the GTIN of contained items \(02\), which may not go together"):
        decode("]C10109501101530003" + "0209501101530010" + "3712")

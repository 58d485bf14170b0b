"""Barcode decoding: AIM symbology identifiers, GTINs, GS1 element strings and RCNs.

Pure: no I/O. ``decode(text)`` turns what a scanner sent into a ``Decoded``
value or raises ``DecodeError`` with one sentence for the operator. A bad check
digit is always an error, never a guess.

How a value without a symbology identifier is read (configure scanners to send
AIM identifiers and this guesswork disappears):

* only digits, 8/12/13/14 of them: a GTIN, check digit enforced;
* a GS character: GS1 element strings (an error if they do not parse);
* ``(01)…`` human-readable form, or starting with AI 00, 01 or 02, and parsing
  completely as GS1: GS1 element strings;
* anything else: plain text (an internal label, a Code 39 shelf tag ...).

A GS1 Digital Link URI (``https://`` or ``http://``, any domain, as biip
parses it) is GS1 data whatever the symbology carrying it: a plain QR Code
(``]Q1``) is how Digital Link is usually printed, and a keyboard wedge often
sends no identifier at all. A URL that is not a Digital Link stays text; one
that is, with a wrong check digit, is refused like any other GS1 code.

A value holding what no barcode carries is an error before any of this:
bytes that are not UTF-8, a control character other than GS (line noise, a
scanner on the wrong baud rate or parity) or U+FFFD (a key a keyboard wedge's
layout does not know). Pass a scan's ``raw`` bytes so the first can be told.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from biip import EncodeError, ParseConfig, ParseError
from biip.checksums import gs1_standard_check_digit
from biip.gs1_digital_link_uris import GS1DigitalLinkURI
from biip.gs1_element_strings import GS1ElementString
from biip.gs1_messages import GS1Message
from biip.gtin import Gtin
from biip.rcn import Rcn, RcnRegion, RcnUsage
from biip.symbology import GS1Symbology, SymbologyIdentifier
from biip.upc import Upc

from hardware.errors import DecodeError, ScannerConfigError

GS = "\x1d"  # ASCII group separator: FNC1 between variable-length GS1 fields
GTIN_LENGTHS = (8, 12, 13, 14)
SHOWN_MAX_CHARS = 48  # how much of a bad value an error message quotes

# What no scan of a barcode holds: the control characters of protocol.values.CONTROL_CHARS but GS, the line
# separators, and U+FFFD (what the wedge types for a key its layout does not know).
_CONTROL_RE = re.compile("[\x00-\x1c\x1e\x1f\x7f-\x9f\u2028\u2029]")
UNREADABLE_CHAR = "\ufffd"

RCN_REGIONS: tuple[str, ...] = tuple(region.value for region in RcnRegion)

_NAMES = {
    "]A0": "Code 39",
    "]C0": "Code 128",
    "]C1": "GS1-128",
    "]E0": "EAN-13 / UPC-A / UPC-E",
    "]E3": "EAN / UPC with add-on",
    "]E4": "EAN-8",
    "]F0": "Codabar",
    "]G0": "Code 93",
    "]I0": "Interleaved 2 of 5",
    "]I1": "ITF-14",
    "]J1": "GS1 DotCode",
    "]L0": "PDF417",
    "]Q1": "QR Code",
    "]Q3": "GS1 QR Code",
    "]d1": "Data Matrix",
    "]d2": "GS1 DataMatrix",
    "]e0": "GS1 DataBar",
    "]z0": "Aztec Code",
}
_GTIN_SYMBOLOGIES = frozenset(
    {GS1Symbology.EAN_13, GS1Symbology.EAN_13_WITH_ADD_ON, GS1Symbology.EAN_8, GS1Symbology.ITF_14}
)
_GS1_SYMBOLOGIES = frozenset(GS1Symbology.with_gs1_messages())
_LINK_SYMBOLOGIES = frozenset(GS1Symbology.with_gs1_digital_link_uri())
_LINK_SCHEMES = ("https://", "http://")  # what a GS1 Digital Link URI starts with (GS1 Digital Link standard)


class DecodedKind(StrEnum):
    GTIN = "gtin"  # a retail symbol (EAN/UPC/ITF-14) carrying one GTIN
    GS1 = "gs1"  # GS1 element strings (GS1-128, GS1 DataMatrix, GS1 QR, DataBar)
    TEXT = "text"  # anything else: internal labels, Code 39 shelf tags, plain QR codes


class GtinFormat(StrEnum):
    GTIN_8 = "GTIN-8"
    GTIN_12 = "GTIN-12"
    GTIN_13 = "GTIN-13"
    GTIN_14 = "GTIN-14"


class WeightUnit(StrEnum):
    KG = "kg"
    LB = "lb"


@dataclass(frozen=True, slots=True)
class Symbology:
    aim_id: str  # "]E0"
    name: str  # "EAN-13 / UPC-A / UPC-E"
    gs1: bool  # whether the symbology carries GS1 data (a GTIN or element strings)


@dataclass(frozen=True, slots=True)
class NetWeight:
    value: Decimal
    unit: WeightUnit


@dataclass(frozen=True, slots=True)
class RcnInfo:
    """A restricted circulation number: an in-store number, often weighed or priced.

    Without a configured region only ``usage`` is known. With one, the variable
    part is read and ``lookup_gtin`` (the number with that part zeroed) is the
    key to find the item in the catalogue.
    """

    usage: str  # "geo" (region-wide rules) or "company" (the retailer's own scheme)
    region: str | None = None  # ISO 3166 alpha-2, lower case: "gb", "de", "se" ...
    item_reference: str | None = None
    lookup_gtin: str | None = None
    price: Decimal | None = None
    currency: str | None = None
    weight_kg: Decimal | None = None
    count: int | None = None


@dataclass(frozen=True, slots=True)
class Element:
    ai: str  # "10"
    value: str  # "LOT42"
    title: str  # "BATCH/LOT"


@dataclass(frozen=True, slots=True)
class Decoded:
    """What one scan means. ``data`` is the payload after the symbology identifier."""

    kind: DecodedKind
    data: str
    symbology: Symbology | None = None
    gtin: str | None = None  # normalized GTIN-14
    gtin_original: str | None = None  # the digits as scanned (UPC-E stays 8 digits)
    gtin_format: GtinFormat | None = None
    is_case: bool = False  # GTIN-14 with indicator digit 1-8: a case / pack of a base item
    addon: str | None = None  # EAN/UPC 2- or 5-digit add-on (periodicals, books)
    sscc: str | None = None  # (00) logistic unit
    content_gtin: str | None = None  # (02) GTIN-14 of the items a logistic unit contains
    count: int | None = None  # (37) how many of content_gtin
    var_count: int | None = None  # (30) variable count of items of a variable-measure GTIN (indicator digit 9)
    lot: str | None = None  # (10)
    best_before: dt.date | None = None  # (15)
    expiry: dt.date | None = None  # (17)
    serial: str | None = None  # (21)
    net_weight: NetWeight | None = None  # (310n) kg / (320n) lb
    rcn: RcnInfo | None = None
    elements: tuple[Element, ...] = ()

    @property
    def catalog_key(self) -> str:
        """The value to resolve through the catalogue (a GTIN-14 where there is one)."""
        if self.rcn is not None and self.rcn.lookup_gtin is not None:
            return self.rcn.lookup_gtin
        return self.gtin or self.content_gtin or self.data

    @property
    def sscc_only(self) -> bool:
        """An SSCC (00) naming a pallet or parcel, once, with no item on it: no catalog ever learns it."""
        return self.sscc is not None and self.gtin is None and self.content_gtin is None

    def attrs(self) -> dict[str, str | int]:
        """The GS1 facts worth keeping on a stock event (lot, expiry, serial ...)."""
        out: dict[str, str | int] = {}
        if self.symbology is not None:
            out["symbology"] = self.symbology.aim_id
        for key in ("sscc", "lot", "serial", "addon"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.count is not None:
            out["count"] = self.count
        if self.var_count is not None:
            out["var_count"] = self.var_count
        if self.expiry is not None:
            out["expiry"] = self.expiry.isoformat()
        if self.best_before is not None:
            out["best_before"] = self.best_before.isoformat()
        if self.net_weight is not None:
            out["net_weight"] = str(self.net_weight.value)
            out["net_weight_unit"] = self.net_weight.unit.value
        if self.rcn is not None:
            for key in ("price", "currency", "weight_kg"):
                value = getattr(self.rcn, key)
                if value is not None:
                    out[f"rcn_{key}"] = str(value)
        return out


def check_rcn_region(region: str | None) -> str | None:
    """Validate a configured RCN region code ("gb", "de", ...); None means "not configured"."""
    if region is None:
        return None
    code = region.strip().lower()
    if code not in RCN_REGIONS:
        raise ScannerConfigError(
            f"rcn_region {region!r} is not supported; use one of {', '.join(RCN_REGIONS)} or leave it unset"
        )
    return code


def scan_text(raw: bytes) -> str:
    """Bytes from a scanner as text to show: UTF-8 when valid, else Latin-1 (never loses a byte; ``decode`` refuses it)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def decode(text: str | bytes, *, rcn_region: str | None = None) -> Decoded:
    """Decode one scanned value (a scan's ``raw`` bytes, or text); raise ``DecodeError`` when it cannot be trusted."""
    if isinstance(text, (bytes, bytearray)):
        text = _utf8(bytes(text))
    region = check_rcn_region(rcn_region)
    config = ParseConfig(rcn_region=region)
    value = text.strip(" \t\r\n")  # not str.strip(): GS (0x1d) counts as whitespace there
    if not value:
        raise DecodeError(text, "The scan is empty.")
    _check_characters(value, text)

    ident: SymbologyIdentifier | None = None
    symbology: Symbology | None = None
    payload = value
    if value.startswith("]"):
        ident = _identifier(value, text)
        symbology = _symbology(ident)
        payload = value[len(ident.value) :]
        if not payload.strip(GS):
            raise DecodeError(text, f"The {symbology.name} scan carries no data after its identifier {ident.value}.")
    _check_one_scan(value, payload, text)

    gs1 = ident.gs1_symbology if ident is not None else None
    if gs1 in _GTIN_SYMBOLOGIES:
        return _decode_retail(payload, symbology, gs1, config, text)
    if gs1 in _GS1_SYMBOLOGIES:
        return _decode_gs1(payload, symbology, config, text, links=gs1 in _LINK_SYMBOLOGIES)
    if payload[:8].lower().startswith(_LINK_SCHEMES):
        try:
            return _decode_gs1(payload, symbology, config, text, links=True, strict=False)
        except _NotGS1:
            pass  # a web address that is not a Digital Link: text
    if ident is not None:
        return Decoded(kind=DecodedKind.TEXT, data=payload, symbology=symbology)

    # No identifier: infer strictly (see the module docstring).
    if payload.isdigit() and payload.isascii() and len(payload) in GTIN_LENGTHS:
        return _decode_retail(payload, None, None, config, text)
    if GS in payload:
        return _decode_gs1(payload, None, config, text, links=False)
    if payload.startswith("(") or payload[:2] in ("00", "01", "02") and payload.isascii() and len(payload) >= 16:
        try:
            return _decode_gs1(payload, None, config, text, links=False, strict=False)
        except _NotGS1:
            pass
    return Decoded(kind=DecodedKind.TEXT, data=payload)


def _utf8(raw: bytes) -> str:
    """The bytes a scanner sent as text; bytes that are not UTF-8 are noise or a misread, never a barcode."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        text = scan_text(raw)
        raise DecodeError(
            text,
            f"The scan {_shown(text)!r} holds bytes that are not text (not UTF-8: line noise, or a scanner whose "
            "baud rate, parity or character set does not match); scan the item again.",
        ) from err


def _check_characters(value: str, text: str) -> None:
    """Refuse a value holding what no barcode carries: it is noise or a misread, never a barcode to book."""
    if UNREADABLE_CHAR in value:
        raise DecodeError(
            text,
            f"The scan {_shown(value)!r} holds characters that could not be read (a key the scanner's keyboard "
            "layout does not know, or bytes that are not text); check the scanner's settings and scan the item again.",
        )
    if _CONTROL_RE.search(value):
        raise DecodeError(
            text,
            f"The scan {_shown(value)!r} holds control characters no barcode carries (line noise, or a scanner "
            "whose baud rate or parity does not match); scan the item again.",
        )


# A symbology identifier: "]", the symbology's letter, its modifier (ISO/IEC 15424).
_IDENT_RE = re.compile(r"\][A-Za-z][0-9A-Za-z]")


def _check_one_scan(value: str, payload: str, text: str) -> None:
    """Refuse a value holding a symbology identifier after its start: a scanner sends its identifier first, once, so
    one further on is something typed before the scan ("12" meant for the quantity, in a handheld's scan field) or two
    scans run together (an Enter lost): taken as one unknown barcode, the item scanned was never booked."""
    for found in _IDENT_RE.finditer(payload):
        try:
            ident = SymbologyIdentifier.extract(payload[found.start() :])
        except (ParseError, IndexError, ValueError):
            continue
        if payload[found.start() + len(ident.value) :].strip(GS):  # data follows: a scan's start
            raise DecodeError(
                text,
                f"The scan {_shown(value)!r} holds the symbology identifier {ident.value} after its start: something"
                " was typed before the scan, or two scans ran together; clear the field and scan the item again.",
            )


class _NotGS1(Exception):
    """The value does not parse as GS1 at all (as opposed to parsing with a bad check digit)."""


def _shown(value: str) -> str:
    value = value.replace(GS, "<GS>")
    return value if len(value) <= SHOWN_MAX_CHARS else value[: SHOWN_MAX_CHARS - 1] + "…"


def _detail(err: Exception) -> str:
    return str(err).rstrip(".")


def _identifier(value: str, text: str) -> SymbologyIdentifier:
    try:
        return SymbologyIdentifier.extract(value)
    except (ParseError, IndexError, ValueError) as err:
        raise DecodeError(
            text, f"The scan {_shown(value[:4])!r} starts with ']' but is not a known symbology identifier."
        ) from err


def _symbology(ident: SymbologyIdentifier) -> Symbology:
    name = _NAMES.get(ident.value) or f"{ident.iso_symbology.name.replace('_', ' ').title()} ({ident.value})"
    return Symbology(aim_id=ident.value, name=name, gs1=ident.gs1_symbology is not None)


def _check_digit_sentence(digits: str, what: str = "Barcode", *, upc_e: bool = False) -> str | None:
    """The operator's sentence for a wrong check digit, or None when the check digit is right."""
    if not (digits.isdigit() and digits.isascii() and len(digits) in (*GTIN_LENGTHS, 18)):
        return None
    if upc_e:  # UPC-E's check digit is that of its UPC-A expansion
        try:
            expected = Upc.parse(digits[:-1]).check_digit
        except ParseError:
            return None
    else:
        expected = gs1_standard_check_digit(digits[:-1])
    if expected == int(digits[-1]):
        return None
    return (
        f"{what} {digits} has a wrong check digit (expected {expected}, got {digits[-1]}); "
        "scan it again or key in the number printed under the bars."
    )


def _gtin_error(digits: str, err: ParseError, text: str) -> DecodeError:
    sentence = _check_digit_sentence(digits)
    if sentence is None and "variable measure" in str(err):
        sentence = (
            f"Barcode {digits} is a weighed or priced item whose price/weight check digit is wrong; "
            "scan it again or ask for a new label."
        )
    if sentence is None:
        sentence = f"Barcode {_shown(digits)!r} is not a valid GTIN ({_detail(err)})."
    return DecodeError(text, sentence)


def _parse_gtin(digits: str, config: ParseConfig, text: str) -> Gtin:
    try:
        return Gtin.parse(digits, config=config)
    except ParseError as err:
        raise _gtin_error(digits, err, text) from err


def _gtin_format(gtin: Gtin) -> GtinFormat:
    return GtinFormat(f"GTIN-{int(gtin.format)}")


def _rcn_info(gtin: Gtin) -> RcnInfo | None:
    if not isinstance(gtin, Rcn) or gtin.usage is None:
        return None
    usage = "geo" if gtin.usage is RcnUsage.GEOGRAPHICAL else "company"
    if gtin.region is None or (gtin.weight is None and gtin.price is None and gtin.count is None):
        return RcnInfo(usage=usage, region=gtin.region.value if gtin.region else None)
    try:
        lookup = gtin.without_variable_measure().as_gtin_14()
    except (EncodeError, ParseError):  # pragma: no cover - biip rules without a zeroing strategy
        lookup = None
    return RcnInfo(
        usage=usage,
        region=gtin.region.value,
        item_reference=gtin.item_reference,
        lookup_gtin=lookup,
        price=gtin.price,
        currency=gtin.region.get_currency_code() if gtin.price is not None else None,
        weight_kg=gtin.weight,
        count=gtin.count,
    )


def _split_addon(payload: str) -> tuple[str, str | None]:
    """EAN/UPC with add-on (]E3): 13+2, 13+5, 12+2, 12+5, 8+2 or 8+5 digits."""
    for main in (13, 12, 8):
        addon = len(payload) - main
        if addon in (2, 5):
            return payload[:main], payload[main:]
    return payload, None


def _decode_retail(
    payload: str, symbology: Symbology | None, gs1: GS1Symbology | None, config: ParseConfig, text: str
) -> Decoded:
    if not payload.isascii():  # ٤٠٠٦… or ４００６…: Python reads them as digits, no GTIN holds them
        raise DecodeError(
            text, f"Barcode {_shown(payload)!r} is not a valid GTIN: a GTIN holds only the digits 0-9."
        )
    digits, addon = _split_addon(payload) if gs1 is GS1Symbology.EAN_13_WITH_ADD_ON else (payload, None)
    if gs1 is GS1Symbology.EAN_13 and len(digits) == 8:
        # ]E0 with 8 digits is UPC-E (EAN-8 has its own identifier, ]E4): expand to UPC-A.
        try:
            upc_a = Upc.parse(digits, config=config).as_upc_a()
        except ParseError as err:
            sentence = _check_digit_sentence(digits, "UPC-E barcode", upc_e=True)
            raise DecodeError(
                text, sentence or f"UPC-E barcode {_shown(digits)!r} is not valid ({_detail(err)})."
            ) from err
        gtin = _parse_gtin(upc_a, config, text)
    else:
        gtin = _parse_gtin(digits, config, text)
    gtin14 = gtin.as_gtin_14()
    return Decoded(
        kind=DecodedKind.GTIN,
        data=payload,
        symbology=symbology,
        gtin=gtin14,
        gtin_original=digits,
        gtin_format=_gtin_format(gtin),
        is_case=gtin14[0] in "12345678",
        addon=addon,
        rcn=_rcn_info(gtin),
    )


def _elements(body: str, config: ParseConfig, *, links: bool) -> list[GS1ElementString]:
    if body.startswith("("):
        return list(GS1Message.parse_hri(body, config=config).element_strings)
    if links and body.lower().startswith("http"):
        return list(GS1DigitalLinkURI.parse(body, config=config).element_strings)
    return list(GS1Message.parse(body, config=config).element_strings)


def _decode_gs1(
    payload: str, symbology: Symbology | None, config: ParseConfig, text: str, *, links: bool, strict: bool = True
) -> Decoded:
    body = payload.strip(GS)  # some scanners send FNC1-in-first-position, or a trailing FNC1, as GS
    if not body.isascii():  # GS1 data is plain ASCII: other digits (٠٤…, ０４…) would pass for a GTIN's
        if not strict:
            raise _NotGS1
        what = symbology.name if symbology is not None else "GS1"
        raise DecodeError(
            text, f"The {what} barcode {_shown(body)!r} cannot be read (GS1 data holds only ASCII characters)."
        )
    try:
        elements = _elements(body, config, links=links)
    except ParseError as err:
        if not strict:
            raise _NotGS1 from err
        what = symbology.name if symbology is not None else "GS1"
        raise DecodeError(text, f"The {what} barcode {_shown(body)!r} cannot be read ({_detail(err)}).") from err

    found: dict[str, GS1ElementString] = {}
    for es in elements:
        ai = es.ai.ai
        if ai in ("01", "02") and es.gtin is None:
            sentence = _check_digit_sentence(es.value, f"The GTIN in ({ai})")
            raise DecodeError(text, sentence or f"The GTIN in ({ai}) {es.value!r} is not valid ({es.gtin_error}).")
        if ai == "00" and es.sscc is None:
            sentence = _check_digit_sentence(es.value, "The SSCC in (00)")
            raise DecodeError(text, sentence or f"The SSCC in (00) {es.value!r} is not valid ({es.sscc_error}).")
        key = ai[:3] if ai[:3] in ("310", "320") else ai
        if key in found and (found[key].ai.ai, found[key].value) != (ai, es.value):
            raise DecodeError(text, _twice_sentence(payload, key, found[key], es))
        found.setdefault(key, es)
    if "37" in found and "02" not in found:
        raise DecodeError(text, _count_sentence(payload, found))
    if "01" in found and "02" in found:  # an invalid pair: is the label one item of (01), or (37) of (02)?
        raise DecodeError(
            text,
            f"The barcode {_shown(payload)!r} gives both the GTIN of an item (01) and the GTIN of contained items"
            f" (02), which may not go together ({GS1_GENSPECS}), so the label does not say which one it counts;"
            " nothing was taken: scan the items (or their case), or key the quantity by hand.",
        )

    def value(ai: str) -> str | None:
        es = found.get(ai)
        return es.value if es is not None else None

    gtin = found["01"].gtin if "01" in found else None
    content = found["02"].gtin if "02" in found else None
    weight = found.get("310") or found.get("320")
    count = value("37")
    var_count = _var_count(value("30"), gtin.as_gtin_14() if gtin is not None else None, content, payload, text)
    return Decoded(
        kind=DecodedKind.GS1,
        data=payload,
        symbology=symbology,
        gtin=gtin.as_gtin_14() if gtin is not None else None,
        gtin_original=value("01"),
        gtin_format=_gtin_format(gtin) if gtin is not None else None,
        is_case=gtin is not None and gtin.as_gtin_14()[0] in "12345678",
        sscc=value("00"),
        content_gtin=content.as_gtin_14() if content is not None else None,
        count=int(count) if count is not None else None,
        var_count=var_count,
        lot=value("10"),
        best_before=found["15"].date if "15" in found else None,
        expiry=found["17"].date if "17" in found else None,
        serial=value("21"),
        net_weight=(
            NetWeight(weight.decimal, WeightUnit.KG if weight.ai.ai.startswith("310") else WeightUnit.LB)
            if weight is not None and weight.decimal is not None
            else None
        ),
        rcn=_rcn_info(gtin) if gtin is not None else None,
        elements=tuple(Element(es.ai.ai, es.value, es.ai.data_title) for es in elements),
    )


# Which version of the GS1 General Specifications the rules of element strings together follow (docs/scanners.md).
GS1_GENSPECS = "GS1 General Specifications, Release 24.0"


def _twice_sentence(payload: str, key: str, first: GS1ElementString, second: GS1ElementString) -> str:
    """A label holding one AI twice with two values (two serials, lots, GTINs, net weights): which one is the item's
    is anybody's guess, and taking the first booked the other without a word. (Repeated with the same value, as some
    printers do, it says one thing and is taken once.)"""
    ai = f"{key}n" if len(key) == 3 else key
    return (
        f"The barcode {_shown(payload)!r} holds ({ai}) twice, {first.value!r} and {second.value!r}, and an element"
        f" string may appear only once in a barcode ({GS1_GENSPECS}); nothing was taken: ask for a new label or key"
        " the item in by hand."
    )


def _count_sentence(payload: str, found: dict[str, GS1ElementString]) -> str:
    """(37), the count of trade items, says how many items of the GTIN in (02) a logistic unit holds, and is valid
    only with (02) (GS1 General Specifications: a mandatory association). With the GTIN of the item itself (01)
    the label contradicts itself (is it one of (01), or (37) of them?); taken as 1 it counted wrong whenever the
    label meant its count. Refused aloud, as (30) on a fixed-quantity GTIN is."""
    count = int(found["37"].value)
    with_ = f" with the GTIN (01) {found['01'].value}" if "01" in found else ""
    return (
        f"The barcode {_shown(payload)!r} gives a count (37) of {count}{with_}, but a count (37) is valid only with"
        f" the GTIN of contained items (02) ({GS1_GENSPECS}), so the label does not say whether it is 1 item or"
        f" {count}; nothing was taken: scan the items (or their case), or key the quantity by hand."
    )


def _var_count(value: str | None, gtin14: str | None, content: Gtin | None, payload: str, text: str) -> int | None:
    """(30), the variable count of items (GS1 General Specifications): it goes with the GTIN of a variable-measure
    trade item, indicator digit 9, and says how many items this one holds. On a fixed-measure GTIN the label
    contradicts itself (the GTIN says a fixed quantity, (30) another): refused aloud, never booked as 1 scan."""
    if value is None:
        return None
    subject = gtin14 or (content.as_gtin_14() if content is not None else None)
    if subject is not None and not subject.startswith("9"):
        raise DecodeError(
            text,
            f"The barcode {_shown(payload)!r} gives a variable count (30) of {int(value)} for {subject}, a GTIN of"
            " fixed quantity (only a GTIN starting with 9 has a variable count); nothing was taken: key the quantity"
            " of the item by hand.",
        )
    if int(value) == 0:
        raise DecodeError(text, f"The barcode {_shown(payload)!r} gives a variable count (30) of 0 items; nothing was taken: scan the item again or key its quantity.")
    return int(value)

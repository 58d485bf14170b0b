"""One export row in, one outcome out: a movement, an observation, a skip, or a quarantined row.

Pure apart from the occurrence counter's spill file: no outbox, no network.
The mapping is deterministic — the same row always gives the same event id —
so importing a file twice, or two overlapping exports, records each sale once:

    key      = the profile's identity fields (Square: Transaction ID, Payment ID,
               Token, SKU, Item, Price Point Name, Modifiers Applied, Event Type)
               or, for profiles without one, the whole normalised row;
               plus the location, hashed; plus the occurrence index of that
               identity within the file (the same item rung up twice is two sales)
    event_id = protocol.derived_event_id(row_time_ms, source + key)
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal

from agent.outbox import Movement
from agent.pos.config import PosImportConfig
from agent.pos.errors import BadValue
from agent.pos.model import Observation, Quarantined, Skipped, clip_raw
from agent.pos.occurrences import OccurrenceCounter
from agent.pos.profiles import ColumnMap, Produces
from agent.pos.timezones import ZoneResolver
from agent.pos.values import (
    MEASURE_UNITS,
    parse_money,
    parse_quantity,
    repeated_wall_time,
    timestamp_ms,
    to_base_units,
)
from protocol import Kind, ProtocolError, StockEvent, derived_event_id, pack_hlc
from protocol.event import QTY_SIGN
from protocol.values import has_control

Outcome = Movement | Observation | Quarantined | Skipped
_KEY_SEP = "\x1f"
_VALIDATOR_AGENT = "pos-import"


def row_text(fields: Sequence[str] | None, delimiter: str = ",") -> str:
    """The row as CSV text again, cut by clip_raw, for the quarantine list."""
    if not fields:
        return ""
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="").writerow(fields)
    return clip_raw(out.getvalue())


class RowMapper:
    """Maps the rows of one file. Create one per file (it counts occurrences within the file)."""

    def __init__(
        self,
        columns: ColumnMap,
        config: PosImportConfig,
        *,
        default_location: str,
        source_file: str,
        file_time_ms: int,
        now_ms: int,
        counter: OccurrenceCounter,
        delimiter: str = ",",
    ) -> None:
        self.profile = columns.profile
        self._config = config
        self._columns = tuple(columns.index.items())
        self._names = {f: columns.header[i] or f for f, i in columns.index.items()}
        self._width = len(columns.header)
        self._required_width = 1 + max(columns.index[f] for f in self.profile.required)
        self._default_location = default_location
        self._source_file = source_file
        self._file_time_ms = file_time_ms
        # Later than now, or than the file was written: this machine's clock may be days behind the till's, whose
        # (or whose file server's) the file's time is; a row later than both is a typo'd date.
        self._latest_ms = max(now_ms, file_time_ms) + int(config.future_tolerance_s * 1000)
        self._counter = counter
        self.delimiter = delimiter
        self._zones = ZoneResolver(config.time_zones)
        self._default_zone = self._zones.resolve(config.time_zone)
        self._source = self.profile.source
        self._source_bytes = self._source.encode()
        self._movements = self.profile.produces is Produces.MOVEMENTS
        self._only_location_name: str | None = None
        self._last_time: tuple[tuple[str, str, str] | None, int] = (None, 0)
        self._last_repeated: tuple[str, str, str] | None = None  # the last row's time, if it happens twice
        # Movements whose time happens twice, read as its first occurrence: event id -> (zone, wall time, the
        # second occurrence with its offset). Only rows of the hour clocks go back; the importer takes them out.
        self.repeated: dict[bytes, tuple[str, str, str]] = {}

    def state(self) -> dict[str, str | None]:
        """What the mapping keeps from one row to the next, for an import's checkpoint (``restore``)."""
        return {"only_location_name": self._only_location_name}

    def restore(self, state: dict[str, str | None]) -> None:
        """Go on as after the rows ``state`` was taken after (an import resumed at its checkpoint)."""
        self._only_location_name = state.get("only_location_name")

    def map(self, line: int, fields: Sequence[str]) -> Outcome:
        try:
            if len(fields) < self._required_width or (
                len(fields) > self._width and any(f.strip() for f in fields[self._width :])
            ):
                raise BadValue(f"the row has {len(fields)} fields but the header has {self._width}")
            n = len(fields)
            values = {name: fields[i].strip() for name, i in self._columns if i < n}
            if self._movements:
                return self._movement(line, values)
            return self._observation(line, values)
        except BadValue as err:
            return Quarantined(line, err.reason, row_text(fields, self.delimiter))

    # --- fields ------------------------------------------------------------
    def _non_stock(self, line: int, values: Mapping[str, str]) -> Skipped | None:
        for name, skip in self.profile.non_stock.items():
            value = values.get(name, "")
            if value and value.casefold() in skip:
                return Skipped(line, f"{self._names.get(name, name)}: {value}")
        return None

    def _location(self, raw: str) -> str:
        if not raw:
            return self._default_location
        code = self._config.locations.get(" ".join(raw.split()).casefold())
        if code:
            return code
        if self.profile.location_is_code:
            return raw
        if not self._config.locations:
            # No map: a single-store export, whose location name is not a code. A
            # second name means a multi-location export, which must not land in one store.
            if self._only_location_name is None:
                self._only_location_name = raw
            elif raw != self._only_location_name:
                raise BadValue(
                    f"the export holds more than one location ({self._only_location_name[:40]!r}, {raw[:40]!r});"
                    " map each name to a location code under [pos.locations]"
                )
            return self._default_location
        raise BadValue(f"location {raw[:60]!r} is not mapped to a location code; add it under [pos.locations]")

    def _quantity(self, values: Mapping[str, str], name: str) -> int:
        text = values.get(name, "")
        unit = values.get("unit", "")
        if not unit and text.isascii() and text.isdigit():
            return int(text)  # the common case: a whole number of pieces
        qty = parse_quantity(text, decimal_separator=self._config.decimal_separator, what=self._names.get(name, name))
        return to_base_units(qty, unit, self._config.units, text)

    def _time_ms(self, values: Mapping[str, str]) -> int:
        date_text, time_text, zone_name = values.get("date", ""), values.get("time", ""), values.get("time_zone", "")
        cache_key = (date_text, time_text, zone_name)
        if cache_key == self._last_time[0]:
            return self._last_time[1]  # the lines of one transaction share their time (and _last_repeated)
        if not date_text:
            raise BadValue(f"{self._names.get('date', 'date')} is empty")
        zone = self._zones.resolve(zone_name) if zone_name else self._default_zone
        ms = timestamp_ms(date_text, time_text or None, zone, self._config.date_order)
        if ms > self._latest_ms:
            shown = f"{date_text} {time_text}".strip()
            raise BadValue(f"date {shown[:60]!r} is in the future")
        if ms < 0:
            raise BadValue(f"date {date_text[:40]!r} is before 1970")
        self._last_time = (cache_key, ms)
        self._last_repeated = None
        if repeated_wall_time(date_text, ms, zone, self._config.date_order):
            wall = datetime.fromtimestamp(ms / 1000, zone)  # the first occurrence: fold 0
            shown_wall = wall.strftime("%Y-%m-%d %H:%M:%S").removesuffix(":00")
            self._last_repeated = (str(zone), shown_wall, wall.replace(fold=1).isoformat())
        return ms

    # --- movements -----------------------------------------------------------
    def _movement(self, line: int, values: Mapping[str, str]) -> Outcome:
        skipped = self._non_stock(line, values)
        if skipped is not None:
            return skipped
        profile = self.profile
        sku = values.get("sku", "")
        if not sku:
            item = values.get("item", "")
            raise BadValue(f"{self._names['sku']} is empty" + (f" (item {item[:60]!r})" if item else ""))
        _check_sku(sku, self._names["sku"])
        kind_text = values.get("kind", "")
        if kind_text:
            found = profile.kinds.get(kind_text.casefold())
            if found is None:
                known = ", ".join(sorted({k for k in profile.kinds}))
                raise BadValue(f"{self._names['kind']} {kind_text[:40]!r} is not one this profile knows ({known})")
            kind = found
        elif profile.default_kind is not None:
            kind = profile.default_kind
        else:
            raise BadValue(f"{self._names.get('kind', 'kind')} is empty")
        base = self._quantity(values, "qty")
        if kind is Kind.SALE and base < 0 and profile.negative_is_return:
            kind = Kind.RETURN
        if kind is Kind.COUNT:
            qty = base
        elif base == 0:
            raise BadValue(f"{self._names['qty']} is 0: a {kind.value} of nothing moves no stock")
        elif kind is Kind.ADJUST:
            qty = base
        else:
            qty = abs(base) * QTY_SIGN[kind]
        ms = self._time_ms(values)
        location = self._location(values.get("location", ""))
        ref = values.get("ref") or None
        reason = values.get("reason") or None
        attrs: dict[str, str] = {}
        for name in ("gross_sales", "net_sales"):
            text = values.get(name)
            if text:
                money = parse_money(text, decimal_separator=self._config.decimal_separator, what=self._names[name])
                attrs[name] = _plain(money)
        gtin = values.get("gtin")
        if gtin:
            attrs["gtin"] = gtin[:64]
        unit = values.get("unit")
        if unit and unit.casefold() in MEASURE_UNITS:
            attrs["unit"] = unit[:16]
        if profile.key_fields:
            parts = [values.get(f, "") for f in profile.key_fields]
        else:
            parts = [str(ms), sku, str(qty), ref or "", reason or ""]
        parts += [kind.value, location]
        digest = hashlib.blake2b(_KEY_SEP.join(parts).encode("utf-8", "surrogatepass"), digest_size=16).digest()
        occurrence = self._counter.next(digest)
        event_id = derived_event_id(ms, self._source_bytes + digest + occurrence.to_bytes(4, "big"))
        occurred_at = pack_hlc(ms, 0)
        if self._last_repeated is not None:
            self.repeated[event_id] = self._last_repeated
        try:
            StockEvent(event_id, _VALIDATOR_AGENT, 0, 1, location, sku, kind, qty, occurred_at, 0, self._source, ref, reason, attrs)
        except ProtocolError as err:
            raise BadValue(_protocol_reason(err, self._names)) from None
        return Movement(location, sku, kind, qty, self._source, ref, reason, attrs, event_id, occurred_at)

    # --- observations --------------------------------------------------------
    def _observation(self, line: int, values: Mapping[str, str]) -> Outcome:
        skipped = self._non_stock(line, values)
        if skipped is not None:
            return skipped
        sku = values.get("sku", "")
        if not sku:
            raise BadValue(f"{self._names['sku']} is empty")
        _check_sku(sku, self._names["sku"])
        if not values.get("on_hand"):
            return Skipped(line, f"{self._names['on_hand']} is empty")
        on_hand = self._quantity(values, "on_hand")
        location = self._location(values.get("location", ""))
        observed_at_ms = self._time_ms(values) if values.get("date") else self._file_time_ms
        try:  # the same checks a stock event's location and SKU get
            StockEvent(bytes(16), _VALIDATOR_AGENT, 0, 1, location, sku, Kind.COUNT, 0, 1, 0, self._source)
        except ProtocolError as err:
            raise BadValue(_protocol_reason(err, self._names)) from None
        return Observation(location, sku, self.profile.vendor, on_hand, observed_at_ms, self._source_file)


def _check_sku(sku: str, name: str) -> None:
    if has_control(sku):  # an undefined cp1252 byte becomes a C1 control character, and no SKU holds one
        raise BadValue(f"{name} {sku[:40]!r} holds a control character (a byte the file's encoding does not define?)")


def _plain(value: Decimal) -> str:
    return format(value, "f")


def _protocol_reason(err: ProtocolError, names: dict[str, str]) -> str:
    shown = names.get(err.field or "", err.field or "row")
    return f"{shown}: {err.reason}"

"""Time zone names as POS exports write them, resolved to IANA zones.

Square (like Rails, whose names it uses) writes "Eastern Time (US & Canada)"
rather than "America/New_York". ``resolve_zone`` accepts those names, IANA
names, "UTC" and fixed offsets ("UTC-05:00", "+01:00"), plus any aliases the
configuration adds. Unknown names are an error, never a silent guess: a wrong
zone moves every sale in the file by hours.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.pos.errors import BadValue

# Rails/ActiveSupport names (which Square's exports use) for the zones its
# merchants are in, casefolded on lookup.
SQUARE_ZONE_NAMES: Mapping[str, str] = {
    "Hawaii": "Pacific/Honolulu",
    "Alaska": "America/Juneau",
    "Pacific Time (US & Canada)": "America/Los_Angeles",
    "Mountain Time (US & Canada)": "America/Denver",
    "Arizona": "America/Phoenix",
    "Central Time (US & Canada)": "America/Chicago",
    "Saskatchewan": "America/Regina",
    "Eastern Time (US & Canada)": "America/New_York",
    "Indiana (East)": "America/Indiana/Indianapolis",
    "Atlantic Time (Canada)": "America/Halifax",
    "Newfoundland": "America/St_Johns",
    "Puerto Rico": "America/Puerto_Rico",
    "Tijuana": "America/Tijuana",
    "Mexico City": "America/Mexico_City",
    "Guadalajara": "America/Mexico_City",
    "Monterrey": "America/Monterrey",
    "Bogota": "America/Bogota",
    "Lima": "America/Lima",
    "Santiago": "America/Santiago",
    "Buenos Aires": "America/Argentina/Buenos_Aires",
    "Brasilia": "America/Sao_Paulo",
    "UTC": "Etc/UTC",
    "London": "Europe/London",
    "Edinburgh": "Europe/London",
    "Dublin": "Europe/Dublin",
    "Lisbon": "Europe/Lisbon",
    "Madrid": "Europe/Madrid",
    "Paris": "Europe/Paris",
    "Brussels": "Europe/Brussels",
    "Amsterdam": "Europe/Amsterdam",
    "Berlin": "Europe/Berlin",
    "Bern": "Europe/Zurich",
    "Zurich": "Europe/Zurich",
    "Rome": "Europe/Rome",
    "Vienna": "Europe/Vienna",
    "Copenhagen": "Europe/Copenhagen",
    "Stockholm": "Europe/Stockholm",
    "Oslo": "Europe/Oslo",
    "Prague": "Europe/Prague",
    "Warsaw": "Europe/Warsaw",
    "Budapest": "Europe/Budapest",
    "Athens": "Europe/Athens",
    "Helsinki": "Europe/Helsinki",
    "Istanbul": "Europe/Istanbul",
    "Tokyo": "Asia/Tokyo",
    "Osaka": "Asia/Tokyo",
    "Sapporo": "Asia/Tokyo",
    "Seoul": "Asia/Seoul",
    "Beijing": "Asia/Shanghai",
    "Hong Kong": "Asia/Hong_Kong",
    "Singapore": "Asia/Singapore",
    "Sydney": "Australia/Sydney",
    "Canberra": "Australia/Canberra",
    "Melbourne": "Australia/Melbourne",
    "Brisbane": "Australia/Brisbane",
    "Adelaide": "Australia/Adelaide",
    "Darwin": "Australia/Darwin",
    "Perth": "Australia/Perth",
    "Hobart": "Australia/Hobart",
    "Auckland": "Pacific/Auckland",
    "Wellington": "Pacific/Auckland",
}

_OFFSET_RE = re.compile(r"(?:UTC|GMT)?\s*([+-])(\d{1,2})(?::?(\d{2}))?")


def _fold(name: str) -> str:
    return " ".join(name.split()).casefold()


_SQUARE_FOLDED = {_fold(k): v for k, v in SQUARE_ZONE_NAMES.items()}


class ZoneResolver:
    """Resolves an export's zone names, remembering the few names a file uses."""

    CACHE_MAX_NAMES = 1024

    def __init__(self, aliases: Mapping[str, str] | None = None) -> None:
        self._aliases = {_fold(k): v for k, v in (aliases or {}).items()}
        for alias, target in self._aliases.items():
            try:
                ZoneInfo(target)
            except (ZoneInfoNotFoundError, ValueError, OSError):
                raise ValueError(f"time zone alias {alias!r} points at {target!r}, which is not an IANA zone") from None
        self._cache: dict[str, tzinfo] = {}

    def resolve(self, name: str) -> tzinfo:
        """The zone an export means by ``name``; BadValue with a clear reason if unknown."""
        zone = self._cache.get(name)
        if zone is None:
            zone = self._lookup(name)
            if len(self._cache) < self.CACHE_MAX_NAMES:
                self._cache[name] = zone
        return zone

    def _lookup(self, name: str) -> tzinfo:
        if not name.strip():
            raise BadValue("the time zone is empty")
        folded = _fold(name)
        target = self._aliases.get(folded) or _SQUARE_FOLDED.get(folded)
        if target:
            return ZoneInfo(target)
        if folded in ("utc", "gmt", "z"):
            return UTC
        offset = _OFFSET_RE.fullmatch(name.strip())
        if offset:
            sign, hours, minutes = offset.groups()
            delta = timedelta(hours=int(hours), minutes=int(minutes or 0))
            if delta > timedelta(hours=14):
                raise BadValue(f"time zone offset {name!r} is beyond ±14:00")
            return timezone(-delta if sign == "-" else delta)
        try:
            return ZoneInfo(name.strip())
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise BadValue(
                f"unknown time zone {name[:60]!r}; use an IANA name such as America/New_York "
                "or map it under [pos.time_zones]"
            ) from None

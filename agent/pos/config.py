"""The ``[pos]`` section of the agent's configuration: how exports are found and read.

``PosImportConfig.from_mapping(table)`` reads the parsed TOML table (the
agent's config loader passes ``config["pos"]``); every key is documented in
docs/pos-import.md, and a test checks that.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.pos.errors import BadValue, PosImportError
from agent.pos.profiles import BUILTIN_PROFILES, Profile, profile_from_toml
from agent.pos.timezones import ZoneResolver
from agent.pos.values import DateOrder, DecimalSeparator
from protocol.textfile import read_text
from protocol.values import path_problem

SETTLE_DEFAULT_S = 2.0
UNFINISHED_LINE_DEFAULT_S = 300.0
BATCH_ROWS_DEFAULT = 2_000
BATCH_ROWS_MAX = 10_000
FUTURE_TOLERANCE_DEFAULT_S = 86_400.0
FOLDER_RETRY_DEFAULT_S = 30.0
STORE_FILE_NAME = "pos-import.sqlite"


class PosConfigError(PosImportError, ConfigError):
    """The [pos] configuration is wrong; the message names the key."""


@dataclass(frozen=True, slots=True)
class PosImportConfig:
    watch_dir: Path | None = None  # drop folder; None: no watching, one-off imports only
    profile: str = "auto"  # "auto" detects from the header row
    time_zone: str = "UTC"  # the zone of exports that do not name theirs
    date_order: DateOrder = "MDY"  # how to read 03/05/2024
    decimal_separator: DecimalSeparator = None  # None: decided per value ("auto" in TOML)
    units: Mapping[str, int] = field(default_factory=dict)  # unit -> base units per unit (kg = 1000)
    locations: Mapping[str, str] = field(default_factory=dict)  # location name in the export -> location code
    time_zones: Mapping[str, str] = field(default_factory=dict)  # zone name in the export -> IANA zone
    settle_s: float = SETTLE_DEFAULT_S  # size and mtime unchanged this long before a file is taken
    # a file whose last line has no line break yet: unchanged this long before it is taken (at least settle_s)
    unfinished_line_s: float = UNFINISHED_LINE_DEFAULT_S
    patterns: tuple[str, ...] = ("*.csv", "*.txt", "*.tsv")
    store_path: Path | None = None  # None: pos-import.sqlite beside the outbox
    batch_rows: int = BATCH_ROWS_DEFAULT  # movements per outbox transaction
    future_tolerance_s: float = FUTURE_TOLERANCE_DEFAULT_S  # rows dated later than now (and the file's time) + this are quarantined
    force_polling: bool = False  # poll the folder instead of OS notifications (network shares)
    folder_retry_s: float = FOLDER_RETRY_DEFAULT_S  # how often a drop folder that cannot be used is tried again
    profiles: Mapping[str, Profile] = field(default_factory=dict)  # built-in and custom, by name

    def all_profiles(self) -> dict[str, Profile]:
        return dict(BUILTIN_PROFILES) | dict(self.profiles)

    def store_path_for(self, outbox_path: Path) -> Path:
        return self.store_path or outbox_path.with_name(STORE_FILE_NAME)

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], *, base_dir: Path | None = None) -> PosImportConfig:
        """Read the [pos] table; PosConfigError names the wrong key. Relative paths are from ``base_dir``."""
        try:
            return _from_mapping(table, base_dir or Path.cwd())
        except (ValueError, TypeError) as err:
            raise PosConfigError(f"[pos] {err}") from err

    @classmethod
    def from_toml_file(cls, path: Path) -> PosImportConfig:
        """A file holding a [pos] table (or the table's keys at top level), for one-off mappings."""
        try:
            data = tomllib.loads(read_text(path))
        except (OSError, UnicodeError, tomllib.TOMLDecodeError) as err:
            raise PosConfigError(f"{path} could not be read as TOML: {err}") from err
        table = data.get("pos", data)
        if not isinstance(table, Mapping):
            raise PosConfigError(f"{path}: [pos] must be a table")
        return cls.from_mapping(table, base_dir=path.parent)


KEYS = (
    "watch_dir", "profile", "time_zone", "date_order", "decimal_separator", "units", "locations", "time_zones",
    "settle_s", "unfinished_line_s", "patterns", "store_path", "batch_rows", "future_tolerance_s", "force_polling",
    "profiles", "folder_retry_s",
)


def _from_mapping(table: Mapping[str, Any], base_dir: Path) -> PosImportConfig:
    unknown = set(table) - set(KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))}; known keys are {', '.join(KEYS)}")
    t = dict(table)

    def path(key: str) -> Path | None:
        value = t.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise ValueError(f"{key} must be a path")
        if problem := path_problem(value):
            raise ValueError(f"{key} {problem}")
        p = Path(value).expanduser()
        return p if p.is_absolute() else base_dir / p

    def number(key: str, default: float, lo: float, hi: float) -> float:
        value = t.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise ValueError(f"{key} must be a number from {lo:g} to {hi:g}, got {value!r}")
        return float(value)

    def str_map(key: str) -> dict[str, str]:
        value = t.get(key, {})
        if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in value.items()):
            raise ValueError(f"{key} must be a table of names to strings")
        return {" ".join(k.split()).casefold(): v for k, v in value.items()}

    profile = t.get("profile", "auto")
    date_order = t.get("date_order", "MDY")
    if date_order not in ("MDY", "DMY"):
        raise ValueError(f"date_order must be \"MDY\" (03/05 is March 5) or \"DMY\" (5 March), got {date_order!r}")
    separator = t.get("decimal_separator", "auto")
    if separator not in ("auto", ".", ","):
        raise ValueError(f"decimal_separator must be \"auto\", \".\" or \",\", got {separator!r}")
    units = t.get("units", {})
    if not isinstance(units, Mapping) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1_000_000 for v in units.values()
    ):
        raise ValueError("units must map unit names to whole numbers of base units, such as kg = 1000")
    patterns = t.get("patterns", ["*.csv", "*.txt", "*.tsv"])
    if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError("patterns must be a list of file name patterns, such as [\"*.csv\"]")
    custom = t.get("profiles", {})
    if not isinstance(custom, Mapping) or not all(isinstance(v, Mapping) for v in custom.values()):
        raise ValueError("profiles must hold one table per custom profile ([pos.profiles.<name>])")
    profiles = {name: profile_from_toml(name, body) for name, body in custom.items()}
    time_zone = t.get("time_zone", "UTC")
    if not isinstance(time_zone, str):
        raise TypeError("time_zone must be a zone name such as America/New_York")
    aliases = str_map("time_zones")
    resolver = ZoneResolver(aliases)  # fails on an alias that points nowhere
    try:
        resolver.resolve(time_zone)
    except BadValue as err:
        raise ValueError(f"time_zone: {err.reason}") from None
    known_profiles = set(BUILTIN_PROFILES) | set(profiles)
    if profile != "auto" and profile not in known_profiles:
        raise ValueError(f"profile {profile!r} is neither \"auto\" nor a profile ({', '.join(sorted(known_profiles))})")
    force_polling = t.get("force_polling", False)
    if not isinstance(force_polling, bool):
        raise TypeError("force_polling must be true or false")
    return PosImportConfig(
        watch_dir=path("watch_dir"),
        profile=profile,
        time_zone=time_zone,
        date_order=date_order,
        decimal_separator=None if separator == "auto" else separator,
        units={k.strip().casefold(): v for k, v in units.items()},
        locations=str_map("locations"),
        time_zones=aliases,
        settle_s=number("settle_s", SETTLE_DEFAULT_S, 0.0, 3600.0),
        unfinished_line_s=number("unfinished_line_s", UNFINISHED_LINE_DEFAULT_S, 0.0, 86_400.0),
        patterns=tuple(patterns),
        store_path=path("store_path"),
        batch_rows=int(number("batch_rows", BATCH_ROWS_DEFAULT, 1, BATCH_ROWS_MAX)),
        future_tolerance_s=number("future_tolerance_s", FUTURE_TOLERANCE_DEFAULT_S, 0.0, 365 * 86_400.0),
        force_polling=force_polling,
        folder_retry_s=number("folder_retry_s", FOLDER_RETRY_DEFAULT_S, 0.1, 3600.0),
        profiles=profiles,
    )

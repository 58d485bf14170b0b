"""The hub's settings: defaults, a TOML file's ``[hub]`` table, then CLI overrides.

Every key is documented in docs/configuration.md (a test checks it).
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.clock_window import CLOCK_WINDOW_MAX_S, CLOCK_WINDOW_MIN_S, DEFAULT_CLOCK_WINDOW_S
from hub.storage.base import HubError
from hub.channels.config import ChannelConfigError, ChannelSpec, parse_channels
from hub.webhook_spec import WebhookConfigError, WebhookSpec, parse_webhooks

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8470
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_SHUTDOWN_TIMEOUT_S = 30.0
PORT_MAX = 65_535
MAX_BODY_BYTES_LIMIT = 1024 * 1024 * 1024  # a sanity cap on the setting itself: 1 GiB
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_CHANGE_RECHECK_S = 1.0
DEFAULT_BODY_TIMEOUT_S = 60.0
DEFAULT_RATE_LIMIT_PER_S = 50.0
DEFAULT_RATE_LIMIT_BURST = 100
DEFAULT_TRANSFER_OPEN_MAX_S = 14 * 24 * 3_600
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_KEEPALIVE_TIMEOUT_S = 30.0  # above aiohttp's client default (15 s), so an agent closes an idle connection first
MAX_CONNECTIONS_LIMIT = 1_000_000


class ConfigError(HubError):
    """A setting is missing, unknown or out of range; the message names it."""


@dataclass(frozen=True, slots=True)
class HubSettings:
    """Everything ``serve`` needs. Field names are the config keys."""

    db: str = ""  # SQLite file path, or a database URL
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT  # 0 picks a free port (the log line names it)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S
    log_level: str = "INFO"
    access_log: bool = False
    advertise: bool = False  # announce the hub by zeroconf (_shelfsync-hub._tcp) on the interface it listens on
    change_recheck_s: float = DEFAULT_CHANGE_RECHECK_S  # the change feed re-reads the newest change this often
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S  # a request body must arrive whole within this; else 408
    rate_limit_per_s: float = DEFAULT_RATE_LIMIT_PER_S  # write requests per second per credential; 0: no limit
    rate_limit_burst: int = DEFAULT_RATE_LIMIT_BURST  # write requests a credential may send at once
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S  # a request line and headers must arrive within this; else 408
    keepalive_timeout_s: float = DEFAULT_KEEPALIVE_TIMEOUT_S  # an idle connection is closed after this
    max_connections: int = 0  # open connections at most; 0: as many as the open-file limit allows (hub/limits.py)
    clock_window_s: int = DEFAULT_CLOCK_WINDOW_S  # events stamped further ahead (or before their credential) are held
    transfer_open_max_s: int = DEFAULT_TRANSFER_OPEN_MAX_S  # a transfer open longer is an exception (transfer_overdue)
    webhooks: tuple[WebhookSpec, ...] = ()  # the [[webhooks]] tables, not a [hub] key
    channels: tuple[ChannelSpec, ...] = ()  # the [[channel]] tables (docs/channels.md), not a [hub] key

    def __post_init__(self) -> None:
        _validate(self)

    def replace(self, **changes: Any) -> HubSettings:
        """A copy with ``changes`` applied (and validated); ``None`` values are ignored."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


CONFIG_KEYS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(HubSettings) if f.name not in ("webhooks", "channels")
)


def _validate(s: HubSettings) -> None:
    _typed("db", s.db, str)
    _typed("host", s.host, str)
    if not s.host:
        raise ConfigError("host must not be empty")
    _typed("port", s.port, int)
    if not 0 <= s.port <= PORT_MAX:
        raise ConfigError(f"port must be between 0 and {PORT_MAX}, got {s.port}")
    _typed("max_body_bytes", s.max_body_bytes, int)
    if not 1 <= s.max_body_bytes <= MAX_BODY_BYTES_LIMIT:
        raise ConfigError(f"max_body_bytes must be between 1 and {MAX_BODY_BYTES_LIMIT}, got {s.max_body_bytes}")
    if isinstance(s.shutdown_timeout_s, int) and not isinstance(s.shutdown_timeout_s, bool):
        object.__setattr__(s, "shutdown_timeout_s", float(s.shutdown_timeout_s))
    _typed("shutdown_timeout_s", s.shutdown_timeout_s, float)
    if not 0.0 <= s.shutdown_timeout_s <= 3600.0:
        raise ConfigError(f"shutdown_timeout_s must be between 0 and 3600 seconds, got {s.shutdown_timeout_s}")
    for key in ("body_timeout_s", "rate_limit_per_s", "header_timeout_s", "keepalive_timeout_s"):  # 1 is a number too
        value = getattr(s, key)
        if isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(s, key, float(value))
    _typed("body_timeout_s", s.body_timeout_s, float)
    if not 0.1 <= s.body_timeout_s <= 3600.0:
        raise ConfigError(f"body_timeout_s must be between 0.1 and 3600 seconds, got {s.body_timeout_s}")
    for key in ("header_timeout_s", "keepalive_timeout_s"):
        _typed(key, getattr(s, key), float)
        if not 0.1 <= getattr(s, key) <= 3600.0:
            raise ConfigError(f"{key} must be between 0.1 and 3600 seconds, got {getattr(s, key)}")
    _typed("max_connections", s.max_connections, int)
    if not 0 <= s.max_connections <= MAX_CONNECTIONS_LIMIT:
        raise ConfigError(
            f"max_connections must be between 0 (as many as the open-file limit allows) and {MAX_CONNECTIONS_LIMIT}, "
            f"got {s.max_connections}"
        )
    _typed("rate_limit_per_s", s.rate_limit_per_s, float)
    if not 0.0 <= s.rate_limit_per_s <= 1_000_000.0:
        raise ConfigError(f"rate_limit_per_s must be between 0 (no limit) and 1000000, got {s.rate_limit_per_s}")
    _typed("rate_limit_burst", s.rate_limit_burst, int)
    if not 1 <= s.rate_limit_burst <= 1_000_000:
        raise ConfigError(f"rate_limit_burst must be between 1 and 1000000, got {s.rate_limit_burst}")
    _typed("log_level", s.log_level, str)
    if s.log_level.upper() not in _LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(_LOG_LEVELS)}, got {s.log_level!r}")
    object.__setattr__(s, "log_level", s.log_level.upper())
    _typed("access_log", s.access_log, bool)
    _typed("advertise", s.advertise, bool)
    if isinstance(s.change_recheck_s, int) and not isinstance(s.change_recheck_s, bool):
        object.__setattr__(s, "change_recheck_s", float(s.change_recheck_s))
    _typed("change_recheck_s", s.change_recheck_s, float)
    if not 0.05 <= s.change_recheck_s <= 60.0:
        raise ConfigError(f"change_recheck_s must be between 0.05 and 60 seconds, got {s.change_recheck_s}")
    _typed("clock_window_s", s.clock_window_s, int)
    if not CLOCK_WINDOW_MIN_S <= s.clock_window_s <= CLOCK_WINDOW_MAX_S:
        raise ConfigError(
            f"clock_window_s must be between {CLOCK_WINDOW_MIN_S} and {CLOCK_WINDOW_MAX_S} seconds, got {s.clock_window_s}"
        )
    _typed("transfer_open_max_s", s.transfer_open_max_s, int)
    if not 60 <= s.transfer_open_max_s <= 365 * 24 * 3_600:
        raise ConfigError(
            f"transfer_open_max_s must be between 60 and 31536000 seconds (a year), got {s.transfer_open_max_s}"
        )
    if not isinstance(s.webhooks, tuple) or not all(isinstance(w, WebhookSpec) for w in s.webhooks):
        raise ConfigError("webhooks must be a tuple of WebhookSpec (from [[webhooks]] tables)")


def _typed(key: str, value: Any, kind: type) -> None:
    if kind is not bool and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{key} must be {_KIND_NAMES[kind]}, got {type(value).__name__} {value!r}")


_KIND_NAMES: dict[type, str] = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def settings_from_mapping(table: Mapping[str, Any], where: str = "the settings") -> HubSettings:
    """Build settings from a mapping of config keys; unknown keys are an error."""
    unknown = sorted(set(table) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; the known keys are {', '.join(CONFIG_KEYS)}"
        )
    return HubSettings(**dict(table))


def load_settings(path: str | Path | None = None, **overrides: Any) -> HubSettings:
    """Read the ``[hub]`` table of a TOML file (if given), then apply non-None ``overrides``."""
    base = HubSettings() if path is None else _read_file(Path(path))
    settings = base.replace(**overrides)
    if not settings.db:
        raise ConfigError("no database given; pass --db PATH or set db in the [hub] table of the config file")
    return settings


def _read_file(path: Path) -> HubSettings:
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read ({err.strerror or err})") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML ({err})") from err
    extra = sorted(set(doc) - {"hub", "webhooks", "channel"})
    if extra:
        raise ConfigError(
            f"unknown key(s) {', '.join(map(repr, extra))} in {path}; hub settings go in a [hub] table, "
            "webhooks in [[webhooks]] tables and sales channels in [[channel]] tables"
        )
    table = doc.get("hub", {})
    if not isinstance(table, dict):
        raise ConfigError(f"hub in {path} must be a table ([hub])")
    settings = settings_from_mapping(table, where=f"the [hub] table of {path}")
    if "webhooks" in doc:
        try:
            settings = settings.replace(webhooks=parse_webhooks(doc["webhooks"]))
        except WebhookConfigError as err:
            raise ConfigError(f"{err} (in {path})") from err
    if "channel" in doc:
        try:
            settings = settings.replace(channels=parse_channels(doc["channel"], base_dir=path.parent))
        except ChannelConfigError as err:
            raise ConfigError(f"{err} (in {path})") from err
    if settings.db and not _is_url(settings.db) and not Path(settings.db).is_absolute():
        # A relative database path in a config file is relative to that file, not to the working directory.
        settings = settings.replace(db=str(path.parent / settings.db))
    return settings


def _is_url(db: str) -> bool:
    return "://" in db


def log_level_number(settings: HubSettings) -> int:
    return int(getattr(logging, settings.log_level))

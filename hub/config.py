"""The hub's settings: defaults, a TOML file's ``[hub]`` table, the environment, then CLI overrides.

The file is the one ``--config`` names, else the one ``$SHELFSYNC_HUB_CONFIG``
names, else ``/etc/shelfsync/hub.toml`` when it exists. Every ``[hub]`` key
``k`` can also be set by the environment variable ``SHELFSYNC_HUB_<K>``
(``SHELFSYNC_HUB_DB``, ``SHELFSYNC_HUB_PORT`` …), which wins over the file, so
a secret (the database URL with its password) need never be written in the
file nor on a command line; ``database_url_file`` reads the URL from a file.

Every key is documented in docs/configuration.md (a test checks it).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import urlsplit

from hub import proxies, secretfiles
from hub.catchup import CATCHUP_SLOTS
from hub.channels.config import ChannelConfigError, ChannelSpec, parse_channels
from hub.clock_window import CLOCK_WINDOW_MAX_S, CLOCK_WINDOW_MIN_S, DEFAULT_CLOCK_WINDOW_S
from hub.heartbeat import DEFAULT_LEASE_RETRY_S, DEFAULT_LEASE_STALE_S
from hub.storage.base import HubError
from hub.webhook_spec import WebhookConfigError, WebhookSpec, parse_webhooks
from protocol.textfile import decode_text, read_text, toml_hint
from protocol.values import path_problem

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8470
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_SHUTDOWN_TIMEOUT_S = 30.0
PORT_MAX = 65_535
MAX_BODY_BYTES_LIMIT = 1024 * 1024 * 1024  # a sanity cap on the setting itself: 1 GiB
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_CHANGE_RECHECK_S = 1.0
# lease_stale_s is at least three of a hub's checks of its locks (lease_retry_s, 3 s) and a second more: 10 s by
# default, well above the time between two checks, so a slow hub is not taken for dead.
LEASE_STALE_MIN_CHECKS = 3
LEASE_STALE_MIN_SLACK_S = 1.0
LEASE_RETRY_MIN_S = 0.05
LEASE_RETRY_MAX_S = 60.0
DEFAULT_BODY_TIMEOUT_S = 60.0
DEFAULT_DB_TIMEOUT_S = 60.0
DEFAULT_RATE_LIMIT_PER_S = 50.0
DEFAULT_RATE_LIMIT_BURST = 100
# Refused attempts (a failed sign-in, a webhook with a missing or bad signature) per client address on the public
# routes: a person who mistypes, or a channel whose secret is being changed, never meets it; a flood does.
DEFAULT_REFUSED_ATTEMPTS_PER_S = 1.0
DEFAULT_REFUSED_ATTEMPTS_BURST = 30
DEFAULT_FEED_READ_ROWS_PER_S = 5_000.0  # changes a credential may read from the database a second, on average
DEFAULT_FEED_READ_BURST = 100_000  # … and at once: a whole history of that many changes
# Bytes of answers a credential may read of the other routes (counts, ledger, exceptions …) a second, on average, and
# at once: a dashboard or a connector never meets it; one credential reading the biggest pages in a loop does.
DEFAULT_READ_BYTES_PER_S = 4.0 * 1024 * 1024
DEFAULT_READ_BURST_BYTES = 64 * 1024 * 1024
DEFAULT_EXPORT_MAX_PER_CREDENTIAL = 2
DEFAULT_EXPORT_MAX = 4
EXPORT_MAX_LIMIT = 1_000
DEFAULT_TRANSFER_OPEN_MAX_S = 14 * 24 * 3_600
# Two epochs of one agent each syncing within this many seconds are two copies sending (agent_copies): ten of an
# idle agent's heartbeats (agent.replicator.HEARTBEAT_S), so a copy that only lost a few is still seen.
DEFAULT_AGENT_COPIES_WINDOW_S = 600
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_KEEPALIVE_TIMEOUT_S = 30.0  # above aiohttp's client default (15 s), so an agent closes an idle connection first
MAX_CONNECTIONS_LIMIT = 1_000_000
DEFAULT_CONFIG_PATH = Path("/etc/shelfsync/hub.toml")
CONFIG_ENV = "SHELFSYNC_HUB_CONFIG"  # the config file; set but empty: none
ENV_PREFIX = "SHELFSYNC_HUB_"
DATABASE_URL_FILE_KEY = "database_url_file"  # read into ``db`` when the settings are loaded
SECRET_FILE_MAX_BYTES = 64 * 1024
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
CATCHUP_SLOTS_LIMIT = 64  # each waiting batch's body is held in memory; past a few dozen the database is the wall
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class ConfigError(HubError):
    """A setting is missing, unknown or out of range; the message names it."""


class ExceptionWindows(TypedDict, total=False):
    """The times that make a finding an exception (``ReportStore.exceptions``' arguments of them)."""

    transfer_open_max_ms: int
    copies_window_ms: int


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
    # PostgreSQL: another hub's lock connection silent this long (its hub paused, stuck) is ended to take its jobs
    lease_stale_s: float = DEFAULT_LEASE_STALE_S
    # PostgreSQL: how often a hub checks the locks it holds, and a standing-by hub tries to take a webhook or channel
    lease_retry_s: float = DEFAULT_LEASE_RETRY_S
    # PostgreSQL: a request's database work (a transaction, a read) unanswered this long has its connection closed
    db_timeout_s: float = DEFAULT_DB_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S  # a request body must arrive whole within this; else 408
    rate_limit_per_s: float = DEFAULT_RATE_LIMIT_PER_S  # write requests per second per credential; 0: no limit
    rate_limit_burst: int = DEFAULT_RATE_LIMIT_BURST  # write requests a credential may send at once
    # refused attempts per client address on the public routes (failed sign-ins, unsigned webhooks); 0: no limit
    refused_attempts_per_s: float = DEFAULT_REFUSED_ATTEMPTS_PER_S
    refused_attempts_burst: int = DEFAULT_REFUSED_ATTEMPTS_BURST  # … and at once
    feed_read_rows_per_s: float = DEFAULT_FEED_READ_ROWS_PER_S  # changes a credential reads from the database; 0: off
    feed_read_burst: int = DEFAULT_FEED_READ_BURST  # changes a credential may read from the database at once
    read_bytes_per_s: float = DEFAULT_READ_BYTES_PER_S  # bytes of answers of the other reads a credential gets; 0: off
    read_burst_bytes: int = DEFAULT_READ_BURST_BYTES  # … and at once
    export_max_per_credential: int = DEFAULT_EXPORT_MAX_PER_CREDENTIAL  # CSV downloads one credential runs at once
    export_max: int = DEFAULT_EXPORT_MAX  # CSV downloads this hub process runs at once
    catchup_slots: int = CATCHUP_SLOTS  # catch-up batches (bodies over 256 KiB) this hub process commits at once
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S  # a request line and headers must arrive within this; else 408
    keepalive_timeout_s: float = DEFAULT_KEEPALIVE_TIMEOUT_S  # an idle connection is closed after this
    max_connections: int = 0  # open connections at most; 0: as many as the open-file limit allows (hub/limits.py)
    clock_window_s: int = DEFAULT_CLOCK_WINDOW_S  # events stamped further ahead (or before their credential) are held
    transfer_open_max_s: int = DEFAULT_TRANSFER_OPEN_MAX_S  # a transfer open longer is an exception (transfer_overdue)
    # two epochs of one agent both syncing within this are two copies of it sending (an exception, agent_copies)
    agent_copies_window_s: int = DEFAULT_AGENT_COPIES_WINDOW_S
    tls_cert: str = ""  # PEM certificate chain: with tls_key, the hub serves HTTPS itself
    tls_key: str = ""  # PEM private key of tls_cert
    public_url: str = ""  # how agents reach the hub (agent add writes it); "": from host, port and TLS
    # reverse proxies (addresses, CIDR networks) whose trusted_proxy_header names the client (hub/proxies.py)
    trusted_proxies: tuple[str, ...] = ()
    trusted_proxy_header: str = proxies.X_FORWARDED_FOR  # or Forwarded (RFC 7239)
    event_loop: str = "auto"  # "auto": uvloop's where it is installed, else asyncio's; or "uvloop", "asyncio"
    webhooks: tuple[WebhookSpec, ...] = ()  # the [[webhooks]] tables, not a [hub] key
    channels: tuple[ChannelSpec, ...] = ()  # the [[channel]] tables (docs/channels.md), not a [hub] key

    def __post_init__(self) -> None:
        _validate(self)

    def exception_windows(self) -> ExceptionWindows:
        """The times that make a finding an exception, as ``ReportStore.exceptions`` takes them."""
        return ExceptionWindows(
            transfer_open_max_ms=self.transfer_open_max_s * 1000, copies_window_ms=self.agent_copies_window_s * 1000
        )

    def replace(self, **changes: Any) -> HubSettings:
        """A copy with ``changes`` applied (and validated); ``None`` values are ignored."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


SETTINGS_KEYS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(HubSettings) if f.name not in ("webhooks", "channels")
)
CONFIG_KEYS: tuple[str, ...] = SETTINGS_KEYS + (DATABASE_URL_FILE_KEY,)


def env_name(key: str) -> str:
    """The environment variable that sets config key ``key``: ``SHELFSYNC_HUB_`` and the key in capitals."""
    return ENV_PREFIX + key.upper()


ENV_KEYS: Mapping[str, str] = {env_name(key): key for key in CONFIG_KEYS}  # variable -> config key


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
    for key in (
        "body_timeout_s", "rate_limit_per_s", "feed_read_rows_per_s", "header_timeout_s", "keepalive_timeout_s",
        "refused_attempts_per_s", "read_bytes_per_s",
    ):  # 1 is a number too  # fmt: skip
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
    _typed("refused_attempts_per_s", s.refused_attempts_per_s, float)
    if not 0.0 <= s.refused_attempts_per_s <= 1_000_000.0:
        raise ConfigError(
            f"refused_attempts_per_s must be between 0 (no limit) and 1000000, got {s.refused_attempts_per_s}"
        )
    _typed("refused_attempts_burst", s.refused_attempts_burst, int)
    if not 1 <= s.refused_attempts_burst <= 1_000_000:
        raise ConfigError(f"refused_attempts_burst must be between 1 and 1000000, got {s.refused_attempts_burst}")
    _typed("feed_read_rows_per_s", s.feed_read_rows_per_s, float)
    if not 0.0 <= s.feed_read_rows_per_s <= 1_000_000.0:
        raise ConfigError(
            f"feed_read_rows_per_s must be between 0 (no limit) and 1000000, got {s.feed_read_rows_per_s}"
        )
    _typed("feed_read_burst", s.feed_read_burst, int)
    if not 1 <= s.feed_read_burst <= 100_000_000:
        raise ConfigError(f"feed_read_burst must be between 1 and 100000000, got {s.feed_read_burst}")
    _typed("read_bytes_per_s", s.read_bytes_per_s, float)
    if not 0.0 <= s.read_bytes_per_s <= 1e12:
        raise ConfigError(f"read_bytes_per_s must be between 0 (no limit) and 1e12, got {s.read_bytes_per_s}")
    _typed("read_burst_bytes", s.read_burst_bytes, int)
    if not 1 <= s.read_burst_bytes <= 10**12:
        raise ConfigError(f"read_burst_bytes must be between 1 and 1000000000000, got {s.read_burst_bytes}")
    for key in ("export_max_per_credential", "export_max"):
        _typed(key, getattr(s, key), int)
        if not 1 <= getattr(s, key) <= EXPORT_MAX_LIMIT:
            raise ConfigError(f"{key} must be between 1 and {EXPORT_MAX_LIMIT}, got {getattr(s, key)}")
    _typed("catchup_slots", s.catchup_slots, int)
    if not 1 <= s.catchup_slots <= CATCHUP_SLOTS_LIMIT:
        raise ConfigError(f"catchup_slots must be between 1 and {CATCHUP_SLOTS_LIMIT}, got {s.catchup_slots}")
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
    if isinstance(s.lease_retry_s, int) and not isinstance(s.lease_retry_s, bool):
        object.__setattr__(s, "lease_retry_s", float(s.lease_retry_s))
    _typed("lease_retry_s", s.lease_retry_s, float)
    if not LEASE_RETRY_MIN_S <= s.lease_retry_s <= LEASE_RETRY_MAX_S:
        raise ConfigError(
            f"lease_retry_s must be between {LEASE_RETRY_MIN_S:g} and {LEASE_RETRY_MAX_S:g} seconds, got {s.lease_retry_s}"
        )
    if isinstance(s.lease_stale_s, int) and not isinstance(s.lease_stale_s, bool):
        object.__setattr__(s, "lease_stale_s", float(s.lease_stale_s))
    _typed("lease_stale_s", s.lease_stale_s, float)
    stale_min_s = LEASE_STALE_MIN_CHECKS * s.lease_retry_s + LEASE_STALE_MIN_SLACK_S
    if not stale_min_s <= s.lease_stale_s <= 3600.0:
        raise ConfigError(
            f"lease_stale_s must be between {stale_min_s:g} and 3600 seconds, got {s.lease_stale_s}"
            + ("" if s.lease_retry_s == DEFAULT_LEASE_RETRY_S else " (at least three lease_retry_s and 1 s more)")
        )
    if isinstance(s.db_timeout_s, int) and not isinstance(s.db_timeout_s, bool):
        object.__setattr__(s, "db_timeout_s", float(s.db_timeout_s))
    _typed("db_timeout_s", s.db_timeout_s, float)
    if not 1.0 <= s.db_timeout_s <= 3600.0:
        raise ConfigError(f"db_timeout_s must be between 1 and 3600 seconds, got {s.db_timeout_s}")
    _typed("clock_window_s", s.clock_window_s, int)
    if not CLOCK_WINDOW_MIN_S <= s.clock_window_s <= CLOCK_WINDOW_MAX_S:
        raise ConfigError(
            f"clock_window_s must be between {CLOCK_WINDOW_MIN_S} and {CLOCK_WINDOW_MAX_S} seconds, got {s.clock_window_s}"
        )
    _typed("event_loop", s.event_loop, str)
    loop = s.event_loop.strip().lower()
    if loop not in EVENT_LOOPS:
        raise ConfigError(f"event_loop must be one of {', '.join(EVENT_LOOPS)}, got {s.event_loop!r}")
    object.__setattr__(s, "event_loop", loop)
    _typed("transfer_open_max_s", s.transfer_open_max_s, int)
    if not 60 <= s.transfer_open_max_s <= 365 * 24 * 3_600:
        raise ConfigError(
            f"transfer_open_max_s must be between 60 and 31536000 seconds (a year), got {s.transfer_open_max_s}"
        )
    _typed("agent_copies_window_s", s.agent_copies_window_s, int)
    if not 1 <= s.agent_copies_window_s <= 24 * 3_600:
        raise ConfigError(
            f"agent_copies_window_s must be between 1 and 86400 seconds (a day), got {s.agent_copies_window_s}"
        )
    for key in ("tls_cert", "tls_key", "public_url"):
        _typed(key, getattr(s, key), str)
    if s.public_url and (problem := url_problem(s.public_url)):
        raise ConfigError(f"public_url {problem}")
    _check_proxies(s)
    if not isinstance(s.webhooks, tuple) or not all(isinstance(w, WebhookSpec) for w in s.webhooks):
        raise ConfigError("webhooks must be a tuple of WebhookSpec (from [[webhooks]] tables)")


def _check_proxies(s: HubSettings) -> None:
    """``trusted_proxies`` as a tuple of networks in their usual spelling (``10.0.0.5/32``), and the header."""
    given = s.trusted_proxies
    if not isinstance(given, list | tuple) or not all(isinstance(value, str) for value in given):
        raise ConfigError(
            "trusted_proxies must be a list of strings, each an IP address or a CIDR network "
            f'(["127.0.0.1", "10.0.0.0/8"]), got {type(given).__name__} {given!r:.80}'
        )
    try:
        networks = proxies.parse_networks(given)
    except ValueError as err:
        raise ConfigError(f"trusted_proxies must list IP addresses and CIDR networks: {err}") from None
    object.__setattr__(s, "trusted_proxies", tuple(str(network) for network in networks))
    _typed("trusted_proxy_header", s.trusted_proxy_header, str)
    try:
        object.__setattr__(s, "trusted_proxy_header", proxies.header_name(s.trusted_proxy_header))
    except ValueError as err:
        raise ConfigError(f"trusted_proxy_header {err}") from None


def _typed(key: str, value: Any, kind: type) -> None:
    if kind is not bool and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{key} must be {_KIND_NAMES[kind]}, got {type(value).__name__} {value!r}")


_KIND_NAMES: dict[type, str] = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def url_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an http:// or https:// address like https://hub.example:8470, got {url[:80]!r}"
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        return "must be a bare address: no user name, password, query or fragment"
    return None


def check_tls_pair(s: HubSettings) -> None:
    """TLS needs both the certificate and its key; one alone is a mistake worth stopping for."""
    if bool(s.tls_cert) != bool(s.tls_key):
        given, missing = ("tls_cert", "tls_key") if s.tls_cert else ("tls_key", "tls_cert")
        raise ConfigError(
            f"{given} is set but {missing} is not; the hub serves HTTPS with both (the certificate chain and its "
            "private key, PEM files) or plain HTTP with neither"
        )


def settings_from_mapping(table: Mapping[str, Any], where: str = "the settings") -> HubSettings:
    """Build settings from a mapping of config keys; unknown keys are an error."""
    unknown = sorted(set(table) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; the known keys are {', '.join(CONFIG_KEYS)}"
        )
    values = dict(table)
    if DATABASE_URL_FILE_KEY in values:
        values["db"] = _database_url(values, Path(), where)
    return HubSettings(**values)


def config_path(explicit: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path | None:
    """The config file to read: ``--config``, else ``$SHELFSYNC_HUB_CONFIG`` (empty: none), else
    /etc/shelfsync/hub.toml when it exists, else none."""
    if explicit is not None:
        return Path(explicit)
    named = environ.get(CONFIG_ENV)
    if named is not None:
        return Path(named) if named.strip() else None
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def load_settings(
    path: str | Path | None = None, *, environ: Mapping[str, str] | None = None, **overrides: Any
) -> HubSettings:
    """Read the ``[hub]`` table of a TOML file (if given), then the ``SHELFSYNC_HUB_*`` variables of
    ``environ`` (if given), then apply non-None ``overrides`` (the command line); each wins over the one before."""
    doc: Mapping[str, Any] = {}
    table: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        doc, table = _read_file(path)
    from_env = {} if environ is None else _from_environ(environ, _secret_envs(doc))
    given = {key: value for key, value in overrides.items() if value is not None}
    layers = [
        (f"the [hub] table of {path}", table, path.parent if path is not None else Path()),
        ("the environment", from_env, Path()),
        ("the command line", given, Path()),
    ]
    settings = HubSettings()
    db_layer: tuple[str, dict[str, Any], Path] | None = None
    for where, values, base in layers:
        if "db" in values or DATABASE_URL_FILE_KEY in values:
            db_layer = (where, values, base)
        plain = {k: v for k, v in values.items() if k not in ("db", DATABASE_URL_FILE_KEY)}
        try:
            settings = settings.replace(**plain)
        except ConfigError as err:
            raise ConfigError(f"{err} (in {where})") from err
    if db_layer is not None:
        where, values, base = db_layer
        settings = settings.replace(db=_database_url(values, base, where))
    if "\0" in settings.db:  # no file name or URL holds one; the OS would refuse it later, with a traceback
        raise ConfigError("db holds a NUL character; give the database's file path or URL as it is")
    if not settings.db:
        raise ConfigError(
            f"no database given; pass --db URL, set {env_name('db')}, or set db (or {DATABASE_URL_FILE_KEY}) in the "
            f"[hub] table of the config file ({DEFAULT_CONFIG_PATH} unless --config or {CONFIG_ENV} names another)"
        )
    check_tls_pair(settings)
    if path is not None:
        settings = _with_extras(settings, doc, path, environ)
    return settings


def _database_url(values: Mapping[str, Any], base: Path, where: str) -> str:
    """``db`` of one layer, or the URL its ``database_url_file`` holds; both at once is a mistake."""
    if "db" in values and DATABASE_URL_FILE_KEY in values:
        raise ConfigError(f"db and {DATABASE_URL_FILE_KEY} are both set in {where}; keep one")
    if DATABASE_URL_FILE_KEY not in values:
        db = values["db"]
        _typed("db", db, str)
        if db and not _is_url(db) and (problem := path_problem(db)):
            raise ConfigError(f"db {problem} (in {where})")
        if db and not _is_url(db) and not Path(db).is_absolute():
            db = str(base / db)  # a relative path in a config file is relative to that file
        return str(db)
    name = values[DATABASE_URL_FILE_KEY]
    _typed(DATABASE_URL_FILE_KEY, name, str)
    file = base / str(name)
    try:
        with file.open("rb") as f:
            secretfiles.warn_if_open(f.fileno(), file, "the hub database's URL (with its password)")
            raw = f.read(SECRET_FILE_MAX_BYTES + 1)
    except OSError as err:
        raise ConfigError(
            f"{DATABASE_URL_FILE_KEY} {file} (in {where}) cannot be read ({err.strerror or err})"
        ) from None
    try:
        text = decode_text(raw).strip()
    except UnicodeDecodeError:
        text = ""
    if not text or len(raw) > SECRET_FILE_MAX_BYTES or "\n" in text:
        raise ConfigError(
            f"{DATABASE_URL_FILE_KEY} {file} (in {where}) must hold one line: the database URL or file path"
        )
    return text


def _from_environ(environ: Mapping[str, str], allowed: frozenset[str]) -> dict[str, Any]:
    """The settings ``SHELFSYNC_HUB_*`` variables give, typed; an unknown one is a typo to stop for."""
    found: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV or name in allowed:
            continue
        key = ENV_KEYS.get(name)
        if key is None:
            meant = _looks_like(name, [CONFIG_ENV, *ENV_KEYS])
            raise ConfigError(
                f"unknown environment variable {name}{f' (did you mean {meant}?)' if meant else ''}; the hub's are {CONFIG_ENV} and "
                f"{', '.join(sorted(ENV_KEYS))} (a secret of yours needs another name, or use it by secret_env)"
            )
        if raw.strip() == "":
            continue  # set but empty: as if not set (an unset line of an EnvironmentFile)
        found[key] = _typed_from_text(key, name, raw.strip())
    return found


_DEFAULTS = HubSettings()


def _typed_from_text(key: str, name: str, raw: str) -> Any:
    default = getattr(_DEFAULTS, key, "")
    if isinstance(default, tuple):  # a list: its items apart by commas or spaces
        return tuple(item for item in re.split(r"[\s,]+", raw) if item)
    if isinstance(default, bool):
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ConfigError(f"{name} must be true or false, got {raw[:40]!r}")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw[:40]!r}") from None
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw[:40]!r}") from None
    return raw


def _secret_envs(doc: Mapping[str, Any]) -> frozenset[str]:
    """Variable names the file's webhooks and channels read their secrets from: not hub settings."""
    names: set[str] = set()
    for section in ("webhooks", "channel"):
        tables = doc.get(section, [])
        if isinstance(tables, list):
            for key in ("secret_env", "webhook_secret_env"):
                names |= {t[key] for t in tables if isinstance(t, dict) and isinstance(t.get(key), str)}
    return frozenset(names)


def _looks_like(name: str, known: Collection[str]) -> str | None:
    """The one of ``known`` that ``name`` is a typo of (a letter missing, swapped or too many), or None."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
    return close[0] if close else None


def _unknown_keys(unknown: Collection[str], text: str) -> str:
    """The unknown keys of the [hub] table, each with the line of ``text`` that sets it and the key it looks like:
    ``'header_timout_s' (line 5; did you mean 'header_timeout_s'?)``."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"\s*\[\s*hub\s*\]", line)), 0)
    said = []
    for key in unknown:
        setting = re.compile(rf"""\s*(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')\s*=""")
        line = next((i + 1 for i in range(start, len(lines)) if setting.match(lines[i])), None)
        meant = _looks_like(key, CONFIG_KEYS)
        notes = ([f"line {line}"] if line else []) + ([f"did you mean {meant!r}?"] if meant else [])
        said.append(repr(key) + (f" ({'; '.join(notes)})" if notes else ""))
    return ", ".join(said)


def _read_file(path: Path) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """The whole TOML document and its ``[hub]`` table, checked for unknown keys; paths made absolute."""
    try:
        text = read_text(path)  # by its byte-order mark, as a Windows tool may have saved it
        doc = tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML ({err}){toml_hint(err)}") from err
    extra = sorted(set(doc) - {"hub", "webhooks", "channel"})
    if extra:
        raise ConfigError(
            f"unknown key(s) {', '.join(map(repr, extra))} in {path}; hub settings go in a [hub] table, "
            "webhooks in [[webhooks]] tables and sales channels in [[channel]] tables"
        )
    table = doc.get("hub", {})
    if not isinstance(table, dict):
        raise ConfigError(f"hub in {path} must be a table ([hub])")
    unknown = sorted(set(table) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {_unknown_keys(unknown, text)} in the [hub] table of {path}; "
            f"the known keys are {', '.join(CONFIG_KEYS)}"
        )
    table = dict(table)
    for key in ("tls_cert", "tls_key"):  # database_url_file is read relative to the file by _database_url
        if isinstance(table.get(key), str) and table[key] and not Path(table[key]).is_absolute():
            table[key] = str(path.parent / table[key])
    return doc, table


def _with_extras(
    settings: HubSettings, doc: Mapping[str, Any], path: Path, environ: Mapping[str, str] | None
) -> HubSettings:
    """The file's ``[[webhooks]]`` and ``[[channel]]`` tables, secrets read."""
    if "webhooks" in doc:
        try:
            tables = _webhook_secrets(doc["webhooks"], path.parent, os.environ if environ is None else environ)
            settings = settings.replace(webhooks=parse_webhooks(tables))
        except WebhookConfigError as err:
            raise ConfigError(f"{err} (in {path})") from err
    if "channel" in doc:
        try:
            settings = settings.replace(channels=parse_channels(doc["channel"], base_dir=path.parent, environ=environ))
        except ChannelConfigError as err:
            raise ConfigError(f"{err} (in {path})") from err
    return settings


def _webhook_secrets(raw: Any, base: Path, environ: Mapping[str, str]) -> Any:
    """``[[webhooks]]`` tables with ``secret_file`` or ``secret_env`` turned into ``secret`` (read now)."""
    if not isinstance(raw, list):
        return raw  # parse_webhooks says what is wrong
    out: list[Any] = []
    for i, table in enumerate(raw, 1):
        if not isinstance(table, dict) or not ({"secret_file", "secret_env"} & set(table)):
            out.append(table)
            continue
        where = f"webhook {table.get('name', i)!r}"
        given = [k for k in ("secret", "secret_file", "secret_env") if k in table]
        if len(given) != 1:
            raise WebhookConfigError(f"{where}: give exactly one of secret, secret_file and secret_env")
        rest = {k: v for k, v in table.items() if k not in ("secret_file", "secret_env")}
        if "secret_env" in table:
            var = table["secret_env"]
            if not isinstance(var, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var):
                raise WebhookConfigError(f"{where}: secret_env must be an environment variable name, got {var!r}")
            rest["secret"] = environ.get(var, "").strip()
            if not rest["secret"]:
                raise WebhookConfigError(f"{where}: the environment variable {var} (secret_env) is empty or not set")
        else:
            name = table["secret_file"]
            if not isinstance(name, str) or not name:
                raise WebhookConfigError(f"{where}: secret_file must be a file path")
            file = base / str(name)
            try:
                with file.open("rb") as f:
                    secretfiles.warn_if_open(f.fileno(), file, f"the shared secret of {where}")
                    secret = f.read(SECRET_FILE_MAX_BYTES + 1)
            except OSError as err:
                why = err.strerror or err
                raise WebhookConfigError(f"{where}: secret_file {file} cannot be read ({why})") from None
            try:
                rest["secret"] = decode_text(secret).strip()
            except UnicodeDecodeError:
                raise WebhookConfigError(f"{where}: secret_file {file} is not UTF-8 text") from None
            if len(secret) > SECRET_FILE_MAX_BYTES:
                raise WebhookConfigError(f"{where}: secret_file {file} is longer than {SECRET_FILE_MAX_BYTES} bytes")
        out.append(rest)
    return out


def _is_url(db: str) -> bool:
    return "://" in db


def log_level_number(settings: HubSettings) -> int:
    return int(getattr(logging, settings.log_level))

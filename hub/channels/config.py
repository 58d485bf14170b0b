"""A channel's configuration: the ``[[channel]]`` tables of the hub's TOML file.

A channel is a place that sells the hub's stock: a Shopify store, a Square
account or a generic webhook. It sells from a *pool*: hub locations mapped to
the channel's own location ids (several hub locations may feed one channel
location). A *buffer* holds units back: what the channel shows is the pool's
available minus the buffer, never below zero (``hub.channels.levels``).

Secrets never sit in the config file: ``secret_file`` names a file holding the
token, ``secret_env`` an environment variable. Both are read once, when the
configuration is parsed, so a missing secret stops the hub at start-up with one
sentence instead of failing at the first push.

``parse_channels`` is what the hub's config calls with the ``channel`` array of
its TOML document; ``load_channels`` reads a file on its own (tools, tests).
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

from hub import secretfiles
from hub.resolver import is_location
from hub.webhook_spec import SECRET_MIN_LEN as WEBHOOK_SECRET_MIN_LEN  # a webhook channel signs like them
from protocol import csvtext
from protocol.event import SKU_MAX_LEN
from protocol.textfile import decode_text, read_text

KINDS = ("shopify", "square", "webhook")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}")
CHANNEL_LOCATION_MAX_LEN = 255
SECRET_MAX_BYTES = 4_096
SHOPIFY_API_VERSION = "2026-01"  # the GraphQL Admin API version the Shopify connector follows
SQUARE_API_VERSION = "2024-11-20"  # the Square-Version header the Square connector sends
SQUARE_URL = "https://connect.squareup.com"
SHOPIFY_BATCH_MAX = 250  # quantities per inventorySetQuantities call
SQUARE_BATCH_MAX = 100  # changes per batch-create request (Square's limit)
WEBHOOK_BATCH_MAX = 1_000
BUFFER_UNITS_MAX = 1_000_000
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_RETRY_MAX_S = 300.0
DEFAULT_SHOPIFY_REASON = "correction"
DEFAULT_COALESCE_S = 0.25  # after a push, gather changes this long before the next one
DEFAULT_RECONCILE_S = 900.0  # read the channel's levels back this often (0: never)
RECONCILE_MIN_S = 10.0
# Square: a register sale taken off the counts whose order has not reached the hub this long after Square received it
# is an exception for a person (hub.channels.pusher); at most a while under the day such a sale is read back for
DEFAULT_UNBOOKED_SALE_WAIT_S = 3600.0
UNBOOKED_SALE_WAIT_MIN_S = 60.0
UNBOOKED_SALE_WAIT_MAX_S = 23 * 3600.0
# … and a sale naming no order the hub booked is matched to an order whose time is this close to the sale's
DEFAULT_ORDER_MATCH_WINDOW_S = 600.0
ORDER_MATCH_WINDOW_MAX_S = 3600.0
SHOPIFY_REASONS = (
    "correction",
    "cycle_count_available",
    "damaged",
    "movement_created",
    "movement_updated",
    "movement_received",
    "movement_canceled",
    "other",
    "promotion",
    "quality_control",
    "received",
    "reservation_created",
    "reservation_deleted",
    "reservation_updated",
    "restock",
    "safety_stock",
    "shrinkage",
)
KEYS = (
    "name",
    "kind",
    "pool",
    "buffer",
    "secret_file",
    "secret_env",
    "shop",
    "url",
    "api_version",
    "mapping_csv",
    "mapping_encoding",
    "batch_max",
    "timeout_s",
    "retry_max_s",
    "reason",
    "coalesce_s",
    "webhook_secret_file",
    "webhook_secret_env",
    "notification_url",
    "fulfil_from",
    "order_location",
    "reconcile_s",
    "unbooked_sale_wait_s",
    "order_match_window_s",
)
BUFFER_KEYS = ("units", "percent", "skus")


class ChannelConfigError(ValueError):
    """A ``[[channel]]`` table is wrong; the message is one sentence naming the channel and the key."""


@dataclass(frozen=True, slots=True)
class Buffer:
    """Units a channel holds back from what its pool has available.

    For a SKU listed in ``skus`` that number is held back; for any other SKU,
    ``units`` or ``percent`` % of the pool's available (rounded up), whichever
    is more.
    """

    units: int = 0
    percent: float = 0.0
    skus: Mapping[str, int] = field(default_factory=dict)

    def held_back(self, sku: str, pool_available: int) -> int:
        """The units held back for ``sku`` when the pool has ``pool_available``."""
        if sku in self.skus:
            return self.skus[sku]
        by_rule = math.ceil(max(0, pool_available) * self.percent / 100.0) if self.percent else 0
        return max(self.units, by_rule)


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """One ``[[channel]]`` table, checked; ``secret`` is the resolved token (never printed)."""

    name: str
    kind: str
    pool: Mapping[str, str]  # hub location -> the channel's location id
    url: str  # the API endpoint (Shopify: the GraphQL URL; Square: the base URL; webhook: the receiver)
    secret: str = field(repr=False)
    secret_source: str = ""  # "file /path" or "env NAME": where the secret came from, for messages
    buffer: Buffer = Buffer()
    api_version: str = ""
    mapping_csv: str | None = None
    mapping_encoding: str | None = None  # the charset mapping_csv is saved in; None: by its byte-order mark, else UTF-8
    batch_max: int = SHOPIFY_BATCH_MAX
    timeout_s: float = DEFAULT_TIMEOUT_S
    retry_max_s: float = DEFAULT_RETRY_MAX_S
    reason: str = DEFAULT_SHOPIFY_REASON
    coalesce_s: float = DEFAULT_COALESCE_S
    # Orders back (hub.channels.orders): the webhook signing secret, Square's notification URL, who fulfils.
    webhook_secret: str = field(default="", repr=False)
    webhook_secret_source: str = ""  # where it came from, as ``secret_source``
    notification_url: str = ""
    fulfil_from: Mapping[str, str] = field(default_factory=dict)  # channel location id -> hub location
    order_location: str = ""  # hub location reserving an order that names no location
    reconcile_s: float = DEFAULT_RECONCILE_S  # read the levels back this often (hub.channels.reconcile; 0: never)
    # Square: a register sale taken off the counts waits this long for its order before it is reported, and one naming
    # no order the hub booked is matched to an order this close in time (hub.channels.pusher, "Orders back")
    unbooked_sale_wait_s: float = DEFAULT_UNBOOKED_SALE_WAIT_S
    order_match_window_s: float = DEFAULT_ORDER_MATCH_WINDOW_S

    @property
    def channel_locations(self) -> tuple[str, ...]:
        """The channel's location ids the pool feeds, each once, in config order."""
        return tuple(dict.fromkeys(self.pool.values()))

    @property
    def display_url(self) -> str:
        """The URL without credentials or query, for logs and the API."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def parse_channels(
    raw: Any, *, base_dir: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[ChannelSpec, ...]:
    """The ``[[channel]]`` array of a hub config file, checked, with every secret read.

    ``base_dir``: relative ``secret_file`` and ``mapping_csv`` paths are relative
    to it (the config file's folder). ``environ``: where ``secret_env`` is looked
    up (default: the process environment).
    """
    if not isinstance(raw, list):
        raise ChannelConfigError("channel must be an array of tables ([[channel]])")
    env = os.environ if environ is None else environ
    base = Path(base_dir) if base_dir is not None else None
    specs = [_parse_one(i, table, base, env) for i, table in enumerate(raw)]
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ChannelConfigError(f"channel name(s) {', '.join(twice)} are used twice; give each channel its own name")
    return tuple(specs)


def load_channels(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> tuple[ChannelSpec, ...]:
    """The channels of a TOML file's ``[[channel]]`` tables (none if it has none)."""
    p = Path(path)
    try:
        doc = tomllib.loads(read_text(p))  # by its byte-order mark, as a Windows tool may have saved it
    except OSError as err:
        raise ChannelConfigError(f"config file {p} cannot be read ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise ChannelConfigError(f"config file {p} is not UTF-8 text") from err
    except tomllib.TOMLDecodeError as err:
        raise ChannelConfigError(f"config file {p} is not valid TOML ({err})") from err
    if "channel" not in doc:
        return ()
    return parse_channels(doc["channel"], base_dir=p.parent, environ=environ)


def _parse_one(i: int, table: Any, base: Path | None, env: Mapping[str, str]) -> ChannelSpec:
    if not isinstance(table, Mapping):
        raise ChannelConfigError(f"channel[{i}] must be a table")
    name = table.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ChannelConfigError(f"channel[{i}]: name must be 1 to 64 letters, digits, '.', '_' or '-'")
    where = f"channel {name!r}"
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        hint = (
            " (put the token in a file named by secret_file or a variable named by secret_env)"
            if "secret" in unknown
            else ""
        )
        raise ChannelConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}{hint}; the keys are {', '.join(KEYS)}"
        )
    kind = table.get("kind")
    if kind not in KINDS:
        raise ChannelConfigError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    pool = _pool(where, table.get("pool"))
    secret, source = _secret(where, table, base, env)
    api_version, url = _endpoint(where, kind, table)
    batch_limit = {"shopify": SHOPIFY_BATCH_MAX, "square": SQUARE_BATCH_MAX, "webhook": WEBHOOK_BATCH_MAX}[kind]
    batch_max = table.get("batch_max", batch_limit)
    if isinstance(batch_max, bool) or not isinstance(batch_max, int) or not 1 <= batch_max <= batch_limit:
        raise ChannelConfigError(f"{where}: batch_max must be a whole number from 1 to {batch_limit} for {kind}")
    timeout_s = _seconds(where, "timeout_s", table.get("timeout_s", DEFAULT_TIMEOUT_S), 0.1, 300.0)
    retry_max_s = _seconds(where, "retry_max_s", table.get("retry_max_s", DEFAULT_RETRY_MAX_S), 0.01, 86_400.0)
    coalesce_s = _seconds(where, "coalesce_s", table.get("coalesce_s", DEFAULT_COALESCE_S), 0.0, 60.0)
    reconcile_s = _seconds(where, "reconcile_s", table.get("reconcile_s", DEFAULT_RECONCILE_S), 0.0, 86_400.0)
    if 0 < reconcile_s < RECONCILE_MIN_S:
        raise ChannelConfigError(f"{where}: reconcile_s must be 0 (never) or from {RECONCILE_MIN_S:g} to 86400 seconds")
    unbooked_sale_wait_s, order_match_window_s = _register_sales(where, kind, table)
    if kind == "webhook" and len(secret) < WEBHOOK_SECRET_MIN_LEN:
        raise ChannelConfigError(
            f"{where}: a webhook channel's secret signs its requests; make it at least {WEBHOOK_SECRET_MIN_LEN} characters"
        )
    reason = table.get("reason", DEFAULT_SHOPIFY_REASON)
    if reason not in SHOPIFY_REASONS:
        raise ChannelConfigError(f"{where}: reason must be one of Shopify's reasons ({', '.join(SHOPIFY_REASONS)})")
    mapping_csv = table.get("mapping_csv")
    if mapping_csv is not None:
        if not isinstance(mapping_csv, str) or not mapping_csv:
            raise ChannelConfigError(f"{where}: mapping_csv must be the path of a CSV file")
        mapping_csv = (
            str(base / mapping_csv) if base is not None and not Path(mapping_csv).is_absolute() else mapping_csv
        )
    mapping_encoding = table.get("mapping_encoding")
    if mapping_encoding is not None:
        if not isinstance(mapping_encoding, str):
            raise ChannelConfigError(f"{where}: mapping_encoding must be the name of a charset, e.g. windows-1252")
        if mapping_csv is None:
            raise ChannelConfigError(f"{where}: mapping_encoding names the charset of mapping_csv, which is not set")
        try:
            csvtext.lookup(mapping_encoding, "", who="the hub")
        except csvtext.CharsetRefused as err:
            raise ChannelConfigError(f"{where}: mapping_encoding {str(err).strip()}") from None
    return ChannelSpec(
        name=name,
        kind=kind,
        pool=pool,
        url=url,
        secret=secret,
        secret_source=source,
        buffer=_buffer(where, table.get("buffer", {})),
        api_version=api_version,
        mapping_csv=mapping_csv,
        mapping_encoding=mapping_encoding,
        batch_max=batch_max,
        timeout_s=timeout_s,
        retry_max_s=retry_max_s,
        reason=reason,
        coalesce_s=coalesce_s,
        reconcile_s=reconcile_s,
        unbooked_sale_wait_s=unbooked_sale_wait_s,
        order_match_window_s=order_match_window_s,
        **_orders_back(where, kind, table, pool, base, env),
    )


def _register_sales(where: str, kind: str, table: Mapping[str, Any]) -> tuple[float, float]:
    """``unbooked_sale_wait_s`` and ``order_match_window_s``: Square settings (its register sales taken off the
    counts until their orders reach the hub, docs/channels.md "Orders back")."""
    given = [k for k in ("unbooked_sale_wait_s", "order_match_window_s") if k in table]
    if given and kind != "square":
        raise ChannelConfigError(
            f"{where}: {given[0]} is a Square setting (its register sales); a {kind} channel has none"
        )
    wait_s = _seconds(
        where, "unbooked_sale_wait_s", table.get("unbooked_sale_wait_s", DEFAULT_UNBOOKED_SALE_WAIT_S),
        UNBOOKED_SALE_WAIT_MIN_S, UNBOOKED_SALE_WAIT_MAX_S,
    )  # fmt: skip
    window_s = _seconds(
        where, "order_match_window_s", table.get("order_match_window_s", DEFAULT_ORDER_MATCH_WINDOW_S), 1.0,
        ORDER_MATCH_WINDOW_MAX_S,
    )  # fmt: skip
    return wait_s, window_s


def _orders_back(
    where: str, kind: str, table: Mapping[str, Any], pool: Mapping[str, str], base: Path | None, env: Mapping[str, str]
) -> dict[str, Any]:
    """The order-webhook keys: ``webhook_secret_file`` / ``webhook_secret_env``, ``notification_url`` (Square),
    ``fulfil_from`` and ``order_location`` (docs/channels.md, "Orders back")."""
    given = {k: table[k] for k in ("webhook_secret_file", "webhook_secret_env") if k in table}
    fulfil_raw = table.get("fulfil_from", {})
    if not isinstance(fulfil_raw, Mapping) or not all(isinstance(v, str) for v in fulfil_raw.values()):
        raise ChannelConfigError(f"{where}: fulfil_from must be a table of channel location id = hub location")
    fulfil_from: dict[str, str] = {}
    for channel_location, hub_location in fulfil_raw.items():
        feeding = [h for h, c in pool.items() if c == channel_location]
        if hub_location not in feeding:
            raise ChannelConfigError(
                f"{where}: fulfil_from.{channel_location} is {hub_location!r}, but the pool maps "
                f"{channel_location!r} to {', '.join(feeding) or 'no hub location'}; name one of those"
            )
        fulfil_from[channel_location] = hub_location
    order_location = table.get("order_location", "")
    if order_location and order_location not in pool:
        raise ChannelConfigError(f"{where}: order_location must be one of the pool's hub locations ({', '.join(pool)})")
    notification_url = table.get("notification_url", "")
    if not given:
        if "notification_url" in table:
            raise ChannelConfigError(
                f"{where}: notification_url is for order webhooks; set webhook_secret_file or webhook_secret_env too"
            )
        return {"fulfil_from": fulfil_from, "order_location": order_location}
    if kind not in ("shopify", "square"):
        raise ChannelConfigError(f"{where}: order webhooks come from shopify and square channels, not {kind}")
    if len(given) != 1:
        raise ChannelConfigError(f"{where}: give one of webhook_secret_file and webhook_secret_env, not both")
    renamed = {k.removeprefix("webhook_"): v for k, v in given.items()}
    try:
        secret, source = _secret(where, renamed, base, env)
    except ChannelConfigError as err:
        raise ChannelConfigError(
            str(err)
            .replace("secret_file", "webhook_secret_file")
            .replace("secret_env", "webhook_secret_env")
            .replace("access token", "webhook signing secret")
            .replace("the secret", "the webhook secret")
        ) from None
    if kind == "square":
        parts = _http_url(notification_url)
        if parts is None:
            raise ChannelConfigError(
                f"{where}: notification_url must be the exact URL Square's webhook subscription posts to "
                "(Square signs it with the body), e.g. https://hub.example.com/v1/channels/<name>/webhooks"
            )
    elif "notification_url" in table:
        raise ChannelConfigError(f"{where}: notification_url is a Square setting; Shopify signs the body alone")
    shared = sorted({c for c in pool.values() if list(pool.values()).count(c) > 1} - set(fulfil_from))
    if shared:
        feeding = [h for h, c in pool.items() if c == shared[0]]
        raise ChannelConfigError(
            f"{where}: the pool maps {', '.join(feeding)} to {shared[0]!r}; say which fulfils its orders with "
            f'fulfil_from = {{ "{shared[0]}" = "{feeding[0]}" }}'
        )
    return {
        "webhook_secret": secret,
        "webhook_secret_source": source,
        "notification_url": notification_url,
        "fulfil_from": fulfil_from,
        "order_location": order_location,
    }


def _pool(where: str, raw: Any) -> dict[str, str]:
    if not isinstance(raw, Mapping) or not raw:
        raise ChannelConfigError(
            f'{where}: pool must be a table of hub location = channel location id, e.g. pool = {{ WH1 = "gid://shopify/Location/1" }}'
        )
    pool: dict[str, str] = {}
    for hub_location, channel_location in raw.items():
        if not is_location(hub_location):
            raise ChannelConfigError(f"{where}: pool key {hub_location!r} is not a hub location code")
        if (
            not isinstance(channel_location, str)
            or not channel_location.strip()
            or len(channel_location) > CHANNEL_LOCATION_MAX_LEN
            or not channel_location.isprintable()
        ):
            raise ChannelConfigError(
                f"{where}: pool.{hub_location} must be the channel's location id (printable text, "
                f"at most {CHANNEL_LOCATION_MAX_LEN} characters)"
            )
        pool[hub_location] = channel_location
    return pool


def _buffer(where: str, raw: Any) -> Buffer:
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = {"units": raw}
    if not isinstance(raw, Mapping):
        raise ChannelConfigError(f"{where}: buffer must be a number of units or a table with units, percent, skus")
    unknown = sorted(set(raw) - set(BUFFER_KEYS))
    if unknown:
        raise ChannelConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))} in buffer; the keys are {', '.join(BUFFER_KEYS)}"
        )
    units = raw.get("units", 0)
    if not _whole(units, BUFFER_UNITS_MAX):
        raise ChannelConfigError(f"{where}: buffer.units must be a whole number from 0 to {BUFFER_UNITS_MAX}")
    percent = raw.get("percent", 0)
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 <= percent <= 100:
        raise ChannelConfigError(f"{where}: buffer.percent must be a number from 0 to 100")
    skus_raw = raw.get("skus", {})
    if not isinstance(skus_raw, Mapping):
        raise ChannelConfigError(f"{where}: buffer.skus must be a table of SKU = units")
    skus: dict[str, int] = {}
    for sku, held in skus_raw.items():
        if not _is_sku(sku):
            raise ChannelConfigError(f"{where}: buffer.skus has {sku!r}, which is not a SKU")
        if not _whole(held, BUFFER_UNITS_MAX):
            raise ChannelConfigError(f"{where}: buffer.skus.{sku} must be a whole number from 0 to {BUFFER_UNITS_MAX}")
        skus[sku] = held
    return Buffer(units=units, percent=float(percent), skus=skus)


def _secret(where: str, table: Mapping[str, Any], base: Path | None, env: Mapping[str, str]) -> tuple[str, str]:
    file, var = table.get("secret_file"), table.get("secret_env")
    if (file is None) == (var is None):
        raise ChannelConfigError(
            f"{where}: give exactly one of secret_file (a file holding the access token) or secret_env "
            "(the name of an environment variable holding it)"
        )
    if var is not None:
        if not isinstance(var, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", var):
            raise ChannelConfigError(f"{where}: secret_env must be an environment variable name, got {var!r}")
        value = env.get(var, "")
        source = f"environment variable {var}"
    else:
        if not isinstance(file, str) or not file:
            raise ChannelConfigError(f"{where}: secret_file must be a file path")
        path = base / file if base is not None and not Path(file).is_absolute() else Path(file)
        source = f"file {path}"
        try:
            with path.open("rb") as f:
                secretfiles.warn_if_open(f.fileno(), path, f"the secret of {where}")
                data = f.read(SECRET_MAX_BYTES + 1)
        except OSError as err:
            raise ChannelConfigError(f"{where}: the secret {source} cannot be read ({err.strerror or err})") from None
        if len(data) > SECRET_MAX_BYTES:
            raise ChannelConfigError(f"{where}: the secret {source} is longer than {SECRET_MAX_BYTES} bytes")
        try:
            value = decode_text(data)
        except UnicodeDecodeError:
            raise ChannelConfigError(f"{where}: the secret {source} is not UTF-8 text") from None
    value = value.strip()
    if not value:
        raise ChannelConfigError(f"{where}: the secret ({source}) is empty or not set")
    if not value.isprintable() or any(c.isspace() for c in value):
        raise ChannelConfigError(f"{where}: the secret ({source}) must be one line of text without spaces")
    return value, source


def _endpoint(where: str, kind: str, table: Mapping[str, Any]) -> tuple[str, str]:
    default_version = {"shopify": SHOPIFY_API_VERSION, "square": SQUARE_API_VERSION, "webhook": ""}[kind]
    version = table.get("api_version", default_version)
    if kind != "webhook" and (not isinstance(version, str) or not re.fullmatch(r"\d{4}-\d{2}(-\d{2})?", version)):
        raise ChannelConfigError(f"{where}: api_version must look like {default_version}, got {version!r}")
    shop, url = table.get("shop"), table.get("url")
    if kind == "shopify":
        if shop is not None and url is not None:
            raise ChannelConfigError(f"{where}: give shop (the store's myshopify.com domain) or url, not both")
        if shop is not None:
            if not isinstance(shop, str) or not re.fullmatch(r"[a-z0-9][a-z0-9\-]*\.myshopify\.com", shop):
                raise ChannelConfigError(f"{where}: shop must be the store's domain, like example.myshopify.com")
            url = f"https://{shop}/admin/api/{version}/graphql.json"
    elif shop is not None:
        raise ChannelConfigError(f"{where}: shop is a Shopify setting; a {kind} channel takes url")
    if kind == "square" and url is None:
        url = SQUARE_URL
    parts = _http_url(url)
    if parts is None:
        need = "shop or url" if kind == "shopify" else "url"
        raise ChannelConfigError(f"{where}: {need} must give an http:// or https:// address, got {url!r}")
    if parts.username or parts.password:
        raise ChannelConfigError(f"{where}: url must not carry a user or password; use secret_file or secret_env")
    assert isinstance(url, str)
    return str(version), url.rstrip("/") if kind == "square" else url


def _seconds(where: str, key: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ChannelConfigError(f"{where}: {key} must be a number of seconds from {lo:g} to {hi:g}")
    return float(value)


def _whole(value: Any, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= hi


def _is_sku(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= SKU_MAX_LEN and value.isprintable() and value == value.strip()


def _http_url(url: object) -> SplitResult | None:
    """``url`` split, when it is an http:// or https:// URL with a host and no port other than 1 to 65535; else None
    (urlsplit raises on a broken [IPv6] host, ``.port`` on a port out of range: one sentence, not a traceback)."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url)
        port_ok = parts.port != 0
    except ValueError:
        return None
    return parts if parts.scheme in ("http", "https") and parts.hostname and port_ok else None

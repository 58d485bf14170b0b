"""A webhook's configuration and its signature: what the hub config and a receiver need.

Kept apart from the delivery loop (``hub.webhooks``) so that reading the hub
config, or verifying a signature in a receiver, imports no HTTP client.

Signature: ``X-Shelfsync-Timestamp`` is the Unix time in seconds and
``X-Shelfsync-Signature`` is ``sha256=`` + the hex HMAC-SHA256, keyed with the
webhook's secret, of ``<timestamp>.`` followed by the raw body.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from hub.resolver import is_location

SIGNATURE_HEADER = "X-Shelfsync-Signature"
TIMESTAMP_HEADER = "X-Shelfsync-Timestamp"
WEBHOOK_HEADER = "X-Shelfsync-Webhook"
DELIVERY_HEADER = "X-Shelfsync-Delivery"
SIGNATURE_TOLERANCE_S = 300
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}")
SECRET_MIN_LEN = 16
BATCH_MAX_DEFAULT = 100
BATCH_MAX_LIMIT = 1_000
TIMEOUT_DEFAULT_S = 10.0
RETRY_MAX_DEFAULT_S = 300.0
KEYS = ("name", "url", "secret", "location", "batch_max", "timeout_s", "retry_max_s")


class WebhookConfigError(ValueError):
    """A ``[[webhooks]]`` entry is wrong; the message names the key (hub.config turns it into ConfigError)."""


@dataclass(frozen=True, slots=True)
class WebhookSpec:
    """One ``[[webhooks]]`` entry of the hub config."""

    name: str
    url: str
    secret: str = field(repr=False)
    location: str | None = None
    batch_max: int = BATCH_MAX_DEFAULT
    timeout_s: float = TIMEOUT_DEFAULT_S
    retry_max_s: float = RETRY_MAX_DEFAULT_S

    def __post_init__(self) -> None:
        where = f"webhook {self.name!r}" if isinstance(self.name, str) else "a webhook"
        if not isinstance(self.name, str) or not NAME_RE.fullmatch(self.name):
            raise WebhookConfigError(f"{where}: name must be 1 to 64 letters, digits, '.', '_' or '-'")
        try:  # urlsplit refuses a broken [IPv6] host, .port a port that is no number from 0 to 65535
            parts = urlsplit(self.url) if isinstance(self.url, str) else None
            port_ok = parts is not None and parts.port != 0
        except ValueError:
            parts, port_ok = None, False
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
            raise WebhookConfigError(
                f"{where}: url must be an http:// or https:// URL with a host and, if any, a port from 1 to 65535, "
                f"got {self.url!r}"
            )
        if not isinstance(self.secret, str) or len(self.secret) < SECRET_MIN_LEN:
            raise WebhookConfigError(f"{where}: secret must be a string of at least {SECRET_MIN_LEN} characters")
        if self.location is not None and not is_location(self.location):
            raise WebhookConfigError(f"{where}: location {self.location!r} is not a location code")
        if isinstance(self.batch_max, bool) or not isinstance(self.batch_max, int):
            raise WebhookConfigError(f"{where}: batch_max must be an integer")
        if not 1 <= self.batch_max <= BATCH_MAX_LIMIT:
            raise WebhookConfigError(f"{where}: batch_max must be from 1 to {BATCH_MAX_LIMIT}, got {self.batch_max}")
        for key, lo, hi in (("timeout_s", 0.1, 300.0), ("retry_max_s", 0.01, 86_400.0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
                raise WebhookConfigError(f"{where}: {key} must be a number of seconds from {lo:g} to {hi:g}")
            object.__setattr__(self, key, float(value))

    @property
    def display_url(self) -> str:
        """The URL without credentials or query (which may carry tokens), for logs and the API."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        netloc += f":{parts.port}" if parts.port else ""
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    @property
    def url_secrets(self) -> tuple[str, ...]:
        """What of the URL may be a token (its password and query, as written and decoded): never shown."""
        parts = urlsplit(self.url)
        found = {v for raw in (parts.password, parts.query) if raw for v in (raw, unquote(raw))}
        return tuple(sorted(found, key=len, reverse=True))

    def settings_text(self) -> str:
        """What the webhook's cursor is earned against, as JSON: to whom it delivers (its url without credentials
        or query, which may carry a rotating token) and what (its location). The secret, batch size, timeout and
        backoff change how batches go out, not which or where: they are left out."""
        return json.dumps({"url": self.display_url, "location": self.location}, sort_keys=True, separators=(",", ":"))

    def redact(self, text: str) -> str:
        """``text`` (an HTTP client's error, which may name the URL) without the URL's password or query."""
        for secret in self.url_secrets:
            text = text.replace(secret, "***")
        return text


def parse_webhooks(raw: Any) -> tuple[WebhookSpec, ...]:
    """The ``[[webhooks]]`` array of tables of a hub config file."""
    if not isinstance(raw, list):
        raise WebhookConfigError("webhooks must be an array of tables ([[webhooks]])")
    specs: list[WebhookSpec] = []
    for i, table in enumerate(raw):
        if not isinstance(table, Mapping):
            raise WebhookConfigError(f"webhooks[{i}] must be a table")
        unknown = sorted(set(table) - set(KEYS))
        if unknown:
            raise WebhookConfigError(
                f"unknown key(s) {', '.join(map(repr, unknown))} in webhooks[{i}]; the keys are {', '.join(KEYS)}"
            )
        missing = [k for k in ("name", "url", "secret") if k not in table]
        if missing:
            raise WebhookConfigError(f"webhooks[{i}] is missing {', '.join(missing)}")
        specs.append(WebhookSpec(**dict(table)))
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise WebhookConfigError(f"webhook name(s) {', '.join(twice)} are used twice; each needs its own name")
    return tuple(specs)


def settings_changed(before: str, after: str) -> str:
    """What differs between two ``WebhookSpec.settings_text``s, in words: "url (http://a/hook to http://b/hook)"."""
    try:
        old, new = json.loads(before), json.loads(after)
    except ValueError:
        return "settings"
    if not isinstance(old, dict) or not isinstance(new, dict):
        return "settings"
    words = [
        f"{key} ({old.get(key) or 'every location'} to {new.get(key) or 'every location'})"
        for key in ("url", "location")
        if old.get(key) != new.get(key)
    ]
    return " and ".join(words) or "settings"


# --- signatures ---------------------------------------------------------------


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Shelfsync-Signature`` value of ``body`` sent at ``timestamp`` (Unix seconds, as text)."""
    mac = hmac.new(secret.encode(), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    *,
    now_s: float | None = None,
    tolerance_s: float = SIGNATURE_TOLERANCE_S,
) -> bool:
    """True if ``signature`` is the hub's for ``body`` and ``timestamp`` is recent (what a receiver checks)."""
    if not timestamp or not signature or not timestamp.isascii() or not timestamp.isdigit():
        return False
    now = time.time() if now_s is None else now_s
    if abs(now - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)

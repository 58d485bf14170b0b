"""The catalog at the agent: which SKU a barcode is, and how many units one scan of it counts.

Two sources, merged: a file the store keeps (``[catalog] file``, CSV or JSON)
and the hub's catalog (``GET {hub_url}/v1/catalog``), which wins for a barcode
both know. The hub's copy is kept in a cache file, so an agent that starts
while the hub is unreachable still knows every item it knew before.

Keys are normalised as the hub does (``protocol.catalog.barcode_key``), so any
form of a GTIN matches: digits of a GTIN length (8, 12, 13, 14) with a correct
check digit become the 14-digit GTIN; anything else (an internal label, a
Code 39 shelf tag) is kept as text. A case GTIN-14
(indicator digit 1-8) maps to its SKU with ``pack_size`` > 1, and a scan of it
counts that many units.

    async with AgentCatalog(file=Path("catalog.csv"), hub_url=url, token=token, cache=path) as catalog:
        item = catalog.lookup(decoded, scan.text)      # CatalogItem or None

It also learns which SKUs are bundles at the hub (``GET {hub_url}/v1/bundles``,
every page, each refresh, with ``If-None-Match``; kept in ``<cache>.bundles.json`` beside the cache, with each
page's ETag and the SKUs it holds in the same file and write, so an agent restarted asks with ``If-None-Match``
too, and a hub restored from a backup, whose tags carry a new history, is read again in full):
the hub refuses a count of a bundle, so a count session refuses it at once
instead of after the staff counted (``is_bundle``; None while the agent has
never heard the hub's list).

It also learns the hub's locations (the stores its agent credentials are bound to, ``GET {hub_url}/v1/agents``,
each refresh; kept in ``<cache>.locations.json``): a transfer out to a location the hub does not know would sit in
transit to nowhere, so the session refuses it at its open (``known_locations``; None while never heard, and a hub
that does not let this agent read its credentials leaves it unheard).

Bad rows are reported with their line (``CatalogLoad.problems``) and the good
rows are kept; a file that cannot be read at all raises ``CatalogError``: one that is not text in its charset
(``[catalog] encoding``, else its byte-order mark, else UTF-8; ``protocol.csvtext``) is refused whole, naming the
offset and line of its first bad byte, and a running agent keeps the catalog it read before.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import os
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from agent.errors import AgentError
from agent.hub_loop import (
    FOLLOW_REDIRECTS,
    INTERCEPTED,
    AnswerTooLarge,
    HubLoop,
    broken,
    hub_answered,
    hub_unavailable,
    not_a_hubs_json,
    not_the_hubs,
    read_answer,
    redirected,
    wrong_address,
)
from agent.huberrors import SyncedHubIds, error_message, hub_id_of, refusal, sync_url
from hardware import Decoded
from protocol import csvtext
from protocol.catalog import BARCODE_MAX_LEN, UNKNOWN_SKU_PREFIX, barcode_key
from protocol.csvcells import uncell
from protocol.event import SKU_MAX_LEN
from protocol.retry import EQUAL_JITTER, Backoff, Streak, TurnFailed, run_turns
from protocol.routes import BUNDLES_PATH, CATALOG_PATH, HUB_ID_HEADER
from protocol.values import has_control

log = logging.getLogger(__name__)

DESCRIPTION_MAX_LEN = 256
PACK_SIZE_MAX = 1_000_000
REFRESH_S = 60.0
RETRY_BASE_S = 1.0
RETRY_MAX_S = 300.0
TIMEOUT_S = 30.0
FILE_MAX_BYTES = 64 << 20
ANSWER_MAX_BYTES = 2 * FILE_MAX_BYTES  # the hub's catalog as JSON: generous, but not whatever arrives
CSV_COLUMNS = ("barcode", "sku", "pack_size", "description")  # what a CSV catalog's header may name (others: ignored)
ENCODING_SETTING = "[catalog] encoding"  # where the configuration names the file's charset
PROBLEMS_LOGGED = 5  # problems quoted in a log line; all of them are in CatalogLoad.problems
AGENTS_PATH = "/v1/agents"  # the hub's credentials, with the locations they are bound to
BUNDLES_PAGE = 1000  # the hub's largest page of GET /v1/bundles
CATALOG_FIELDS = ("version", "items")  # in every GET /v1/catalog answer of the hub's (agent.hub_loop.not_a_hubs_json)
BUNDLES_FIELDS = ("bundles", "next")  # … and of GET /v1/bundles
BUNDLES_PAGES_MAX = 1000  # a million bundles; a hub whose cursors never end is not followed for ever


class CatalogError(AgentError):
    """A catalog file or answer cannot be used at all; the message is one sentence. ``level``: the log level
    the refresh loop says it at (DEBUG when only the hub is unavailable, which is said once for the agent)."""

    level = logging.WARNING


@dataclass(frozen=True, slots=True)
class CatalogItem:
    """One barcode of the catalog. ``barcode`` is the normalised key (GTIN-14 or text)."""

    barcode: str
    sku: str
    pack_size: int = 1
    description: str = ""


@dataclass(frozen=True, slots=True)
class CatalogProblem:
    """A row that was left out, and why; the rest of its file is kept."""

    line: int  # CSV: the line the row starts on (the header is line 1); JSON: the item's number (first = 1)
    reason: str
    where: str = "line"  # "line" (CSV) or "item" (JSON)

    def __str__(self) -> str:
        return f"{self.where} {self.line}: {self.reason}"


def normalise_barcode(text: str) -> str:
    """The catalog key of a barcode (``protocol.catalog.barcode_key``: a GTIN's GTIN-14, else the text).

    Raises ValueError (one sentence) for an empty or over-long value or one
    holding control characters.
    """
    value = text.strip()
    if not value:
        raise ValueError("the barcode is empty")
    if len(value) > BARCODE_MAX_LEN:
        raise ValueError(f"the barcode is {len(value)} characters long; the limit is {BARCODE_MAX_LEN}")
    if has_control(value):
        raise ValueError(f"the barcode {value[:40]!r} holds a control character")
    return barcode_key(value)


def make_item(barcode: Any, sku: Any, pack_size: Any = 1, description: Any = "") -> CatalogItem:
    """Check one catalog entry; ValueError (TypeError for a value of the wrong type) says what is wrong."""
    if not isinstance(barcode, str):
        raise TypeError(f"barcode must be text, got {barcode!r}")
    key = normalise_barcode(barcode)
    if not isinstance(sku, str) or not sku.strip():
        raise ValueError(f"sku must be non-empty text, got {sku!r}")
    sku = sku.strip()
    if len(sku) > SKU_MAX_LEN or has_control(sku):
        raise ValueError(f"sku {sku[:40]!r} must be at most {SKU_MAX_LEN} printable characters")
    if sku.startswith(UNKNOWN_SKU_PREFIX):
        raise ValueError(f"sku {sku[:40]!r} starts with {UNKNOWN_SKU_PREFIX!r}, which is reserved for unknown barcodes")
    if pack_size is None or isinstance(pack_size, str) and not pack_size.strip():
        pack_size = 1
    elif isinstance(pack_size, str) and pack_size.strip().isascii() and pack_size.strip().isdigit():
        pack_size = int(pack_size.strip())
    if isinstance(pack_size, bool) or not isinstance(pack_size, int) or not 1 <= pack_size <= PACK_SIZE_MAX:
        raise ValueError(f"pack_size must be a whole number from 1 to {PACK_SIZE_MAX:,}, got {pack_size!r}")
    if description is None:
        description = ""
    if not isinstance(description, str):
        raise TypeError(f"description must be text, got {description!r}")
    return CatalogItem(key, sku, pack_size, description.strip()[:DESCRIPTION_MAX_LEN])


class Catalog:
    """An immutable barcode index. ``lookup`` finds the item a scan means, or None."""

    __slots__ = ("_items", "_spellings", "version")

    def __init__(self, items: Iterable[CatalogItem] = (), *, version: int | None = None) -> None:
        self._items: dict[str, CatalogItem] = {item.barcode: item for item in items}
        self._spellings: dict[str, tuple[str, ...]] | None = None  # loose_sku(sku) -> its SKUs, made when first asked
        self.version = version

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Any:
        return iter(self._items.values())

    def get(self, barcode: str) -> CatalogItem | None:
        """The item of one barcode in any GTIN form (or text), or None."""
        try:
            return self._items.get(normalise_barcode(barcode))
        except ValueError:
            return None

    def lookup(self, decoded: Decoded | None, text: str) -> CatalogItem | None:
        """By the decoded GTIN-14, then the decoder's catalog key (RCN, pallet contents), then the raw text."""
        if decoded is not None:
            for key in (decoded.gtin, decoded.catalog_key):
                if key and (item := self._items.get(key)) is not None:
                    return item
            if (item := self.get(decoded.data)) is not None:
                return item
        return self.get(text)

    def merged(self, over: Catalog) -> Catalog:
        """This catalog with ``over``'s items replacing any of the same barcode."""
        merged = Catalog(version=over.version if over.version is not None else self.version)
        merged._items = self._items | over._items
        return merged

    def spelling(self, sku: str) -> str | None:
        """The catalog's own spelling of a SKU keyed by hand in another (``sku-1``, full-width ``ＳＫＵ-1``, a
        zero-width space pasted in, for ``SKU-1``), or None when the catalog has ``sku`` as it is or none like it:
        taken as typed, such a SKU was booked as a SKU of its own beside the catalog's."""
        if self._spellings is None:
            spellings: dict[str, set[str]] = {}
            for item in self._items.values():
                spellings.setdefault(loose_sku(item.sku), set()).add(item.sku)
            self._spellings = {key: tuple(sorted(skus)) for key, skus in spellings.items()}
        found = self._spellings.get(loose_sku(sku), ())
        return None if not found or sku in found else found[0]


def loose_sku(sku: str) -> str:
    """A SKU as a person means it: compatibility forms folded (full-width letters), case ignored, and the
    invisible format characters (zero-width spaces and joiners, direction marks) dropped."""
    folded = unicodedata.normalize("NFKC", sku).casefold()
    return "".join(c for c in folded if unicodedata.category(c) != "Cf")


@dataclass(frozen=True, slots=True)
class CatalogLoad:
    """What reading one catalog source gave: the good items, and every row left out."""

    catalog: Catalog
    problems: tuple[CatalogProblem, ...]
    source: str

    def log_problems(self) -> None:
        if not self.problems:
            return
        shown = "; ".join(str(p) for p in self.problems[:PROBLEMS_LOGGED])
        more = f" (and {len(self.problems) - PROBLEMS_LOGGED:,} more)" if len(self.problems) > PROBLEMS_LOGGED else ""
        log.warning(
            "The catalog %s has %d bad row(s), left out; %d items kept: %s%s.",
            self.source, len(self.problems), len(self.catalog), shown, more,
        )  # fmt: skip


class _Builder:
    """Collects items and problems; a barcode twice with different content keeps the first."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.items: dict[str, tuple[int, CatalogItem]] = {}
        self.problems: list[CatalogProblem] = []

    def add(self, line: int, fields: Mapping[str, Any]) -> None:
        try:
            item = make_item(
                fields.get("barcode"), fields.get("sku"), fields.get("pack_size"), fields.get("description")
            )
        except (ValueError, TypeError) as err:
            self.problems.append(CatalogProblem(line, str(err), self.where))
            return
        seen = self.items.get(item.barcode)
        if seen is None:
            self.items[item.barcode] = (line, item)
        elif (seen[1].sku, seen[1].pack_size) != (item.sku, item.pack_size):
            self.problems.append(
                CatalogProblem(
                    line,
                    f"barcode {item.barcode} is already {seen[1].sku} × {seen[1].pack_size} on {self.where} {seen[0]}",
                    self.where,
                )
            )

    def result(self, source: str, version: int | None = None) -> CatalogLoad:
        catalog = Catalog((item for _, item in self.items.values()), version=version)
        return CatalogLoad(catalog, tuple(self.problems), source)


def parse_catalog_csv(text: str, source: str = "catalog") -> CatalogLoad:
    """CSV with a header naming ``barcode`` and ``sku`` (``pack_size``, ``description`` optional)."""
    lines = text.splitlines(keepends=True)
    if not lines or not lines[0].strip():
        raise CatalogError(f"the catalog {source} is empty; it needs a header row such as barcode,sku,pack_size")
    delimiter = max(",;\t|", key=lines[0].count)  # whichever the header uses most (a comma if none)
    physical = io.StringIO(text, newline="").readlines()  # the file's lines, as csv counts them
    reader = csv.reader(physical, delimiter=delimiter, strict=True)
    header = [h.strip().lower().replace(" ", "_") for h in next(reader)]
    missing = [name for name in ("barcode", "sku") if name not in header]
    if missing:
        raise CatalogError(
            f"the catalog {source} has no {' or '.join(missing)} column; its header is {', '.join(header)[:120]!r}"
        )
    columns = {name: header.index(name) for name in CSV_COLUMNS if name in header}
    builder = _Builder("line")
    start = 0  # the physical lines before the reader's first
    while True:
        line = start + reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            # A quote never closed (or closed before other text) makes one row of the lines after it: read them
            # again, from the line after the row's first, as rows of their own, so that one bad cell costs its
            # row only.
            builder.problems.append(CatalogProblem(line, _unreadable_row(err)))
            start = line
            reader = csv.reader(physical[start:], delimiter=delimiter, strict=True)
            continue
        if not any(field.strip() for field in row):
            continue
        again = _header_again(row)
        if again is not None:  # files joined (cat a.csv b.csv): the rows after it are in its columns
            columns = again
            continue
        cells = {name: row[i] if i < len(row) else None for name, i in columns.items()}
        # a text cell as the hub's CSV export guarded it (protocol.csvcells): '+PEN is the SKU +PEN
        builder.add(
            line, {name: uncell(v) if v is not None and name != "pack_size" else v for name, v in cells.items()}
        )
    return builder.result(source)


def _header_again(row: list[str]) -> dict[str, int] | None:
    """The columns a header row met after the first one names (its cells all column names, barcode and sku among
    them, none twice), or None for a row of data."""
    named = [cell.strip().lstrip("\ufeff").strip().lower().replace(" ", "_") for cell in row]
    cells = [name for name in named if name]
    if not set(cells) <= set(CSV_COLUMNS) or len(set(cells)) != len(cells) or not {"barcode", "sku"} <= set(cells):
        return None
    return {name: named.index(name) for name in CSV_COLUMNS if name in named}


def _unreadable_row(err: csv.Error) -> str:
    """Why a row cannot be read, in words: a quote left open to the end of the file, or closed before the field
    ends (the next quote, lines further on, closed it), is the same mistake."""
    if "unexpected end of data" in str(err) or "expected after" in str(err):
        return (
            "a double quote opens a field on this line and does not close it where the field ends; the row is left "
            "out and the lines after it are read as rows of their own (close the quote to keep it)"
        )
    return f"the row is not valid CSV ({err})"


def parse_catalog_json(data: Any, source: str = "catalog") -> CatalogLoad:
    """``{"version": n, "items": [...]}`` (the hub's answer) or a bare list of items."""
    version = None
    if isinstance(data, Mapping):
        version = data.get("version")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise CatalogError(f"the catalog {source} has a version that is not a whole number: {version!r}")
        data = data.get("items")
    if not isinstance(data, list):
        raise CatalogError(f'the catalog {source} must be a list of items or an object with an "items" list')
    builder = _Builder("item")
    for number, entry in enumerate(data, start=1):
        if not isinstance(entry, Mapping):
            builder.problems.append(CatalogProblem(number, f"must be an object, got {type(entry).__name__}", "item"))
        else:
            builder.add(number, entry)
    return builder.result(source, version)


def load_catalog_file(path: Path, charset: csvtext.Charset | None = None) -> CatalogLoad:
    """Read a ``.json`` file as JSON and anything else as CSV, as text in ``charset`` (``[catalog] encoding``),
    else by its byte-order mark (UTF-8, UTF-16 or UTF-32: Excel's "CSV UTF-8" and "Unicode Text"), else UTF-8
    (``protocol.csvtext.file_text``). A file that is not text in it is refused whole, naming its first bad byte."""
    try:
        if path.stat().st_size > FILE_MAX_BYTES:
            raise CatalogError(f"the catalog file {path} is larger than {FILE_MAX_BYTES >> 20} MiB")
        data = path.read_bytes()
        text = csvtext.file_text(data, charset, setting=ENCODING_SETTING)
    except FileNotFoundError:
        raise CatalogError(f"the catalog file {path} does not exist") from None
    except OSError as err:
        raise CatalogError(f"the catalog file {path} cannot be read ({err.strerror or err})") from err
    except csvtext.TextUnreadable as err:  # Excel's "CSV (Comma delimited)" writes the Windows code page
        if ENCODING_SETTING in err.reason:  # a byte-order mark that contradicts it: the reason says what to do
            then = ""
        elif charset is None:
            then = (
                '; save it as "CSV UTF-8" (Excel) or UTF-8, or set [catalog] encoding to the charset it is saved in'
                " (e.g. windows-1252)"
            )
        else:
            then = "; check that [catalog] encoding names the charset it is saved in"
        raise CatalogError(f"the catalog file {path} cannot be read: {err.reason}{then}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CatalogError(f"the catalog file {path} is not valid JSON ({err})") from err
        return parse_catalog_json(data, str(path))
    return parse_catalog_csv(text, str(path))


class ItemLookup(Protocol):
    """What the scan router needs of a catalog."""

    def lookup(self, decoded: Decoded | None, text: str) -> CatalogItem | None: ...


@dataclass(frozen=True, slots=True)
class BundlePage:
    """One page of the hub's bundle list as it answered it: its ETag ("" when it sent none), SKUs, next cursor."""

    etag: str
    skus: tuple[str, ...]
    after: str | None


@dataclass(frozen=True, slots=True)
class RefreshResult:
    status: str  # "updated", "not_modified", "file_reloaded", "unchanged"
    version: int | None
    items: int


class AgentCatalog(HubLoop):
    """The running agent's catalog: the store's file plus the hub's copy, kept fresh by one loop.

    The loop (docs/design.md): wait ``refresh_s`` (or ``refresh_soon()``),
    re-read the file if it changed and ask the hub for its catalog with
    ``If-None-Match``; on failure back off exponentially with jitter up to
    ``retry_max_s``, warn once, and say once when it works again. The current
    catalog stays in use meanwhile.
    """

    def __init__(
        self,
        *,
        file: Path | None = None,
        encoding: str | None = None,
        hub_url: str | None = None,
        token: str | None = None,
        cache: Path | None = None,
        refresh_s: float = REFRESH_S,
        retry_base_s: float = RETRY_BASE_S,
        retry_max_s: float = RETRY_MAX_S,
        timeout_s: float = TIMEOUT_S,
        answer_max_bytes: int = ANSWER_MAX_BYTES,
        agent_id: str | None = None,
        location: str | None = None,
        outbox: SyncedHubIds | None = None,
        new_outbox: tuple[Path, int] | None = None,
    ) -> None:
        self.file = file
        try:  # the charset the file is saved in (None: by its byte-order mark, else UTF-8)
            self.charset = None if encoding is None else csvtext.lookup(encoding, "", who="the agent")
        except csvtext.CharsetRefused as err:
            raise CatalogError(f"{ENCODING_SETTING} {str(err).strip()}") from None
        # The path and epoch of an outbox that had never synced when the agent started: the hub's record of this
        # credential is looked at once for movements it holds from another outbox (``_check_earlier_outboxes``).
        self._new_outbox = new_outbox
        self._outbox = outbox  # the hub's database id the agent last synced with: a refusal says when it changed
        self._hub_url = hub_url.rstrip("/") if hub_url else None
        self._agent_id = agent_id  # this agent: its credential's locations are checked against ``location``
        self._location = location
        self._unbound: frozenset[str] | None = None  # the credential's locations last said not to hold ``location``
        self.cache = cache
        self._url = hub_url.rstrip("/") + CATALOG_PATH if hub_url else None
        self._bundles_url = hub_url.rstrip("/") + BUNDLES_PATH if hub_url else None
        self._bundles: frozenset[str] | None = None  # the hub's bundle SKUs; None: never heard
        self._bundle_pages: dict[str, BundlePage] = {}  # by cursor ("" the first): as the hub last answered it
        self._locations: frozenset[str] | None = None  # the hub's locations; None: never heard
        self._agents_url = hub_url.rstrip("/") + AGENTS_PATH if hub_url else None
        self._token = token
        self.refresh_s = refresh_s
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.timeout_s = timeout_s
        self.answer_max_bytes = answer_max_bytes  # a longer answer is a failed refresh (agent.hub_loop)
        self._local = Catalog()
        self._hub = Catalog()
        self._merged = Catalog()
        self._file_stamp: tuple[int, int] | None = None
        self._etag: str | None = None
        HubLoop.__init__(self)
        self._kick = asyncio.Event()
        self._streak_said = False  # a failure of the streak was logged above DEBUG
        self._streak = Streak(Backoff(retry_base_s, retry_max_s, jitter=EQUAL_JITTER))
        self._changed = asyncio.Condition()
        self.last_error: str | None = None

    # --- lookups -----------------------------------------------------------
    def lookup(self, decoded: Decoded | None, text: str) -> CatalogItem | None:
        return self._merged.lookup(decoded, text)

    @property
    def catalog(self) -> Catalog:
        return self._merged

    def spelling(self, sku: str) -> str | None:
        """``Catalog.spelling`` of the merged catalog."""
        return self._merged.spelling(sku)

    @property
    def hub_version(self) -> int | None:
        return self._hub.version

    def is_bundle(self, sku: str) -> bool | None:
        """Whether ``sku`` is a bundle at the hub, as last heard (None: the hub's list was never heard)."""
        return None if self._bundles is None else sku in self._bundles

    def known_locations(self) -> frozenset[str] | None:
        """The locations the hub's agent credentials are bound to, as last heard (None: never heard)."""
        return self._locations

    @property
    def locations_cache(self) -> Path | None:
        """Where the hub's locations are kept between runs: ``<cache>.locations.json`` beside the catalog's."""
        return None if self.cache is None else self.cache.with_name(f"{self.cache.stem}.locations.json")

    @property
    def bundle_cache(self) -> Path | None:
        """Where the hub's bundle SKUs are kept between runs: ``<cache>.bundles.json`` beside the catalog's."""
        return None if self.cache is None else self.cache.with_name(f"{self.cache.stem}.bundles.json")

    # --- lifecycle ---------------------------------------------------------
    async def load(self) -> None:
        """Read the file (``CatalogError`` if it cannot be read at all) and the hub cache (best effort)."""
        if self.file is not None:
            self._use_file(await asyncio.to_thread(load_catalog_file, self.file, self.charset))
        if self.cache is not None and self.cache.exists():
            try:
                cached = json.loads(await asyncio.to_thread(self.cache.read_text, encoding="utf-8"))
                loaded = parse_catalog_json(cached.get("catalog"), f"cache {self.cache}")
            except (OSError, ValueError, AttributeError, CatalogError) as err:
                log.warning("The cached hub catalog %s cannot be used (%s); waiting for the hub.", self.cache, err)
            else:
                self._hub = loaded.catalog
                self._etag = cached.get("etag") if isinstance(cached.get("etag"), str) else None
                self._merge()
        await self._load_bundles()
        await self._load_locations()
        log.info(
            "Catalog ready: %s items (file %s, hub version %s).",
            f"{len(self._merged):,}", self.file or "none", self._hub.version if self._hub.version is not None else "none",
        )  # fmt: skip

    async def _load_locations(self) -> None:
        cache = self.locations_cache
        if cache is None or not cache.exists():
            return
        try:
            found = json.loads(await asyncio.to_thread(cache.read_text, encoding="utf-8"))["locations"]
            if not isinstance(found, list) or not all(isinstance(loc, str) for loc in found):
                raise ValueError("locations is not a list of location codes")
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("The cached location list %s cannot be used (%s); waiting for the hub.", cache, err)
        else:
            self._locations = frozenset(found)

    async def _load_bundles(self) -> None:
        cache = self.bundle_cache
        if cache is None or not cache.exists():
            return
        try:
            cached = json.loads(await asyncio.to_thread(cache.read_text, encoding="utf-8"))
            skus = cached["bundles"]
            if not isinstance(skus, list) or not all(isinstance(sku, str) for sku in skus):
                raise ValueError("bundles is not a list of SKUs")
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("The cached bundle list %s cannot be used (%s); waiting for the hub.", cache, err)
        else:
            self._bundles = frozenset(skus)
            if cached.get("url") == self._bundles_url:  # another hub's tags say nothing of this one's pages
                self._bundle_pages = _pages_from_cache(cached.get("pages"), self._bundles)

    async def start(self) -> None:
        """``load()``, then keep the catalog fresh in the background. Returns at once after loading."""
        self._check_open()
        if self._task is not None:
            return
        await self.load()
        if self._url is not None:
            self._http()
        if self._url is not None or self.file is not None:
            self._launch(self._run(), "shelfsync-catalog")

    # stop(): lookups keep working; refreshing again raises.

    def _check_open(self) -> None:
        if self._stopped:
            raise CatalogError("the catalog was stopped; it is not refreshed any more")

    def refresh_soon(self) -> None:
        """Wake the loop now (a config reload, a test)."""
        self._kick.set()

    async def wait_for(self, predicate: Callable[[], bool], *, timeout_s: float) -> None:
        """Wait until ``predicate()`` holds after some refresh attempt of the loop (bounded)."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(predicate)

    def update_credentials(self, token: str, hub_url: str | None = None) -> None:
        self._token = token
        if hub_url is not None:
            self._hub_url = hub_url.rstrip("/")
            self._url = hub_url.rstrip("/") + CATALOG_PATH
            self._bundles_url = hub_url.rstrip("/") + BUNDLES_PATH
            self._agents_url = hub_url.rstrip("/") + AGENTS_PATH
            self._bundle_pages.clear()
        self._kick.set()

    # --- one refresh ---------------------------------------------------------
    async def refresh(self) -> RefreshResult:
        """Re-read the file if it changed, then ask the hub. Raises CatalogError when either fails."""
        self._check_open()
        status, problems, level = "unchanged", [], logging.DEBUG
        if self.file is not None and self._stamp(self.file) != self._file_stamp:
            try:  # a broken file keeps the items read before; the hub is still asked
                self._use_file(await asyncio.to_thread(load_catalog_file, self.file, self.charset))
                status = "file_reloaded"
            except CatalogError as err:
                problems.append(str(err))
                level = max(level, err.level)
        if self._url is not None:
            try:
                status = await self._fetch()
                await self._fetch_bundles()
                await self._fetch_locations()
            except TurnFailed as err:
                problems.append(str(err))
                level = max(level, err.level)
        if problems:
            failed = CatalogError("; ".join(problems))
            failed.level = level
            raise failed
        return RefreshResult(status, self._hub.version, len(self._merged))

    async def _fetch(self) -> str:
        session = self._http()
        assert self._url is not None
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if self._etag:
            headers["If-None-Match"] = self._etag
        try:
            async with session.get(self._url, headers=headers, allow_redirects=FOLLOW_REDIRECTS) as resp:
                if resp.status == 304:
                    return "not_modified"
                if 300 <= resp.status < 400:
                    raise TurnFailed(redirected(self._url, resp.status, resp.headers.get("Location")))
                body = await read_answer(resp, self.answer_max_bytes, "catalog")
                kind = resp.headers.get("Content-Type", "")
                if (foreign := not_the_hubs(self._url, resp.status, kind, body, "application/json")) is not None:
                    raise TurnFailed(foreign)
                unavailable(self._url, resp.status, body)
                if resp.status in (401, 403):
                    raise TurnFailed(await self._refused(self._url, resp, body))
                if resp.status != 200:
                    raise TurnFailed(f"the hub at {self._url} answered (HTTP {resp.status}: {error_message(body)})")
                etag = resp.headers.get("ETag")
        except AnswerTooLarge as err:
            raise TurnFailed(str(err)) from err
        except TimeoutError:
            raise TurnFailed(f"the hub at {self._url} did not answer within {self.timeout_s:g} s") from None
        except aiohttp.ClientError as err:
            wrong = await wrong_address(self._hub_url, err) if self._hub_url else None
            raise TurnFailed(wrong or f"the catalog could not be fetched from {self._url} ({broken(err)})") from err
        try:
            data = json.loads(body)
        except ValueError as err:
            raise TurnFailed(f"the hub's catalog could not be read ({err})") from err
        if (foreign := not_a_hubs_json(self._url, data, CATALOG_FIELDS)) is not None:
            raise TurnFailed(foreign, kind=INTERCEPTED)
        try:
            loaded = parse_catalog_json(data, f"from the hub at {self._url}")
        except CatalogError as err:
            raise TurnFailed(f"the hub's catalog could not be read ({err})") from err
        loaded.log_problems()
        self._hub, self._etag = loaded.catalog, etag
        self._merge()
        if self.cache is not None:
            await asyncio.to_thread(_write_atomically, self.cache, {"etag": etag, "catalog": data})
        log.info("The hub's catalog version %s is in use: %s items.", loaded.catalog.version, f"{len(self._merged):,}")
        return "updated"

    async def _refused(self, url: str, resp: aiohttp.ClientResponse, body: bytes) -> str:
        """What a 401/403 from the hub at ``url`` means, said as the sync says it (``agent.huberrors.refusal``): the
        hub serving another database than the one this agent last synced with (the outbox's), a token of another
        agent's, or refused credentials."""
        if self._hub_url is None or self._agent_id is None:  # a catalog alone, not an agent's: no id to compare
            return f"the hub at {url} refused this agent's credentials (HTTP {resp.status}: {error_message(body)})"
        hub_id = hub_id_of(resp.headers.get(HUB_ID_HEADER))
        refused, _ = await refusal(
            self._outbox, sync_url(self._hub_url), url, resp.status, body, self._agent_id, hub_id
        )
        return refused

    async def _fetch_bundles(self) -> None:
        """Read every page of the hub's bundles; keep their SKUs (and write them to the cache when they changed).

        A hub from before bundles answers 404: it has none, and refuses no count for being one."""
        skus: set[str] = set()
        cursor: str | None = None
        read: dict[str, BundlePage] = {}
        for _ in range(BUNDLES_PAGES_MAX):
            page = await self._bundles_page(cursor)
            if page is None:
                break
            read[cursor or ""] = page
            skus.update(page.skus)
            cursor = page.after
            if cursor is None:
                break
        pages_changed = read != self._bundle_pages
        self._bundle_pages = read  # the pages of this list only: a cursor no longer reached is forgotten
        found = frozenset(skus)
        if found == self._bundles and not pages_changed:
            return
        bundles_changed, self._bundles = found != self._bundles, found
        if (cache := self.bundle_cache) is not None:  # the pages' ETags with the SKUs they describe, in one write
            pages = [
                {"cursor": cursor, "etag": page.etag, "skus": list(page.skus), "after": page.after}
                for cursor, page in read.items()
            ]
            cached = {"bundles": sorted(found), "url": self._bundles_url, "pages": pages}
            await asyncio.to_thread(_write_atomically, cache, cached)
        if bundles_changed:
            log.info("The hub has %s bundle SKU(s); a count refuses them.", f"{len(found):,}")

    async def _fetch_locations(self) -> None:
        """Learn the hub's locations from its credentials (``GET /v1/agents``). Best effort: a hub that refuses or
        fails this keeps the list last heard (or none), and the catalog's refresh is not failed for it."""
        session, url = self._http(), self._agents_url
        assert url is not None
        headers = {"Accept": "application/json"} | ({"Authorization": f"Bearer {self._token}"} if self._token else {})
        try:
            async with session.get(url, headers=headers, allow_redirects=False) as resp:
                body = await read_answer(resp, self.answer_max_bytes, "agent list")
                status = resp.status
            data = json.loads(body) if status == 200 else None
            rows = data.get("agents") if isinstance(data, dict) else None
            if not isinstance(rows, list):
                log.debug("The hub's locations were not learned (HTTP %s from %s).", status, url)
                return
            found = frozenset(
                loc
                for row in rows
                if isinstance(row, dict) and row.get("role") == "agent" and not row.get("revoked")
                for loc in (row.get("locations") or ())
                if isinstance(loc, str)
            )
        except (AnswerTooLarge, TimeoutError, aiohttp.ClientError, ValueError) as err:
            log.debug("The hub's locations were not learned from %s (%s).", url, err)
            return
        self._check_own_locations(rows)
        self._check_earlier_outboxes(rows)
        if not found or found == self._locations:
            return
        self._locations = found
        if (cache := self.locations_cache) is not None:
            await asyncio.to_thread(_write_atomically, cache, {"locations": sorted(found)})
        log.info("The hub knows %d location(s); a transfer out to another is refused.", len(found))

    def _check_earlier_outboxes(self, rows: list[Any]) -> None:
        """Say once, for an outbox that had never synced when the agent started, when the hub holds movements of
        this agent id from another outbox: one whose ``data_dir`` or ``outbox`` was changed in the configuration,
        or left on the PC this one replaces, may still hold movements nothing else will send."""
        new, self._new_outbox = self._new_outbox, None
        own = next((r for r in rows if isinstance(r, dict) and r.get("agent_id") == self._agent_id), None)
        if new is None or own is None or not isinstance(own.get("epochs"), list):
            return
        path, epoch = new
        earlier = [
            f"epoch {e['epoch']} up to seq {e['hwm']:,}"
            for e in own["epochs"]
            if isinstance(e, dict) and isinstance(e.get("epoch"), int) and e["epoch"] != epoch
            and isinstance(e.get("hwm"), int) and e["hwm"] > 0
        ]  # fmt: skip
        if not earlier:
            return
        log.warning(
            "This agent's outbox %s is new, and the hub holds movements of agent %s from another outbox (%s):"
            " if [agent] data_dir or outbox was changed, or this PC replaces another, that outbox may still hold"
            " movements the hub has not received, and nothing sends them. Find it (outbox.sqlite3 in the old data"
            " folder) and send it with `shelfsync-agent outbox send FILE`; the hub counts each movement once.",
            path, self._agent_id, "; ".join(earlier),
        )  # fmt: skip

    def _check_own_locations(self, rows: list[Any]) -> None:
        """Say once, loudly, when this agent's credential is not bound to the location its configuration names
        (moved to another store in the configuration only): the hub refuses every movement recorded there."""
        own = next((r for r in rows if isinstance(r, dict) and r.get("agent_id") == self._agent_id), None)
        if own is None or self._location is None or not isinstance(own.get("locations"), list):
            return
        bound = frozenset(loc for loc in own["locations"] if isinstance(loc, str))
        if self._location in bound:
            if self._unbound is not None:
                log.warning(
                    "The hub binds this agent's credential to %s now; the movements it refused before"
                    " (forbidden_location) stay set aside until `shelfsync-agent resend --code forbidden_location`"
                    " is run while the agent is stopped.",
                    self._location,
                )
            self._unbound = None
            return
        if bound == self._unbound:
            return
        self._unbound = bound
        log.error(
            "The hub binds this agent's credential (%s) to %s, not to %s as [agent] location says: every movement"
            " recorded at %s is refused by the hub (forbidden_location) and set aside; bind the credential to %s"
            " on the hub (`shelfsync-hub agent bind %s%s`), or set location back.",
            self._agent_id, ", ".join(sorted(bound)) or "no location", self._location, self._location, self._location,
            self._agent_id, "".join(f" --location {loc}" for loc in sorted({*bound, self._location})),
        )  # fmt: skip

    async def _bundles_page(self, cursor: str | None) -> BundlePage | None:
        """One page of ``GET /v1/bundles``: its SKUs and the next cursor (None: the last page). None on a 404.

        Asked with the ``If-None-Match`` of that page as last read, and kept on a 304: the list is asked with
        the catalog every ``refresh_s`` and rarely changes, so an unchanged page costs no transfer or parsing."""
        session, url = self._http(), self._bundles_url
        assert url is not None
        params = {"limit": str(BUNDLES_PAGE)} | ({"cursor": cursor} if cursor else {})
        headers = {"Accept": "application/json"} | ({"Authorization": f"Bearer {self._token}"} if self._token else {})
        known = self._bundle_pages.get(cursor or "")
        if known is not None and known.etag:
            headers["If-None-Match"] = known.etag
        try:
            async with session.get(url, params=params, headers=headers, allow_redirects=FOLLOW_REDIRECTS) as resp:
                if resp.status == 304 and known is not None and known.etag:
                    return known
                if 300 <= resp.status < 400:
                    raise TurnFailed(redirected(url, resp.status, resp.headers.get("Location")))
                body = await read_answer(resp, self.answer_max_bytes, "bundle list")
                # Before the 404: a portal's 404 page is not a hub without bundles (that would forget them).
                kind = resp.headers.get("Content-Type", "")
                if (foreign := not_the_hubs(url, resp.status, kind, body, "application/json")) is not None:
                    raise TurnFailed(foreign)
                unavailable(url, resp.status, body)
                if resp.status == 404:
                    return None
                if resp.status in (401, 403):
                    raise TurnFailed(await self._refused(url, resp, body))
                if resp.status != 200:
                    raise TurnFailed(
                        f"the hub at {url} answered HTTP {resp.status} for its bundles: {error_message(body)}"
                    )
                etag = resp.headers.get("ETag")
        except AnswerTooLarge as err:
            raise TurnFailed(str(err)) from err
        except TimeoutError:
            raise TurnFailed(f"the hub at {url} did not answer within {self.timeout_s:g} s") from None
        except aiohttp.ClientError as err:
            wrong = await wrong_address(self._hub_url, err) if self._hub_url else None
            raise TurnFailed(wrong or f"the bundles could not be fetched from {url} ({broken(err)})") from err
        try:
            data = json.loads(body)
        except ValueError as err:
            raise TurnFailed(f"the hub's bundle list could not be read ({err})") from err
        if (foreign := not_a_hubs_json(url, data, BUNDLES_FIELDS)) is not None:
            raise TurnFailed(foreign, kind=INTERCEPTED)
        try:
            entries, after = data["bundles"], data.get("next")
            skus = [entry["sku"] for entry in entries]
            if not all(isinstance(sku, str) for sku in skus) or not (after is None or isinstance(after, str)):
                raise ValueError("a SKU or the next cursor is not text")
        except (ValueError, KeyError, TypeError) as err:
            raise TurnFailed(f"the hub's bundle list could not be read ({err})") from err
        return BundlePage(etag or "", tuple(skus), after)

    def _use_file(self, loaded: CatalogLoad) -> None:
        assert self.file is not None
        loaded.log_problems()
        self._local = loaded.catalog
        self._file_stamp = self._stamp(self.file)
        self._merge()

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_size, st.st_mtime_ns)

    def _merge(self) -> None:
        self._merged = self._local.merged(self._hub)

    # --- the loop --------------------------------------------------------------
    async def _run(self) -> None:
        await run_turns(self._turn, wait=self._wait, failed=self._failed)

    async def _turn(self) -> float:
        try:
            await self.refresh()
        except CatalogError as err:
            raise TurnFailed(str(err), level=err.level) from err
        if ended := self._streak.succeeded():
            said, self._streak_said = self._streak_said, False  # a 503 alone was said once for the agent
            log.log(
                logging.INFO if said else logging.DEBUG, "The catalog refreshes again after %d failed attempts.", ended
            )
        self.last_error = None
        await self._attempted()
        return self.refresh_s

    async def _failed(self, failure: TurnFailed) -> float:
        news, loud = self._streak.failed(failure), failure.level > logging.DEBUG
        news = news or (loud and not self._streak_said)  # the first said after the hub's 503s (hub_unavailable)
        self._streak_said = self._streak_said or (news and loud)
        if news:
            log.log(
                failure.level, "Catalog refresh failed, the current catalog stays in use: %s", failure,
                exc_info=failure.cause,
            )  # fmt: skip
        else:
            log.debug("Catalog refresh failed again: %s", failure)
        self.last_error = failure.reason
        await self._attempted()
        return min(self.refresh_s, self._streak.delay_s())

    async def _attempted(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _wait(self, delay_s: float, after_failure: bool) -> None:
        """Until the next refresh is due or ``refresh_soon()``."""
        if delay_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), delay_s)
        self._kick.clear()


def unavailable(url: str, status: int, body: bytes) -> None:
    """A 503 from the hub (migrating its database, or otherwise unavailable) is a failed refresh said once for
    the agent (``hub_unavailable``); any other answer from it says the hub serves (``hub_answered``)."""
    if status != 503:
        hub_answered(url)
        return
    message = error_message(body)
    raise TurnFailed(f"the hub at {url} answered (HTTP 503: {message})", level=hub_unavailable(url, message))


def _pages_from_cache(raw: Any, skus: frozenset[str]) -> dict[str, BundlePage]:
    """The bundle list's pages as cached with their ETags, when they are whole: every entry well formed, the
    cursors a chain from the first page to the last, and their SKUs the cached list. Else none (every page is
    read again in full): a tag sent for a page that is not the one kept would keep a wrong list on a 304."""
    if not isinstance(raw, list):
        return {}
    pages: dict[str, BundlePage] = {}
    for entry in raw:
        if not isinstance(entry, dict):
            return {}
        cursor, etag, page_skus, after = (entry.get(k) for k in ("cursor", "etag", "skus", "after"))
        if not (isinstance(cursor, str) and isinstance(etag, str) and isinstance(page_skus, list)):
            return {}
        if not all(isinstance(sku, str) for sku in page_skus) or not (after is None or isinstance(after, str)):
            return {}
        pages[cursor] = BundlePage(etag, tuple(page_skus), after)
    next_cursor: str | None = ""
    reached: set[str] = set()
    seen: set[str] = set()
    while next_cursor is not None:
        page = pages.get(next_cursor)
        if page is None or next_cursor in reached:  # a page missing, or a loop: not the list as read
            return {}
        reached.add(next_cursor)
        seen.update(page.skus)
        next_cursor = page.after
    return pages if reached == set(pages) and seen == skus else {}


def _write_atomically(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

"""The agent's TOML configuration, read into frozen values. docs/agent.md lists every key.

Relative paths (``data_dir``, ``outbox``, ``token_file``) are relative to the
configuration file's directory. Unknown sections and keys are errors: a typo
must not silently fall back to a default. Where the file is, and the
``SHELFSYNC_AGENT_*`` variables that win over it: ``agent.config_sources``.
"""

from __future__ import annotations

import dataclasses
import math
import ssl
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import hardware
from agent.catalog import ANSWER_MAX_BYTES as CATALOG_ANSWER_MAX_BYTES
from agent.catalog import REFRESH_S as CATALOG_REFRESH_S
from agent.catalog import RETRY_MAX_S as CATALOG_RETRY_MAX_S
from agent.catalog import TIMEOUT_S as CATALOG_TIMEOUT_S
from agent.config_sources import (
    ENVIRONMENT,
    ConfigSource,
    Overrides,
    config_source,
    default_data_dir,
    environment_overrides,
)
from agent.db import SYNCHRONOUS_MODES
from agent.errors import ConfigError, OutboxError
from agent.hub_loop import SYNC_ANSWER_MAX_BYTES
from agent.localapi.auth import LOGIN_TTL_S, AuthError, PinHash
from agent.outbox import check_identity
from agent.pos.config import PosConfigError, PosImportConfig
from agent.redact import redact_url
from agent.replicator import AUTH_RETRY_S, BATCH_SIZE, HEARTBEAT_S, TICK_S, TIMEOUT_S
from agent.scanning import COUNT_RESET_S, MODES, SAME_CODE_S, SAME_CODE_S_MAX
from agent.sessions.errors import InvalidSessionInput
from agent.sessions.model import check_staff
from protocol import MAX_BATCH_EVENTS, csvtext
from protocol.retry import RETRY_BASE_S, RETRY_MAX_S
from protocol.routes import HEALTH_PATH
from protocol.textfile import read_text, toml_hint
from protocol.values import path_problem, token_problem

OUTBOX_FILENAME = "outbox.sqlite3"
LOCALAPI_HOST = "127.0.0.1"
LOCALAPI_PORT = 8471
DISCOVERY_WAIT_S = 5.0
RETENTION_DAYS = 30.0
# Disk space the running agent keeps beside the outbox for scans a full disk refuses (agent.reserve): a MiB holds
# over 2,000 scans (measured on a full tmpfs through a scanner, the scan journal included: 2,247 in 1 MiB, 11,247 in 4),
# so 8 MiB hold a busy back office's scans of days.
RESERVE_MIB = 8
SIMULATE_RATE_PER_S = 10.0
API_VERSION_SEGMENT = "v1"  # the hub's routes (protocol.routes) sit under /v1 of its address: never part of hub_url
ANSWER_MIN_BYTES = 64 << 10  # the smallest answer_max_bytes: below it even a handshake's answer may not fit
SIMULATE_SKUS = ("SKU-0001", "SKU-0002", "SKU-0003", "SKU-0004", "SKU-0005")


@dataclass(frozen=True, slots=True)
class AgentSection:
    id: str
    location: str
    data_dir: Path
    outbox: Path
    token: str | None = field(default=None, repr=False)
    hub_url: str | None = None
    synchronous: str = "full"
    retention_days: float = RETENTION_DAYS
    reserve_mib: int = RESERVE_MIB  # the disk reserve for scans (agent.reserve); 0: none
    ca_file: Path | None = None  # PEM CA certificate(s) to check the hub's TLS certificate with; None: the system's


@dataclass(frozen=True, slots=True)
class ReplicatorSection:
    batch_size: int = BATCH_SIZE
    tick_s: float = TICK_S
    retry_base_s: float = RETRY_BASE_S
    retry_max_s: float = RETRY_MAX_S
    timeout_s: float = TIMEOUT_S
    auth_retry_s: float = AUTH_RETRY_S
    heartbeat_s: float = HEARTBEAT_S
    answer_max_bytes: int = SYNC_ANSWER_MAX_BYTES  # of a sync or report answer from the hub


@dataclass(frozen=True, slots=True)
class SimulateSection:
    count: int
    rate_per_s: float = SIMULATE_RATE_PER_S
    skus: tuple[str, ...] = SIMULATE_SKUS
    seed: int = 0
    batch: int = 1
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class ScannerSection:
    """One ``[[scanner]]`` table: a reader, the mode its scans are booked as, and its device settings."""

    id: str
    type: str  # "serial" or "wedge"
    mode: str  # a key of agent.scanning.MODES: receive, sale, return, damage, found, count
    device: hardware.SerialScannerConfig | hardware.WedgeScannerConfig
    location: str | None = None  # None: the agent's location
    rcn_region: str | None = None  # how to read in-store weighed/priced numbers ("gb", "de" …)
    count_reset_s: float = COUNT_RESET_S
    same_code_s: float = SAME_CODE_S  # the same code again within this long is a double read (0: off)

    @property
    def device_path(self) -> str:
        return self.device.port if isinstance(self.device, hardware.SerialScannerConfig) else self.device.device


@dataclass(frozen=True, slots=True)
class CatalogSection:
    file: Path | None = None  # the store's own catalog file (CSV or JSON); None: only the hub's
    encoding: str | None = None  # the charset the file is saved in; None: by its byte-order mark, else UTF-8
    cache_file: Path | None = None  # where the hub's catalog is kept; None: catalog-cache.json beside the outbox
    refresh_s: float = CATALOG_REFRESH_S
    retry_max_s: float = CATALOG_RETRY_MAX_S
    timeout_s: float = CATALOG_TIMEOUT_S
    answer_max_bytes: int = CATALOG_ANSWER_MAX_BYTES  # of the hub's catalog answer


@dataclass(frozen=True, slots=True)
class LocalApiSection:
    """``[localapi]``: the HTTP API and page for handhelds, and who may sign in to it."""

    enabled: bool = False
    host: str = LOCALAPI_HOST
    port: int = LOCALAPI_PORT
    staff: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # (staff id, PIN hash)
    login_ttl_h: float = LOGIN_TTL_S / 3600
    sessions_db: Path | None = None  # None: sessions.sqlite3 beside the outbox
    allowed_hosts: tuple[str, ...] = ()  # Host names answered besides the machine's own (a reverse proxy's)
    same_code_s: float = SAME_CODE_S  # the handheld page takes the same code again within this long for a double read


@dataclass(frozen=True, slots=True)
class DiscoverySection:
    """``[discovery]``: find the hub by zeroconf when hub_url is not set; announce the local API."""

    enabled: bool = False
    hub_id: str | None = None  # follow only this hub (None: adopt the first found)
    advertise: bool = True  # announce the local API as _shelfsync-agent._tcp (when [localapi] is enabled)
    interfaces: tuple[str, ...] = ()  # IPv4 addresses of the interfaces to use; empty: all
    wait_s: float = DISCOVERY_WAIT_S


@dataclass(frozen=True, slots=True)
class AgentConfig:
    path: Path
    agent: AgentSection
    replicator: ReplicatorSection
    simulate: SimulateSection | None  # None: no [simulate] section
    scanners: tuple[ScannerSection, ...] = ()
    catalog: CatalogSection = field(default_factory=CatalogSection)
    pos: PosImportConfig = field(default_factory=PosImportConfig)
    localapi: LocalApiSection = field(default_factory=LocalApiSection)
    discovery: DiscoverySection = field(default_factory=DiscoverySection)


# Every key each section accepts (docs/agent.md documents each; a test checks).
KNOWN_KEYS: dict[str, tuple[str, ...]] = {
    "agent": (
        "id",
        "location",
        "token",
        "token_file",
        "hub_url",
        "data_dir",
        "outbox",
        "synchronous",
        "retention_days",
        "reserve_mib",
        "ca_file",
    ),
    "replicator": (
        "batch_size",
        "tick_s",
        "retry_base_s",
        "retry_max_s",
        "timeout_s",
        "auth_retry_s",
        "heartbeat_s",
        "answer_max_bytes",
    ),
    "simulate": ("count", "rate_per_s", "skus", "seed", "batch", "enabled"),
    # [[scanner]]: these, plus the device settings of its type (docs/scanners.md; reader_id is `id` here)
    "scanner": ("id", "type", "mode", "location", "rcn_region", "count_reset_s", "same_code_s"),
    "catalog": ("file", "encoding", "cache_file", "refresh_s", "retry_max_s", "timeout_s", "answer_max_bytes"),
    "localapi": ("enabled", "host", "port", "staff", "login_ttl_h", "sessions_db", "allowed_hosts", "same_code_s"),
    "discovery": ("enabled", "hub_id", "advertise", "interfaces", "wait_s"),
}
# Sections read by their own module; their keys are documented with it.
OTHER_SECTIONS = {"pos": "docs/pos-import.md"}
SCANNER_TYPES: dict[str, type[hardware.SerialScannerConfig | hardware.WedgeScannerConfig]] = {
    "serial": hardware.SerialScannerConfig,
    "wedge": hardware.WedgeScannerConfig,
}


class _Section:
    """Typed access to one table of the file, with errors naming file, section and key."""

    def __init__(
        self,
        path: Path,
        name: str,
        table: Any,
        *,
        extra_keys: tuple[str, ...] = (),
        label: str = "",
        variables: Mapping[str, str] | None = None,
    ) -> None:
        self.path, self.name = path, name
        self.label = label or f"[{name}]"
        self.variables = variables or {}  # key → the environment variable that set it
        if not isinstance(table, Mapping):
            raise self.error(None, "must be a table")
        self.table = table
        known = KNOWN_KEYS[name] + extra_keys
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise ConfigError(f"{path}: unknown key {unknown[0]!r} in {self.label}; known keys are {', '.join(known)}")

    def error(self, key: str | None, message: str) -> ConfigError:
        if key is not None and key in self.variables:
            return ConfigError(f"{self.variables[key]} (the environment's {self.label} {key}) {message}")
        where = f"{self.label} {key}" if key else self.label
        return ConfigError(f"{self.path}: {where} {message}")

    def get(
        self, key: str, kind: type | tuple[type, ...], default: Any, check: Callable[[Any], str | None] | None = None
    ) -> Any:
        if key not in self.table:
            if default is _REQUIRED:
                variable = _VARIABLE_OF.get(key) if self.name == "agent" else None
                raise self.error(key, "is required" + (f" (or set {variable})" if variable else ""))
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            raise self.error(key, f"must be {_KIND_NAMES.get(kinds, kinds[0].__name__)}, got {value!r}")
        problem = check(value) if check else None
        if problem:
            raise self.error(key, problem)
        return value

    def path_value(self, key: str, default: Path) -> Path:
        value = self.get(key, str, None, lambda v: _non_empty(v) or path_problem(v))
        return default if value is None else (self.path.parent / Path(value).expanduser())


_REQUIRED = object()
_VARIABLE_OF = {key: name for name, key in ENVIRONMENT.items()}
_KIND_NAMES: dict[tuple[type, ...], str] = {
    (str,): "a string",
    (int,): "an integer",
    (int, float): "a number",
    (bool,): "true or false",
    (list,): "a list",
}


def _directory(s: _Section, key: str, path: Path, directory: Path) -> None:
    """Refuse ``path`` when ``directory`` (where it is made), or a folder above it, exists as a file."""
    for found in (directory, *directory.parents):
        try:
            if not (found.exists() or found.is_symlink()):
                continue
            is_dir = found.is_dir()
        except OSError:  # not ours to look into (permissions): opening the outbox says what is wrong
            return
        if not is_dir:
            why = "must be a directory" if found == path else f"{path} cannot be made"
            raise s.error(key, f"{why}; {found} is a file")
        return


def _non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _bearer(value: str) -> str | None:
    """A token goes into the Authorization header of every request: the credential alone, on one line."""
    if not value.strip():
        return "must not be empty"
    problem = token_problem(value)
    return None if problem is None else f"must hold the credential alone on one line; {problem}"


def _positive(value: float) -> str | None:
    return None if value > 0 and math.isfinite(value) else f"must be a positive number, got {value}"


def _same_code_s(value: float) -> str | None:
    if 0 <= value <= SAME_CODE_S_MAX and math.isfinite(value):
        return None
    return f"must be 0 (off) or up to {SAME_CODE_S_MAX:g} seconds, got {value}"


def _between(lo: int, hi: int) -> Callable[[int], str | None]:
    return lambda v: None if lo <= v <= hi else f"must be between {lo} and {hi}, got {v}"


def _hub_url(value: str) -> str | None:
    shown = redact_url(value)  # an error quotes the address, never a password in it
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- reading it raises ValueError for a port that is not a number in range
    except ValueError:
        return f"must be an http:// or https:// address like http://hub.example:8080, got {shown!r}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an http:// or https:// address like http://hub.example:8080, got {shown!r}"
    if parts.username is not None or parts.password is not None:
        return (
            f"must not carry a user name or password (got {shown!r}); the agent signs in to the hub with its"
            " token, so remove the user:password@ part"
        )
    if parts.query or parts.fragment:
        return f"must not carry a query or fragment, got {shown!r}"
    path = parts.path.rstrip("/")
    segments = path.split("/")
    api = next((i for i, part in enumerate(segments) if part == API_VERSION_SEGMENT), None)
    if api is None and path.endswith(HEALTH_PATH):
        api = len(segments) - 1
    if api is not None:  # the agent adds the routes itself: hub_url + /v1/sync
        address = redact_url(parts._replace(path="/".join(segments[:api])).geturl())
        return (
            f"ends in the hub's API path {'/' + '/'.join(segments[api:])!r} ({shown!r}); write the hub's address without"
            f" it: {address}"
        )
    return None


def load_config(path: str | Path | None = None, *, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read and check the configuration; ``ConfigError`` says what is wrong, naming file (or variable) and key.

    ``path``: the file; None: ``$SHELFSYNC_AGENT_CONFIG`` of ``environ``, else this system's default.
    ``environ``: where ``SHELFSYNC_AGENT_*`` variables are read (they win over the file); None: nowhere.
    Without a file at the default place (none was named), the variables alone configure the agent.
    """
    env: Mapping[str, str] = {} if environ is None else environ
    source = config_source(path, env)
    overrides = environment_overrides(env)
    path = source.path.absolute()
    doc = _read(path, source, overrides)
    unknown = sorted(set(doc) - set(KNOWN_KEYS) - set(OTHER_SECTIONS))
    if unknown:
        known = ", ".join(f"[{s}]" for s in (*KNOWN_KEYS, *OTHER_SECTIONS))
        raise ConfigError(f"{path}: unknown section [{unknown[0]}]; known sections are {known}")
    if "agent" not in doc and not overrides.values:
        raise ConfigError(f"{path}: the [agent] section is missing")
    agent_table = overrides.apply(doc.get("agent", {}))
    agent = _agent(_Section(path, "agent", agent_table, variables=overrides.variables))
    try:
        pos = PosImportConfig.from_mapping(_table(path, doc, "pos"), base_dir=path.parent)
    except PosConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    return AgentConfig(
        path=path,
        agent=agent,
        replicator=_replicator(_Section(path, "replicator", doc.get("replicator", {}))),
        simulate=_simulate(_Section(path, "simulate", doc["simulate"])) if "simulate" in doc else None,
        scanners=_scanners(path, doc.get("scanner", []), agent),
        catalog=_catalog(_Section(path, "catalog", doc.get("catalog", {}))),
        pos=pos,
        localapi=_localapi(_Section(path, "localapi", doc.get("localapi", {}))),
        discovery=_discovery(_Section(path, "discovery", doc.get("discovery", {})), agent),
    )


def _read(path: Path, source: ConfigSource, overrides: Overrides) -> dict[str, Any]:
    """The file's tables; none when no file is at the default place and the environment configures the agent."""
    try:
        return tomllib.loads(read_text(path))
    except FileNotFoundError:
        if source.named:
            raise ConfigError(f"the configuration file {path} does not exist") from None
        if not overrides.values:
            raise ConfigError(
                f"there is no configuration file at {path}, this system's default; write it (docs/agent.md),"
                " name another with --config FILE or SHELFSYNC_AGENT_CONFIG, or set SHELFSYNC_AGENT_* variables"
            ) from None
        return {}
    except OSError as err:
        raise ConfigError(f"the configuration file {path} cannot be read ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"the configuration file {path} is not UTF-8 text") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"the configuration file {path} is not valid TOML ({err}){toml_hint(err)}") from err


def _table(path: Path, doc: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    table = doc.get(name, {})
    if not isinstance(table, Mapping):
        raise ConfigError(f"{path}: [{name}] must be a table")
    return table


def _agent(s: _Section) -> AgentSection:
    agent_id = s.get("id", str, _REQUIRED, _non_empty)
    location = s.get("location", str, _REQUIRED, _non_empty)
    try:
        check_identity(agent_id, location)
    except OutboxError as err:
        raise s.error(None, f"has an invalid id or location: {err.__cause__ or err}") from err
    hub_url = s.get("hub_url", str, None, _hub_url)
    token = s.get("token", str, None, _bearer)
    if "token_file" in s.table:
        if token is not None:
            raise s.error("token_file", "cannot be given together with token; keep one")
        token = _read_token(s, s.path_value("token_file", Path()))
    if hub_url is not None and token is None:
        raise s.error(
            None,
            "needs token or token_file (or SHELFSYNC_AGENT_TOKEN or SHELFSYNC_AGENT_TOKEN_FILE) to talk to the hub at"
            " hub_url",
        )
    data_dir = s.path_value("data_dir", default_data_dir(s.path))
    _directory(s, "data_dir", data_dir, data_dir)
    outbox = s.path_value("outbox", data_dir / OUTBOX_FILENAME)
    _directory(s, "outbox", outbox, outbox.parent)
    if outbox.is_dir():  # outbox names the file; data_dir the folder
        raise s.error("outbox", f"must be a file, such as {outbox / OUTBOX_FILENAME}; {outbox} is a folder")
    return AgentSection(
        id=agent_id,
        location=location,
        data_dir=data_dir,
        outbox=outbox,
        token=token,
        hub_url=hub_url.rstrip("/") if hub_url else None,
        synchronous=s.get(
            "synchronous",
            str,
            "full",
            lambda v: None if v in SYNCHRONOUS_MODES else f"must be one of {', '.join(SYNCHRONOUS_MODES)}, got {v!r}",
        ),
        retention_days=float(s.get("retention_days", (int, float), RETENTION_DAYS, _positive)),
        reserve_mib=s.get("reserve_mib", int, RESERVE_MIB, _between(0, 1024)),
        ca_file=_ca_file(s) if "ca_file" in s.table else None,
    )


def _ca_file(s: _Section) -> Path:
    ca_file = s.path_value("ca_file", Path())
    try:
        ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError, ValueError) as err:
        why = getattr(err, "strerror", None) or "not PEM CA certificates"
        raise s.error(
            "ca_file", f"{ca_file} cannot be used ({why}); give the PEM file of the CA that signed the hub's certificate"
        ) from err
    return ca_file


def _read_token(s: _Section, token_path: Path) -> str:
    try:
        token = read_text(token_path).strip()
    except OSError as err:
        raise s.error("token_file", f"{token_path} cannot be read ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise s.error("token_file", f"{token_path} is not UTF-8 text") from err
    if not token:
        raise s.error("token_file", f"{token_path} is empty")
    problem = token_problem(token)
    if problem:  # the token itself is never shown
        raise s.error("token_file", f"{token_path} must hold the credential alone on one line; {problem}")
    return token


def _replicator(s: _Section) -> ReplicatorSection:
    def seconds(key: str, default: float) -> float:
        return float(s.get(key, (int, float), default, _positive))

    return ReplicatorSection(
        batch_size=s.get("batch_size", int, BATCH_SIZE, _between(1, MAX_BATCH_EVENTS)),
        tick_s=seconds("tick_s", TICK_S),
        retry_base_s=seconds("retry_base_s", RETRY_BASE_S),
        retry_max_s=seconds("retry_max_s", RETRY_MAX_S),
        timeout_s=seconds("timeout_s", TIMEOUT_S),
        auth_retry_s=seconds("auth_retry_s", AUTH_RETRY_S),
        heartbeat_s=seconds("heartbeat_s", HEARTBEAT_S),
        answer_max_bytes=s.get("answer_max_bytes", int, SYNC_ANSWER_MAX_BYTES, _between(ANSWER_MIN_BYTES, 1 << 40)),
    )


def _simulate(s: _Section) -> SimulateSection:
    skus = s.get("skus", list, list(SIMULATE_SKUS), lambda v: None if v else "must list at least one SKU")
    if not all(isinstance(sku, str) and sku.strip() for sku in skus):
        raise s.error("skus", "must be a list of non-empty strings")
    rate = s.get(
        "rate_per_s",
        (int, float),
        SIMULATE_RATE_PER_S,
        lambda v: None if v >= 0 else f"must be 0 (no pacing) or more, got {v}",
    )
    return SimulateSection(
        count=s.get("count", int, _REQUIRED, _between(0, 1 << 62)),
        rate_per_s=float(rate),
        skus=tuple(skus),
        seed=s.get("seed", int, 0),
        batch=s.get("batch", int, 1, _between(1, MAX_BATCH_EVENTS)),
        enabled=s.get("enabled", bool, True),
    )


def _scanners(path: Path, tables: Any, agent: AgentSection) -> tuple[ScannerSection, ...]:
    if not isinstance(tables, list):
        raise ConfigError(f"{path}: scanner must be written as [[scanner]] tables, one per reader")
    device_keys = tuple(
        sorted({f.name for cls in SCANNER_TYPES.values() for f in dataclasses.fields(cls)} - {"reader_id"})
    )
    out: list[ScannerSection] = []
    for number, table in enumerate(tables, start=1):
        s = _Section(path, "scanner", table, extra_keys=device_keys, label=f"[[scanner]] #{number}")
        reader_id = s.get("id", str, _REQUIRED, _non_empty)
        s.label = f"[[scanner]] {reader_id!r}"
        kind = s.get("type", str, _REQUIRED, lambda v: None if v in SCANNER_TYPES else "must be \"serial\" or \"wedge\"")
        mode = s.get("mode", str, _REQUIRED, lambda v: None if v in MODES else f"must be one of {', '.join(MODES)}")
        location = s.get("location", str, None, _non_empty)
        if location is not None:
            try:
                check_identity(agent.id, location)
            except OutboxError as err:
                raise s.error("location", f"is not a valid location code: {err.__cause__ or err}") from err
        try:
            rcn_region = hardware.check_rcn_region(s.get("rcn_region", str, None))
            settings = {k: v for k, v in s.table.items() if k in device_keys}
            device = SCANNER_TYPES[kind].from_mapping({"reader_id": reader_id, **settings})
        except hardware.ScannerConfigError as err:
            raise s.error(None, f"is wrong: {err}") from err
        section = ScannerSection(
            id=reader_id,
            type=kind,
            mode=mode,
            device=device,
            location=location,
            rcn_region=rcn_region,
            count_reset_s=float(s.get("count_reset_s", (int, float), COUNT_RESET_S, _positive)),
            same_code_s=float(s.get("same_code_s", (int, float), SAME_CODE_S, _same_code_s)),
        )
        for other in out:
            if other.id == section.id:
                raise s.error("id", f"{reader_id!r} is used by two [[scanner]] tables; each reader needs its own id")
            if other.device_path == section.device_path:
                raise s.error(None, f"uses {section.device_path}, which scanner {other.id!r} uses already")
        out.append(section)
    return tuple(out)


def _catalog(s: _Section) -> CatalogSection:
    def seconds(key: str, default: float) -> float:
        return float(s.get(key, (int, float), default, _positive))

    return CatalogSection(
        file=s.path_value("file", Path()) if "file" in s.table else None,
        encoding=s.get("encoding", str, None, _charset),
        cache_file=s.path_value("cache_file", Path()) if "cache_file" in s.table else None,
        refresh_s=seconds("refresh_s", CATALOG_REFRESH_S),
        retry_max_s=seconds("retry_max_s", CATALOG_RETRY_MAX_S),
        timeout_s=seconds("timeout_s", CATALOG_TIMEOUT_S),
        answer_max_bytes=s.get("answer_max_bytes", int, CATALOG_ANSWER_MAX_BYTES, _between(ANSWER_MIN_BYTES, 1 << 40)),
    )


def _charset(value: str) -> str | None:
    """Why the agent reads no file in the charset ``value`` names (``protocol.csvtext``), or None."""
    try:
        csvtext.lookup(value, "", who="the agent")
    except csvtext.CharsetRefused as err:
        return str(err).strip()
    return None


def _localapi(s: _Section) -> LocalApiSection:
    enabled = s.get("enabled", bool, False)
    staff = s.table.get("staff", {})
    if not isinstance(staff, Mapping):
        raise s.error("staff", 'must be a table of staff id = "PIN hash" (see docs/agent-api.md)')
    pairs = []
    for staff_id, pin_hash in staff.items():
        if not isinstance(pin_hash, str):
            raise s.error("staff", f"{staff_id!r} must be a PIN hash string, got {pin_hash!r}")
        try:
            check_staff(staff_id)
        except InvalidSessionInput as err:
            raise s.error("staff", str(err)) from err
        try:
            PinHash.parse(pin_hash)
        except AuthError as err:
            raise s.error("staff", f"{staff_id!r}: {err}") from err
        pairs.append((staff_id, pin_hash))
    if enabled and not pairs:
        raise s.error(None, "is enabled but lists no staff; add [localapi.staff] entries so someone can sign in")
    sessions_db = s.get("sessions_db", str, None, _non_empty)
    allowed_hosts = s.get("allowed_hosts", list, [])
    if not all(isinstance(h, str) and h.strip() and not any(c.isspace() for c in h.strip()) for h in allowed_hosts):
        raise s.error("allowed_hosts", 'must be a list of host names, e.g. ["backoffice.store.example"]')
    return LocalApiSection(
        enabled=enabled,
        host=s.get("host", str, LOCALAPI_HOST, _non_empty),
        port=s.get("port", int, LOCALAPI_PORT, _between(0, 65_535)),
        staff=tuple(pairs),
        login_ttl_h=float(s.get("login_ttl_h", (int, float), LOGIN_TTL_S / 3600, _positive)),
        sessions_db=None if sessions_db is None else s.path_value("sessions_db", Path()),
        allowed_hosts=tuple(h.strip() for h in allowed_hosts),
        same_code_s=float(s.get("same_code_s", (int, float), SAME_CODE_S, _same_code_s)),
    )


def _discovery(s: _Section, agent: AgentSection) -> DiscoverySection:
    enabled = s.get("enabled", bool, False)
    interfaces = s.get("interfaces", list, [])
    if not all(isinstance(i, str) and i.strip() for i in interfaces):
        raise s.error("interfaces", 'must be a list of IPv4 addresses, e.g. ["192.168.1.20"]')
    if enabled and agent.hub_url is None and agent.token is None:
        raise s.error(None, "needs the agent's token (token or token_file in [agent]) to talk to the hub it finds")
    return DiscoverySection(
        enabled=enabled,
        hub_id=s.get("hub_id", str, None, _non_empty),
        advertise=s.get("advertise", bool, True),
        interfaces=tuple(interfaces),
        wait_s=float(s.get("wait_s", (int, float), DISCOVERY_WAIT_S, lambda v: None if v >= 0 else "must be 0 or more")),
    )

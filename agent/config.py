"""The agent's TOML configuration, read into frozen values. docs/agent.md lists every key.

Relative paths (``data_dir``, ``outbox``, ``token_file``) are relative to the
configuration file's directory. Unknown sections and keys are errors: a typo
must not silently fall back to a default.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.db import SYNCHRONOUS_MODES
from agent.errors import ConfigError, OutboxError
from agent.outbox import check_identity
from agent.replicator import AUTH_RETRY_S, BATCH_SIZE, RETRY_BASE_S, RETRY_MAX_S, TICK_S, TIMEOUT_S
from protocol import MAX_BATCH_EVENTS

OUTBOX_FILENAME = "outbox.sqlite3"
RETENTION_DAYS = 30.0
SIMULATE_RATE_PER_S = 10.0
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


@dataclass(frozen=True, slots=True)
class ReplicatorSection:
    batch_size: int = BATCH_SIZE
    tick_s: float = TICK_S
    retry_base_s: float = RETRY_BASE_S
    retry_max_s: float = RETRY_MAX_S
    timeout_s: float = TIMEOUT_S
    auth_retry_s: float = AUTH_RETRY_S


@dataclass(frozen=True, slots=True)
class SimulateSection:
    count: int
    rate_per_s: float = SIMULATE_RATE_PER_S
    skus: tuple[str, ...] = SIMULATE_SKUS
    seed: int = 0
    batch: int = 1
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class AgentConfig:
    path: Path
    agent: AgentSection
    replicator: ReplicatorSection
    simulate: SimulateSection | None  # None: no [simulate] section


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
    ),
    "replicator": ("batch_size", "tick_s", "retry_base_s", "retry_max_s", "timeout_s", "auth_retry_s"),
    "simulate": ("count", "rate_per_s", "skus", "seed", "batch", "enabled"),
}


class _Section:
    """Typed access to one table of the file, with errors naming file, section and key."""

    def __init__(self, path: Path, name: str, table: Any) -> None:
        self.path, self.name = path, name
        if not isinstance(table, Mapping):
            raise self.error(None, "must be a table")
        self.table = table
        unknown = sorted(set(table) - set(KNOWN_KEYS[name]))
        if unknown:
            raise ConfigError(
                f"{path}: unknown key {unknown[0]!r} in [{name}]; known keys are {', '.join(KNOWN_KEYS[name])}"
            )

    def error(self, key: str | None, message: str) -> ConfigError:
        where = f"[{self.name}] {key}" if key else f"[{self.name}]"
        return ConfigError(f"{self.path}: {where} {message}")

    def get(
        self, key: str, kind: type | tuple[type, ...], default: Any, check: Callable[[Any], str | None] | None = None
    ) -> Any:
        if key not in self.table:
            if default is _REQUIRED:
                raise self.error(key, "is required")
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
        value = self.get(key, str, None, _non_empty)
        return default if value is None else (self.path.parent / Path(value).expanduser())


_REQUIRED = object()
_KIND_NAMES: dict[tuple[type, ...], str] = {
    (str,): "a string",
    (int,): "an integer",
    (int, float): "a number",
    (bool,): "true or false",
    (list,): "a list",
}


def _non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _positive(value: float) -> str | None:
    return None if value > 0 and math.isfinite(value) else f"must be a positive number, got {value}"


def _between(lo: int, hi: int) -> Callable[[int], str | None]:
    return lambda v: None if lo <= v <= hi else f"must be between {lo} and {hi}, got {v}"


def _hub_url(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an http:// or https:// address like http://hub.example:8080, got {value!r}"
    if parts.query or parts.fragment:
        return f"must not carry a query or fragment, got {value!r}"
    return None


def load_config(path: str | Path) -> AgentConfig:
    """Read and check the configuration file; ``ConfigError`` says what is wrong, naming file and key."""
    path = Path(path).absolute()
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"the configuration file {path} does not exist") from None
    except OSError as err:
        raise ConfigError(f"the configuration file {path} cannot be read ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"the configuration file {path} is not UTF-8 text") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"the configuration file {path} is not valid TOML ({err})") from err
    unknown = sorted(set(doc) - set(KNOWN_KEYS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown section [{unknown[0]}]; known sections are {', '.join(f'[{s}]' for s in KNOWN_KEYS)}"
        )
    if "agent" not in doc:
        raise ConfigError(f"{path}: the [agent] section is missing")
    return AgentConfig(
        path=path,
        agent=_agent(_Section(path, "agent", doc["agent"])),
        replicator=_replicator(_Section(path, "replicator", doc.get("replicator", {}))),
        simulate=_simulate(_Section(path, "simulate", doc["simulate"])) if "simulate" in doc else None,
    )


def _agent(s: _Section) -> AgentSection:
    agent_id = s.get("id", str, _REQUIRED, _non_empty)
    location = s.get("location", str, _REQUIRED, _non_empty)
    try:
        check_identity(agent_id, location)
    except OutboxError as err:
        raise s.error(None, f"has an invalid id or location: {err.__cause__ or err}") from err
    hub_url = s.get("hub_url", str, None, _hub_url)
    token = s.get("token", str, None, _non_empty)
    if "token_file" in s.table:
        if token is not None:
            raise s.error("token_file", "cannot be given together with token; keep one")
        token = _read_token(s, s.path_value("token_file", Path()))
    if hub_url is not None and token is None:
        raise s.error(None, "needs token or token_file to talk to the hub at hub_url")
    data_dir = s.path_value("data_dir", s.path.parent)
    return AgentSection(
        id=agent_id,
        location=location,
        data_dir=data_dir,
        outbox=s.path_value("outbox", data_dir / OUTBOX_FILENAME),
        token=token,
        hub_url=hub_url.rstrip("/") if hub_url else None,
        synchronous=s.get(
            "synchronous",
            str,
            "full",
            lambda v: None if v in SYNCHRONOUS_MODES else f"must be one of {', '.join(SYNCHRONOUS_MODES)}, got {v!r}",
        ),
        retention_days=float(s.get("retention_days", (int, float), RETENTION_DAYS, _positive)),
    )


def _read_token(s: _Section, token_path: Path) -> str:
    try:
        token = token_path.read_text(encoding="utf-8").strip()
    except OSError as err:
        raise s.error("token_file", f"{token_path} cannot be read ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise s.error("token_file", f"{token_path} is not UTF-8 text") from err
    if not token:
        raise s.error("token_file", f"{token_path} is empty")
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

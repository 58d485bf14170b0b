"""Shared parts of the fault suite: real hub and agent processes, and the final verdict.

Every fault test ends the same way (``verify``): the hub holds exactly the
events the outboxes hold (nothing lost, nothing it should not have), every
movement an agent acknowledged is among them, the hub's counts equal the
sums of those events exactly, no event is in the ledger twice, and
``PRAGMA integrity_check`` is ok on the hub database and on every outbox.

The short run is the default; ``SHELFSYNC_LONG_FAULTS=1`` selects the long
one (``scale(short, long)``).
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from tests.harness import net
from tests.harness.agent_process import AgentProcess, write_agent_config
from tests.harness.credentials import Credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import get_json

LONG = os.environ.get("SHELFSYNC_LONG_FAULTS", "") not in ("", "0")
DRAIN_TIMEOUT_S = 240.0 if LONG else 90.0
TEST_TIMEOUT_S = 1_800 if LONG else 240  # per test (pytest-timeout); the short run's tests take seconds
POLL_S = 0.1
LEDGER_PAGE_MAX = 10_000
RECORDED_RE = re.compile(r"^recorded ([0-9a-f-]{36}) (\S+) (\S+) (\S+) (-?\d+)$")

__all__ = [
    "LONG",
    "Simulation",
    "Store",
    "drained",
    "hub_events",
    "hub_mark",
    "hub_rejections",
    "integrity_ok",
    "is_pg",
    "outbox_events",
    "outbox_meta",
    "scale",
    "verify",
    "wait_until",
]


def scale(short: int, long: int) -> int:
    """``short`` in CI, ``long`` with SHELFSYNC_LONG_FAULTS=1."""
    return long if LONG else short


def wait_until(what: str, predicate: Callable[[], bool], timeout_s: float = DRAIN_TIMEOUT_S) -> None:
    """``tests.harness.net.wait_until`` bounded by the fault suite's drain time."""
    net.wait_until(what, predicate, timeout_s, POLL_S)


@dataclass(frozen=True, slots=True)
class Simulation:
    count: int
    rate_per_s: float
    seed: int
    skus: tuple[str, ...] = ("SKU-A", "SKU-B", "SKU-C", "SKU-D")
    batch: int = 1


@dataclass(slots=True)
class Store:
    """One store: a credential, a data directory with the agent's config and outbox, and what it printed."""

    name: str
    location: str
    cred: Credential
    data_dir: Path
    hub_url: str
    simulation: Simulation | None = None
    batch_size: int = 200
    timeout_s: float = 3.0
    printed: list[str] = field(default_factory=list)
    runs: list[AgentProcess] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.data_dir / "agent.toml"

    @property
    def outbox(self) -> Path:
        return self.data_dir / "outbox.sqlite3"

    def write_config(self) -> Path:
        sim = ""
        if self.simulation is not None:
            s = self.simulation
            skus = ", ".join(f'"{k}"' for k in s.skus)
            sim = (
                f"[simulate]\ncount = {s.count}\nrate_per_s = {s.rate_per_s}\nseed = {s.seed}\n"
                f"skus = [{skus}]\nbatch = {s.batch}\n"
            )
        return write_agent_config(
            self.config, cred=self.cred, location=self.location, hub_url=self.hub_url, data_dir=self.data_dir,
            batch_size=self.batch_size, timeout_s=self.timeout_s, auth_retry_s=1.0, extra=sim,
        )  # fmt: skip

    def start(self, *, fsize_limit_bytes: int | None = None) -> AgentProcess:
        if not self.config.exists():
            self.write_config()
        run = AgentProcess(self.config, self.data_dir / "agent.log", self.printed, fsize_limit_bytes=fsize_limit_bytes)
        self.runs.append(run)
        return run

    def kill_all(self) -> None:
        for run in self.runs:
            run.kill()

    def acked(self) -> set[str]:
        """Event ids the agent printed as recorded: durable, acknowledged to their producer."""
        return {m.group(1) for line in self.printed if (m := RECORDED_RE.match(line))}

    def simulation_complete(self) -> bool:
        return self.simulation is not None and f"simulation complete {self.simulation.count}" in self.printed

    def log(self) -> str:
        path = self.data_dir / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""


# --- reading the databases ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventRow:
    location: str
    sku: str
    kind: str
    qty: int
    seq: int


def _uuid(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def is_pg(db: Path | str) -> bool:
    return str(db).startswith(("postgresql://", "postgres://"))


def _pg_query(url: str, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """``sql`` with ``?`` markers on the PostgreSQL hub database ``url`` (a hub's tables read the same there)."""
    parts = sql.split("?")
    numbered = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))

    async def query() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(url, timeout=30)
        try:
            return [tuple(r) for r in await conn.fetch(numbered, *params)]
        finally:
            await conn.close()

    return asyncio.run(query())


def _query(db: Path | str, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
    if is_pg(db):
        return _pg_query(str(db), sql, tuple(params))
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute(sql, tuple(params)).fetchall()
    finally:
        conn.close()


def outbox_events(outbox: Path, *, set_aside: bool = False) -> dict[str, EventRow]:
    """The outbox's events by id: those not set aside (or, with ``set_aside``, only those)."""
    where = "" if set_aside else "NOT"
    rows = _query(
        outbox,
        f"SELECT event_id, location, sku, kind, qty, seq FROM events WHERE seq {where} IN (SELECT seq FROM rejected)",
    )
    return {_uuid(r[0]): EventRow(*r[1:]) for r in rows}


def outbox_meta(outbox: Path) -> dict[str, Any]:
    return dict(_query(outbox, "SELECT key, value FROM meta"))


def hub_events(hub_db: Path | str, locations: Iterable[str] | None = None) -> dict[str, EventRow]:
    """The hub's events by id, of ``locations`` only if given (an id is unique per credential, so two
    stores may hold the same one: keep to one store's locations to key by id)."""
    rows = _query(hub_db, "SELECT event_id, location, sku, kind, qty, seq FROM events")
    rows = [(bytes(r[0]), *r[1:]) for r in rows]
    wanted = None if locations is None else set(locations)
    return {_uuid(r[0]): EventRow(*r[1:]) for r in rows if wanted is None or r[1] in wanted}


def hub_mark(hub_db: Path | str, agent_id: str, epoch: int) -> int:
    """The hub's mark for ``agent_id``'s ``epoch`` (0: none yet)."""
    rows = _query(hub_db, "SELECT hwm FROM agent_hwm WHERE agent_id = ? AND epoch = ?", (agent_id, epoch))
    return int(rows[0][0]) if rows else 0


def hub_rejections(hub_db: Path) -> dict[str, str]:
    """Event id → rejection code of every refused attempt the hub logged."""
    return {_uuid(r[0]): r[1] for r in _query(hub_db, "SELECT event_id, code FROM rejections")}


def integrity_ok(db: Path) -> bool:
    return _query(db, "PRAGMA integrity_check")[0][0] == "ok"


def expected_on_hand(events: Iterable[EventRow]) -> dict[tuple[str, str], int]:
    """Sum of qty per (location, sku): on_hand when none of the events is a count."""
    total: Counter[tuple[str, str]] = Counter()
    for ev in events:
        assert ev.kind != "count", "expected_on_hand() is for delta streams only"
        total[(ev.location, ev.sku)] += ev.qty
    return dict(total)


def drained(stores: Iterable[Store], hub_db: Path | str) -> bool:
    """Every store's outbox is acknowledged to its end and the hub holds every event in it."""
    held = None
    for store in stores:
        if not store.outbox.exists():
            return False
        acked = outbox_meta(store.outbox).get("acked_seq", 0)
        waiting = _query(store.outbox, "SELECT count(*) FROM events WHERE seq > ? AND seq NOT IN (SELECT seq FROM rejected)", (acked,))
        if waiting[0][0]:
            return False
        held = held if held is not None else set(hub_events(hub_db))
        if not set(outbox_events(store.outbox)) <= held:
            return False
    return True


# --- the verdict -------------------------------------------------------------------------


def _api_counts(hub_url: str, token: str, location: str) -> dict[tuple[str, str], int]:
    body = get_json(f"{hub_url}/v1/locations/{location}/counts?limit=10000", token)
    return {(location, row["sku"]): row["on_hand"] for row in body["counts"]}


def _api_ledger_ids(hub_url: str, token: str, location: str) -> Counter[str]:
    """How often each event id is in the location's ledger (rejected attempts left out), page by page.

    Pages are newest first and ``before`` keeps rows strictly older, so each next page starts at the
    oldest time of the last one again; the rows of that time already counted are skipped.
    """
    ids: Counter[str] = Counter()
    before: int | None = None
    boundary: set[tuple[str, str]] = set()
    while True:
        query = f"location={location}&limit={LEDGER_PAGE_MAX}" + (f"&before={before}" if before else "")
        rows = get_json(f"{hub_url}/v1/ledger?{query}", token)["events"]
        fresh = [r for r in rows if (r["event_id"], r["effect"]) not in boundary]
        ids.update(r["event_id"] for r in fresh if r["effect"] != "rejected")
        if len(rows) < LEDGER_PAGE_MAX:
            return ids
        oldest = rows[-1]["occurred_at"]
        assert fresh and oldest + 1 != before, "more rows share one time than a ledger page holds"
        boundary = {(r["event_id"], r["effect"]) for r in rows if r["occurred_at"] == oldest}
        before = oldest + 1


def verify(
    hub: HubProcess,
    stores: list[Store],
    *,
    expected: dict[tuple[str, str], int] | None = None,
    extra_outboxes: Iterable[Path] = (),
) -> dict[str, EventRow]:
    """The verdict every fault test ends with; returns the hub's events.

    ``expected``: the on_hand per (location, sku) if it is not the plain sum
    of the outboxes' events (a stream with counts in it).
    """
    outboxes = {s.outbox for s in stores} | set(extra_outboxes)
    recorded: dict[str, EventRow] = {}
    for path in sorted(outboxes):
        recorded |= outbox_events(path)
    locations = sorted({s.location for s in stores})
    assert hub.db is not None
    held = hub_events(hub.db, locations)

    lost = set(recorded) - set(held)
    assert not lost, f"{len(lost)} recorded event(s) never reached the hub, e.g. {sorted(lost)[:3]}"
    unknown = set(held) - set(recorded)
    assert not unknown, f"the hub holds {len(unknown)} event(s) no outbox recorded, e.g. {sorted(unknown)[:3]}"
    for store in stores:
        missing = store.acked() - set(held)
        assert not missing, f"{store.name}: {len(missing)} acknowledged movement(s) are not at the hub"
    for key, row in recorded.items():
        assert held[key] == EventRow(row.location, row.sku, row.kind, row.qty, held[key].seq), key

    token = stores[0].cred.token
    want = expected if expected is not None else expected_on_hand(recorded.values())
    got: dict[tuple[str, str], int] = {}
    twice: list[str] = []
    for location in locations:
        got |= _api_counts(hub.url, token, location)
        twice += [k for k, n in _api_ledger_ids(hub.url, token, location).items() if n > 1]
    assert not twice, f"{len(twice)} event(s) are in the ledger more than once, e.g. {twice[:3]}"
    differ = {k: (got.get(k, 0), want.get(k, 0)) for k in set(got) | set(want) if got.get(k, 0) != want.get(k, 0)}
    assert not differ, f"on_hand differs (hub, expected) at {differ}"

    for path in [*([] if is_pg(hub.db) else [Path(hub.db)]), *sorted(outboxes)]:
        assert integrity_ok(path), f"PRAGMA integrity_check failed on {path}"
    assert "Traceback" not in hub.log_path.read_text(errors="replace"), f"the hub failed unexpectedly; see {hub.log_path}"
    for store in stores:
        assert "Traceback" not in store.log(), f"{store.name} failed unexpectedly; see its agent.log"
    return held


def kill_all(processes: Iterator[AgentProcess] | list[AgentProcess]) -> None:
    for p in processes:
        p.kill()

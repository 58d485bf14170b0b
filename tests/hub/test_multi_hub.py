"""Several real hub processes on one PostgreSQL (issue 6).

* Three ``python -m hub serve --db postgresql://…`` processes on 127.0.0.1 take
  the batches of six agents at once — three agents of one location, others
  of other locations, transfers between them — each batch to a random hub,
  many of them to two hubs at the same moment, some again later. The ledger
  then holds every event once, the resends are counted as duplicates exactly,
  the counts equal the pure resolution of the events, and the change feed is
  gapless and ends at the counts.
* A hub restored from an older backup (pg_dump / pg_restore of its schema):
  the real agent code (outbox and replicator) notices that the hub's mark went
  back, resends what was lost, and the hub ends with every event once.

The tests skip where no PostgreSQL is reachable, and fail in CI.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import aiohttp
import pytest

from agent import Movement, Outbox, Replicator
from hub.resolver import resolve
from hub.storage import AgentIdentity, HubStore, open_store
from protocol import (
    MSGPACK_CONTENT_TYPE,
    Kind,
    StockEvent,
    SyncRequest,
    decode_sync_response,
    encode_sync_request,
    new_event_id,
    pack_hlc,
)
from tests.harness.clock import RECENT_MS
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port
from tests.harness.pg import PG_URL, in_ci

START_TIMEOUT_S = 30.0
WAIT_S = 60.0
HUBS = 3
BATCHES = 12
BATCH_EVENTS = 40
SKUS = tuple(f"K{i}" for i in range(6))
BASE_MS = RECENT_MS  # inside the hub's clock window (tests/harness/clock.py)


@contextmanager
def running_hubs(db: str, n: int, tmp_path: Path) -> Iterator[list[HubProcess]]:
    """``n`` hub processes on ``db``, started side by side (``ready`` waits for them), each stopped cleanly after."""
    with ExitStack() as stack:
        hubs = []
        for i in range(n):
            hub = HubProcess(tmp_path / f"hub{i}.log", db=db, port=free_port(), start_timeout_s=START_TIMEOUT_S)
            stack.callback(stop_cleanly, hub)
            hub.spawn()
            hubs.append(hub)
        yield hubs


async def ready(hub: HubProcess) -> None:
    await asyncio.to_thread(hub.wait_ready)


def stop_cleanly(hub: HubProcess) -> None:
    if hub.proc is not None:
        assert hub.stop() == 0, hub.log


async def _agent(store: HubStore, *locations: str) -> tuple[AgentIdentity, str]:
    _, token = await store.add_agent(list(locations))
    who = await store.authenticate(token)
    assert who is not None
    return who, token


# --- several hubs -----------------------------------------------------------------------


class Sender:
    """One agent's events, made batch by batch with contention on purpose."""

    def __init__(self, who: AgentIdentity, token: str, rng: random.Random) -> None:
        self.who, self.token, self.rng = who, token, rng
        self.locations = sorted(who.locations)
        self.seq = 0
        self.events: list[StockEvent] = []

    def event(self, kind: Kind, qty: int, location: str, sku: str, ms: int, **extra: object) -> StockEvent:
        self.seq += 1
        at = pack_hlc(BASE_MS + ms, self.rng.randrange(3))
        ev = StockEvent(
            new_event_id(), self.who.agent_id, 1, self.seq, location, sku, kind, qty, at, at >> 16, "api:test",
            **extra,  # type: ignore[arg-type]
        )  # fmt: skip
        self.events.append(ev)
        return ev

    def batch(self, n: int) -> list[StockEvent]:
        out = []
        for i in range(BATCH_EVENTS):
            loc, sku = self.rng.choice(self.locations), self.rng.choice(SKUS)
            ms = n * 100 + i - (30 if self.rng.random() < 0.1 else 0)  # some arrive late, before a count
            roll = self.rng.random()
            if roll < 0.05:
                out.append(self.event(Kind.COUNT, self.rng.randint(0, 30), loc, sku, ms))
            elif roll < 0.55:
                out.append(self.event(Kind.SALE, -self.rng.randint(1, 3), loc, sku, ms))
            elif roll < 0.85:
                out.append(self.event(Kind.RECEIVE, self.rng.randint(1, 10), loc, sku, ms))
            elif roll < 0.92:
                out.append(self.event(Kind.RESERVE, 2, loc, sku, ms, ref=f"W{n % 3}"))
            else:
                out.append(self.event(Kind.TRANSFER_OUT, -1, loc, sku, ms, ref=f"T{n}", attrs={"to": "L9"}))
        return out


async def _post(session: aiohttp.ClientSession, hub: HubProcess, sender: Sender, batch: list[StockEvent]) -> int:
    body = encode_sync_request(SyncRequest(sender.who.agent_id, 1, tuple(batch)))
    headers = {"Authorization": f"Bearer {sender.token}", "Content-Type": MSGPACK_CONTENT_TYPE}
    async with session.post(f"{hub.url}/v1/sync", data=body, headers=headers) as resp:
        raw = await resp.read()
        assert resp.status == 200, raw
    answer = decode_sync_response(raw)
    assert answer.rejected == ()
    assert answer.hwm >= batch[-1].seq
    return answer.duplicates


async def test_several_hubs_on_one_database_store_every_event_once(pg_url: str, tmp_path: Path) -> None:
    rng = random.Random(6)
    async with open_store(pg_url) as store:
        senders = [Sender(*await _agent(store, "L1"), rng) for _ in range(3)]  # one location, three agents
        senders.append(Sender(*await _agent(store, "L2"), rng))
        senders.append(Sender(*await _agent(store, "L2", "L3"), rng))
        receiver = Sender(*await _agent(store, "L9"), rng)  # takes in every transfer the others ship to L9

    sends: Counter[bytes] = Counter()
    answered_duplicates = 0
    with running_hubs(pg_url, HUBS, tmp_path) as hubs:
        await asyncio.gather(*(ready(hub) for hub in hubs))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session:

            async def agent_run(sender: Sender) -> None:
                nonlocal answered_duplicates
                earlier: list[list[StockEvent]] = []
                for n in range(BATCHES):
                    batch = sender.batch(n)
                    targets = rng.sample(hubs, 2) if rng.random() < 0.4 else [rng.choice(hubs)]
                    if earlier and rng.random() < 0.2:  # an old batch again, to another hub, at the same time
                        old = rng.choice(earlier)
                        dup = await _post(session, rng.choice(hubs), sender, old)
                        answered_duplicates += dup  # after the await: the others add theirs meanwhile
                        sends.update(ev.event_id for ev in old)
                    dups = await asyncio.gather(*(_post(session, hub, sender, batch) for hub in targets))
                    answered_duplicates += sum(dups)
                    for _ in targets:
                        sends.update(ev.event_id for ev in batch)
                    earlier.append(batch)

            await asyncio.gather(*(agent_run(s) for s in senders))
            shipped = [ev for s in senders for ev in s.events if ev.kind is Kind.TRANSFER_OUT]
            receipts = [
                receiver.event(Kind.TRANSFER_IN, 1, "L9", ev.sku, 5_000 + i, ref=ev.ref)
                for i, ev in enumerate(shipped)
                if i % 4  # every fourth transfer is never received: it stays in transit
            ]
            for i in range(0, len(receipts), 10):
                part = receipts[i : i + 10]
                dups = await asyncio.gather(*(_post(session, hub, receiver, part) for hub in hubs))
                answered_duplicates += sum(dups)
                sends.update(ev.event_id for ev in part * len(hubs))

    events = [ev for s in [*senders, receiver] for ev in s.events]
    expected = resolve(events)
    async with open_store(pg_url) as store:
        ledger = await store.ledger(limit=100_000)
        assert sorted(r.event_id for r in ledger) == sorted(ev.event_id for ev in events)  # each once
        assert sum(r.duplicates for r in ledger) == sum(sends.values()) - len(events) == answered_duplicates
        assert {r.event_id: r.effect for r in ledger} == dict(expected.effects)
        assert {r.event_id: r.variance for r in ledger if r.kind == Kind.COUNT} == dict(expected.variances)
        counts = {
            (r.location, r.sku): (r.on_hand, r.reserved, r.available, r.in_transit)
            for r in await store.counts(limit=100_000)
        }
        assert counts == {key: (s.on_hand, s.reserved, s.available, s.in_transit) for key, s in expected.stock.items()}
        assert any(in_transit for *_, in_transit in counts.values())
        marks = {a.agent_id: a.hwm for a in await store.agent_status()}
        assert marks == {s.who.agent_id: {1: s.seq} for s in [*senders, receiver]}
        feed = await store.changes(0, 100_000)
        assert [c.change_id for c in feed] == list(range(1, await store.latest_change_id() + 1))
        last = {(c.location, c.sku): (c.on_hand, c.reserved, c.available, c.in_transit) for c in feed}
        # Every key's last change is its count, and every key not at zero was announced. A key back at zero
        # is in the feed or not depending on arrival order (did it pass through another value on the way?).
        assert last == {key: value for key, value in counts.items() if value != (0, 0, 0, 0) or key in last}


# --- a hub restored from an older backup ----------------------------------------------------


def _pg_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        reason = f"{name} (PostgreSQL's client tools) is not installed"
        if in_ci():
            pytest.fail(f"CI must run the PostgreSQL tests, but {reason}", pytrace=False)
        pytest.skip(reason)
    return path


def _schema_of(url: str) -> str:
    return url.rsplit("search_path=", 1)[1]


def _backup(schema: str, dump: Path) -> None:
    subprocess.run(
        [_pg_tool("pg_dump"), "--format=custom", f"--schema={schema}", f"--file={dump}", f"--dbname={PG_URL}"],
        check=True,
        timeout=60,
        capture_output=True,
    )


def _restore(schema: str, dump: Path) -> None:
    env = {**os.environ, "PGOPTIONS": "--client-min-messages=warning"}
    drop = [
        _pg_tool("psql"),
        "--quiet",
        "-v",
        "ON_ERROR_STOP=1",
        f"--dbname={PG_URL}",
        "-c",
        f'DROP SCHEMA "{schema}" CASCADE',
    ]
    subprocess.run(drop, check=True, timeout=60, capture_output=True, env=env)
    restore = [_pg_tool("pg_restore"), "--exit-on-error", "--single-transaction", f"--dbname={PG_URL}", str(dump)]
    subprocess.run(restore, check=True, timeout=60, capture_output=True, env=env)


async def _synced(replicator: Replicator, hub_events: int, store_url: str) -> None:
    """Wait until the hub holds ``hub_events`` events and the agent has nothing pending."""

    async def done() -> None:
        async with open_store(store_url) as store:
            while len(await store.ledger(limit=1000)) < hub_events:
                await asyncio.sleep(0.05)
        await replicator.wait_for(lambda s: s.sync_state == "ok" and s.backlog == 0)

    await asyncio.wait_for(done(), WAIT_S)


def _sale(sku: str = "A") -> Movement:
    return Movement("S1", sku, Kind.SALE, -1, "pos:test")


async def test_agents_resend_what_a_hub_restored_from_an_older_backup_lost(pg_url: str, tmp_path: Path) -> None:
    schema = _schema_of(pg_url)
    async with open_store(pg_url) as store:
        who, token = await _agent(store, "S1")
    fast = {"tick_s": 0.1, "retry_base_s": 0.01, "retry_max_s": 0.1, "timeout_s": 10.0}
    async with Outbox.open(tmp_path / "outbox.sqlite3", agent_id=who.agent_id, location="S1") as outbox:
        epoch = outbox.epoch
        with running_hubs(pg_url, 1, tmp_path) as (hub,):
            await ready(hub)
            async with Replicator(outbox, hub.url, token, **fast) as replicator:  # type: ignore[arg-type]
                await outbox.record([_sale() for _ in range(5)])
                await _synced(replicator, 5, pg_url)
                _backup(schema, tmp_path / "hub.dump")  # the backup holds seq 1..5
                await outbox.record([_sale("B") for _ in range(4)])
                await _synced(replicator, 9, pg_url)
                assert (await outbox.stats()).acked_seq == 9

                stop_cleanly(hub)  # the database is lost; the operator restores last night's backup
                _restore(schema, tmp_path / "hub.dump")
                async with open_store(pg_url) as store:
                    assert len(await store.ledger()) == 5
                hub.spawn()
                await ready(hub)

                await outbox.record([_sale("C")])  # the next batch tells the hub what the agent holds as acked
                await _synced(replicator, 10, pg_url)
                assert (await outbox.stats()).acked_seq == 10

    async with open_store(pg_url) as store:
        ledger = await store.ledger()
        assert sorted(r.seq for r in ledger) == list(range(1, 11))  # seq 6..9 resent, each stored once
        counts = {r.sku: r.on_hand for r in await store.counts()}
        assert counts == {"A": -5, "B": -4, "C": -1}
        (status,) = await store.agent_status(who.agent_id)
        assert status.hwm == {epoch: 10}
    assert "was the hub database restored from an older copy" in (tmp_path / "hub0.log").read_text()

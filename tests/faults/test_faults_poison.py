"""A poison event — one the hub refuses — is set aside and never blocks the events behind it.

Two kinds of poison travel among good movements through a real agent
process: a movement for a location the store's credential is not bound to
(``forbidden_location``), and a movement whose event id another store
already used for different content (``conflict``). A third kind never gets
as far as the hub: an outbox row the agent itself cannot read back (written
by a newer or broken program); it is set aside at the edge with the reason.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable

import msgpack

from agent import Movement, Outbox
from agent.outbox import chain_link
from protocol import Kind, event_id_hex, new_event_id, pack_hlc, wall_ms_now
from tests.faults.helpers import Store, drained, hub_rejections, outbox_events, scale, verify, wait_until
from tests.harness.hub_process import HubProcess


async def record(store: Store, movements: list[Movement]) -> list[str]:
    """Record into the store's outbox from this process (the agent process sends them)."""
    async with Outbox.open(store.outbox, agent_id=store.cred.agent_id, location=store.location) as outbox:
        ids: list[str] = []
        for m in movements:
            result = await outbox.record([m])
            ids += [event_id_hex(ev.event_id) for ev in result.events]
        return ids


def good(store: Store, n: int) -> list[Movement]:
    return [Movement(store.location, f"SKU-{i % 3}", Kind.RECEIVE, 1 + i % 4, "api:test") for i in range(n)]


def test_poison_events_are_set_aside_and_never_block_the_rest(
    hub: HubProcess, make_store: Callable[..., Store]
) -> None:
    n = scale(40, 400)
    first = make_store(hub, hub.url, name="store-1", location="S001")
    second = make_store(hub, hub.url, name="store-2", location="S002")
    hub.start()
    agents = [first.start(), second.start()]

    shared_id = new_event_id()
    asyncio.run(record(second, [Movement("S002", "SKU-X", Kind.RECEIVE, 9, "api:test", event_id=shared_id)]))
    wait_until("the second store's movement reaches the hub", lambda: drained([second], hub.db))

    forbidden = Movement("S002", "SKU-0", Kind.RECEIVE, 100, "api:test")  # not this store's location
    # The second store's id used again by the first: ids belong to the credential that sent them, so this is
    # the first store's own movement, never a conflict with (or a shadow of) the second store's.
    squatted = Movement("S001", "SKU-X", Kind.RECEIVE, 1, "api:test", event_id=shared_id)
    stream = good(first, n) + [forbidden] + good(first, n) + [squatted] + good(first, n)
    ids = asyncio.run(record(first, stream))
    wait_until("every good movement behind the poison reaches the hub", lambda: drained([first], hub.db))
    for agent in agents:
        assert agent.stop() == 0

    set_aside = outbox_events(first.outbox, set_aside=True)
    assert set(set_aside) == {ids[n]}
    with sqlite3.connect(first.outbox) as conn:
        codes = dict(conn.execute("SELECT e.event_id, r.code FROM rejected r JOIN events e USING (seq)").fetchall())
    assert sorted(codes.values()) == ["forbidden_location"]
    assert hub_rejections(hub.db)[ids[n]] == "forbidden_location"
    with sqlite3.connect(hub.db) as conn:
        both = conn.execute("SELECT agent_id, location, qty FROM events WHERE event_id = ? ORDER BY location", (shared_id,))
        assert both.fetchall() == [(first.cred.agent_id, "S001", 1), (second.cred.agent_id, "S002", 9)]
    held = verify(hub, [first])  # one store at a time: the verdict keys events by id, and the two share one
    assert len(held) == 3 * n + 1
    assert len(verify(hub, [second])) == 1


def test_an_outbox_row_the_agent_cannot_read_is_set_aside_and_the_rest_is_sent(
    hub: HubProcess, make_store: Callable[..., Store]
) -> None:
    n = scale(30, 300)
    store = make_store(hub, hub.url, location="S001")
    hub.start()
    before = asyncio.run(record(store, good(store, n)))
    with sqlite3.connect(store.outbox) as conn:  # a row a newer (or broken) program wrote: a kind this one does not know
        seq = conn.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()[0] + 1
        now = wall_ms_now()
        event_id = new_event_id()
        chain = chain_link(conn.execute("SELECT value FROM meta WHERE key = 'chain_last'").fetchone()[0], event_id)
        conn.execute(
            "INSERT INTO events (seq, event_id, location, sku, kind, qty, occurred_at, wall_ms, source, ref, reason,"
            " attrs, chain) VALUES (?, ?, 'S001', 'SKU-0', 'teleport', 1, ?, ?, 'api:test', NULL, NULL, ?, ?)",
            (seq, event_id, pack_hlc(now, 0), now, msgpack.packb({}), chain),
        )
        conn.execute("UPDATE meta SET value = ? WHERE key = 'chain_last'", (chain,))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (seq,))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'hlc_last'", (pack_hlc(now, 0),))
    after = asyncio.run(record(store, good(store, n)))
    agent = store.start()
    wait_until("the movements behind the unreadable row reach the hub", lambda: drained([store], hub.db), timeout_s=60)
    assert agent.stop() == 0

    with sqlite3.connect(store.outbox) as conn:
        rows = conn.execute("SELECT seq, code, reason FROM rejected").fetchall()
    assert [(r[0], r[1]) for r in rows] == [(seq, "unreadable")]
    assert "teleport" in rows[0][2]
    assert "cannot be read back" in store.log() and "Traceback" not in store.log()
    held = verify(hub, [store])
    assert set(before + after) == set(held)

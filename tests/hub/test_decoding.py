"""hub.decoding: big sync bodies decoded in real spawned worker processes.

Every test uses real processes and is bounded in time: a spawned pool costs ~0.3 s to start.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from hub import HubStore, decoding
from hub.app import DECODER_KEY
from hub.decoding import DECODE_INLINE_ALONE_MAX_BYTES, DECODE_INLINE_MAX_BYTES, PARENT_CHECK_S, SyncDecoder, pids
from hub.storage import open_store
from protocol import (
    MAX_BATCH_EVENTS,
    MSGPACK_CONTENT_TYPE,
    BadEvents,
    Kind,
    ProtocolError,
    StockEvent,
    SyncRequest,
    decode_sync_request,
    decode_sync_response,
    encode_sync_request,
    event_id_hex,
    event_to_wire,
)
from protocol.event import ATTR_STR_MAX_LEN
from tests.harness.inprocess import serve_hub
from tests.hub.event_factory import EventFactory

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
AGENT = "store-7"
EPOCH = 42

# One of every kind, each with a qty of the right sign (and a ref where a transfer needs one).
KIND_CYCLE: tuple[tuple[Kind, int, str | None], ...] = (
    (Kind.RECEIVE, 5, None),
    (Kind.SALE, -1, None),
    (Kind.ADJUST, -2, None),
    (Kind.COUNT, 7, None),
    (Kind.RETURN, 1, None),
    (Kind.RESERVE, 2, None),
    (Kind.RELEASE, -1, None),
    (Kind.TRANSFER_OUT, -3, "T-100"),
    (Kind.TRANSFER_IN, 3, "T-200"),
)


def mixed_events(n: int, agent_id: str = AGENT, epoch: int = EPOCH, first_seq: int = 1) -> list[StockEvent]:
    ev = EventFactory(agent_id, epoch, location="S1")
    ev.seq = first_seq - 1
    out = []
    for i in range(n):
        kind, qty, ref = KIND_CYCLE[i % len(KIND_CYCLE)]
        attrs = {"lot": f"L{i}", "n": i, "ok": True, "w": 1.5, "none": None} if i % 10 == 0 else None
        out.append(ev(kind, qty, at_ms=i, sku=f"SKU-{i % 13}", ref=ref, attrs=attrs))
    return out


def request_body(
    events: list[StockEvent], agent_id: str = AGENT, epoch: int = EPOCH, *, as_columns: bool = True
) -> bytes:
    req = SyncRequest(
        agent_id=agent_id, epoch=epoch, events=tuple(events), acked_seq=3, backlog=len(events) + 5,
        oldest_pending_ms=1_700_000_000_123,
    )  # fmt: skip
    return encode_sync_request(req, as_columns=as_columns)


def raw_body(wire_events: Any, **envelope: Any) -> bytes:
    msg = {"v": 1, "agent_id": AGENT, "epoch": EPOCH, "acked_seq": 0, "events": wire_events, **envelope}
    packed: bytes = msgpack.packb(msg, use_bin_type=True)
    return packed


def big_body(n: int = 9000, **kwargs: Any) -> bytes:
    """Over the inline limit beside a writer thread: 9,000 events as maps (~1.0 MB; as columns, the form agents
    send, they are ~575 KB, under it, as a catching-up agent's full batch is)."""
    envelope = {k: v for k, v in kwargs.items() if k != "first_seq"}
    body = request_body(mixed_events(n, **kwargs), **envelope, as_columns=False)
    assert len(body) > DECODE_INLINE_MAX_BYTES
    return body


def is_gone(pid: int) -> bool:
    """The process no longer runs: it does not exist, or it is a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    for line in status.splitlines():
        if line.startswith("State:"):
            return line.split()[1] in ("Z", "X")
    return False


async def survivors(pid_list: Iterable[int], within_s: float) -> list[int]:
    """Poll until every pid is gone or ``within_s`` passed; the ones still running."""
    deadline = time.monotonic() + within_s
    alive = list(pid_list)
    while alive:
        alive = [pid for pid in alive if not is_gone(pid)]
        if not alive or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    return alive


def kill_leftovers(pid_list: Iterable[int]) -> None:
    for pid in pid_list:
        if not is_gone(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def not_in_this_process(*_: Any, **__: Any) -> SyncRequest:
    raise AssertionError("a big body was decoded in the hub's own process, not in a worker")


@pytest.fixture
async def decoder() -> AsyncIterator[SyncDecoder]:
    """A one-worker decoder; closed afterwards, and its workers must then be gone."""
    d = SyncDecoder(workers=1)
    seen: set[int] = set()
    original_decode = d.decode

    async def decode(body: bytes) -> SyncRequest:
        try:
            return await original_decode(body)
        finally:
            seen.update(pids(d))

    d.decode = decode  # type: ignore[method-assign]
    try:
        yield d
    finally:
        seen.update(pids(d))
        d.close()
        left = await survivors(seen, 5.0)
        kill_leftovers(left)
        assert left == [], f"decoder workers {left} still run after close()"


# --- 1. the worker decodes exactly what the hub would ----------------------------


async def test_big_body_is_decoded_in_a_worker_to_the_same_request(
    decoder: SyncDecoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = mixed_events(9000)
    body = request_body(events, as_columns=False)
    assert len(body) > DECODE_INLINE_MAX_BYTES
    want = decode_sync_request(body)
    # The hub's own copy of the decoder function refuses: only a worker (its own import) can answer.
    monkeypatch.setattr(decoding, "decode_sync_request", not_in_this_process)

    got = await decoder.decode(body)

    workers = pids(decoder)
    assert len(workers) == 1 and os.getpid() not in workers
    assert got == want
    assert got.events == tuple(events)
    assert (got.agent_id, got.epoch, got.acked_seq, got.backlog, got.oldest_pending_ms) == (
        AGENT, EPOCH, 3, 9005, 1_700_000_000_123,
    )  # fmt: skip
    assert all(type(ev) is StockEvent for ev in got.events)
    assert all(type(ev.kind) is Kind for ev in got.events)
    assert {ev.kind for ev in got.events} == set(Kind)
    assert [ev.kind for ev in got.events[:9]] == [k for k, _, _ in KIND_CYCLE]
    assert all(ev.kind is Kind(ev.kind.value) for ev in got.events)  # the very enum members
    assert got.events[10].attrs == {"lot": "L10", "n": 10, "ok": True, "w": 1.5, "none": None}
    assert got.events[7].ref == "T-100" and got.events[0].ref is None
    assert [ev.seq for ev in got.events] == list(range(1, 9001))


def body_of_exactly(size: int) -> bytes:
    """A valid sync body of exactly ``size`` bytes: as many events as fit, then one attr padded to the byte.
    A body's length grows with the event count and with the pad's width, so both are found by bisection."""
    counts = range(1, MAX_BATCH_EVENTS + 1)  # the most events whose body, with an empty pad, still fits
    n = counts[bisect.bisect_right(counts, size, key=lambda k: len(raw_body(_padded_wire(k, "")))) - 1]
    width = bisect.bisect_left(range(ATTR_STR_MAX_LEN + 1), size, key=lambda w: len(raw_body(_padded_wire(n, "x" * w))))
    body = raw_body(_padded_wire(n, "x" * width))  # the narrowest pad that reaches the size
    assert len(body) == size, f"no body of exactly {size} bytes"
    return body


@functools.cache
def _wire_events() -> tuple[dict[str, Any], ...]:
    """The most events a batch may hold, in wire form, made once: a body takes the first n of them."""
    return tuple(event_to_wire(ev) for ev in mixed_events(MAX_BATCH_EVENTS))


def _padded_wire(n: int, pad: str) -> list[dict[str, Any]]:
    wire = list(_wire_events()[:n])
    wire[1] = {**wire[1], "attrs": {"pad": pad}}  # a copy: the cached event stays as it is
    return wire


async def test_small_bodies_are_decoded_in_place_without_a_worker(decoder: SyncDecoder) -> None:
    small = request_body(mixed_events(20))
    at_limit = body_of_exactly(DECODE_INLINE_MAX_BYTES)
    just_over = body_of_exactly(DECODE_INLINE_MAX_BYTES + 1)

    assert await decoder.decode(small) == decode_sync_request(small)
    assert await decoder.decode(at_limit) == decode_sync_request(at_limit)
    assert pids(decoder) == []

    assert await decoder.decode(just_over) == decode_sync_request(just_over)
    assert len(pids(decoder)) == 1


async def test_a_decoder_without_a_writer_thread_decodes_bigger_bodies_in_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = SyncDecoder(workers=1, inline_max_bytes=DECODE_INLINE_ALONE_MAX_BYTES)
    big = big_body(9000)  # ~575 KB: in place, no worker
    at_limit = body_of_exactly(DECODE_INLINE_ALONE_MAX_BYTES)
    just_over = body_of_exactly(DECODE_INLINE_ALONE_MAX_BYTES + 1)
    try:
        assert await d.decode(big) == decode_sync_request(big)
        assert await d.decode(at_limit) == decode_sync_request(at_limit)
        assert pids(d) == []

        want = decode_sync_request(just_over)
        monkeypatch.setattr(decoding, "decode_sync_request", not_in_this_process)  # over the limit: a worker's
        assert await d.decode(just_over) == want
        assert len(pids(d)) == 1
    finally:
        workers = pids(d)
        d.close()
        left = await survivors(workers, 5.0)
        kill_leftovers(left)
        assert left == []


async def test_no_workers_means_big_bodies_decode_without_processes() -> None:
    d = SyncDecoder(workers=0)
    body = big_body()
    try:
        assert await d.decode(body) == decode_sync_request(body)
        assert pids(d) == []
        assert d._pool is None
    finally:
        d.close()


# --- 2. errors found in a worker come back whole ----------------------------------


async def test_bad_events_in_a_big_body_come_back_as_the_same_bad_events(decoder: SyncDecoder) -> None:
    events = mixed_events(8000)
    wire = [event_to_wire(ev) for ev in events]
    wire[7] = wire[7] | {"kind": "sale", "qty": 3}  # a sale that adds units
    wire[500] = wire[500] | {"kind": "teleport"}
    wire[999] = wire[999] | {"id": b"short"}  # no readable event id
    body = raw_body(wire)
    assert len(body) > DECODE_INLINE_MAX_BYTES
    with pytest.raises(BadEvents) as inline:
        decode_sync_request(body)

    with pytest.raises(BadEvents) as caught:
        await decoder.decode(body)

    err = caught.value
    assert pids(decoder), "the body was not decoded in a worker"
    assert type(err) is BadEvents
    assert [b.index for b in err.bad] == [7, 500, 999]
    assert err.bad == inline.value.bad
    assert [b.reason for b in err.bad] == [b.reason for b in inline.value.bad]
    assert (err.agent_id, err.epoch) == (AGENT, EPOCH)
    assert str(err) == str(inline.value) and err.field == inline.value.field
    assert "events[7].qty" in err.bad[0].reason and "takes units away" in err.bad[0].reason
    assert "events[500].kind" in err.bad[1].reason and "unknown kind 'teleport'" in err.bad[1].reason
    assert (err.bad[0].event_id, err.bad[0].seq) == (events[7].event_id, 8)
    assert (err.bad[1].event_id, err.bad[1].seq) == (events[500].event_id, 501)
    assert (err.bad[2].event_id, err.bad[2].seq) == (None, 1000)


def _envelope_cases() -> dict[str, bytes]:
    good = big_body()
    wire = [event_to_wire(ev) for ev in mixed_events(8000)]
    swapped = wire[:]
    swapped[10], swapped[11] = swapped[11], swapped[10]
    return {
        "garbage": b"\xc1" * (DECODE_INLINE_MAX_BYTES + 1),
        "truncated": good[:-7],
        "trailing bytes": good + b"\x00",
        "not a map": msgpack.packb(wire, use_bin_type=True),
        "wire version 2": raw_body(wire, v=2),
        "unknown envelope field": raw_body(wire, shelf="top"),
        "epoch as text": raw_body(wire, epoch="42"),
        "events not a list": raw_body({"all": wire}),
        "seq out of order": raw_body(swapped),
    }


async def test_bad_envelopes_in_big_bodies_raise_the_same_protocol_error(decoder: SyncDecoder) -> None:
    for case, body in _envelope_cases().items():
        assert len(body) > DECODE_INLINE_MAX_BYTES, case
        with pytest.raises(ProtocolError) as inline:
            decode_sync_request(body)
        assert type(inline.value) is ProtocolError, case

        with pytest.raises(ProtocolError) as caught:
            await decoder.decode(body)

        err = caught.value
        assert type(err) is ProtocolError, case
        assert str(err) == str(inline.value), case
        assert (err.field, err.reason) == (inline.value.field, inline.value.reason), case
    assert len(pids(decoder)) == 1  # one worker answered them all


# --- 3. a killed worker ------------------------------------------------------------


async def test_killed_worker_falls_back_then_a_new_worker_starts(
    decoder: SyncDecoder, caplog: pytest.LogCaptureFixture
) -> None:
    bodies = [big_body(first_seq=1 + 9000 * i) for i in range(4)]
    assert await decoder.decode(bodies[0]) == decode_sync_request(bodies[0])
    [first_pid] = pids(decoder)

    os.kill(first_pid, signal.SIGKILL)
    assert await survivors([first_pid], 5.0) == []
    with caplog.at_level(logging.WARNING, logger="hub.decoding"):
        after_kill = await decoder.decode(bodies[1])

    assert after_kill == decode_sync_request(bodies[1])
    assert any("worker died" in r.getMessage() for r in caplog.records), "the fallback was not taken"
    assert pids(decoder) == []  # the broken pool is dropped, not reused

    later = await decoder.decode(bodies[2])
    assert later == decode_sync_request(bodies[2])
    [second_pid] = pids(decoder)
    assert second_pid != first_pid and not is_gone(second_pid)

    # The new worker is a working one: errors come back whole through it too.
    wire = [event_to_wire(ev) for ev in mixed_events(5000)]
    wire[1] = wire[1] | {"qty": 0}  # a sale of nothing
    with pytest.raises(BadEvents) as caught:
        await decoder.decode(raw_body(wire))
    assert [b.index for b in caught.value.bad] == [1]
    assert pids(decoder) == [second_pid]
    assert await decoder.decode(bodies[3]) == decode_sync_request(bodies[3])


async def test_worker_killed_while_a_body_waits_for_it_still_decodes(decoder: SyncDecoder) -> None:
    body = big_body()
    task = asyncio.create_task(decoder.decode(body))
    for _ in range(100):  # the worker is spawned as the body is submitted, ~0.3 s before it can take it
        await asyncio.sleep(0)
        if pids(decoder):
            break
    [pid] = pids(decoder)
    os.kill(pid, signal.SIGKILL)

    got = await asyncio.wait_for(task, 10)

    assert got == decode_sync_request(body)
    assert await survivors([pid], 5.0) == []


async def test_bad_events_after_a_killed_worker_are_still_refused(decoder: SyncDecoder) -> None:
    await decoder.decode(big_body())
    [pid] = pids(decoder)
    os.kill(pid, signal.SIGKILL)
    assert await survivors([pid], 5.0) == []
    wire = [event_to_wire(ev) for ev in mixed_events(5000)]
    wire[42] = wire[42] | {"kind": "teleport"}

    with pytest.raises(BadEvents) as caught:
        await decoder.decode(raw_body(wire))  # decoded in a thread

    assert [b.index for b in caught.value.bad] == [42]
    assert (caught.value.agent_id, caught.value.epoch) == (AGENT, EPOCH)


# --- 4. no worker outlives its hub ---------------------------------------------------

ORPHAN_SCRIPT = """
import asyncio, sys, time
from pathlib import Path
from hub.decoding import SyncDecoder, pids

DECODER = SyncDecoder(workers=2)  # kept alive (and never closed) while this process sleeps

async def main():
    body = Path(sys.argv[1]).read_bytes()
    a, b = await asyncio.gather(DECODER.decode(body), DECODER.decode(body))
    assert len(a.events) == len(b.events) == 9000
    print(*pids(DECODER), flush=True)

asyncio.run(main())
time.sleep(120)
"""


def _ppid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid line for {pid}")


async def test_workers_exit_when_the_hub_process_is_killed(tmp_path: Path) -> None:
    body_path = tmp_path / "body.msgpack"
    body_path.write_bytes(big_body())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ORPHAN_SCRIPT, str(body_path),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    workers: list[int] = []
    try:
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)  # type: ignore[union-attr]
        except TimeoutError:
            line = b""
        if not line:
            proc.kill()
            _, err = await proc.communicate()
            pytest.fail(f"the script printed no worker pids: {err.decode(errors='replace')[-2000:]}")
        workers = [int(p) for p in line.split()]
        assert len(workers) == 2 and proc.pid not in workers
        assert all(_ppid(pid) == proc.pid for pid in workers)
        # While the hub lives, its workers stay (the parent check passes more than once meanwhile).
        await asyncio.sleep(PARENT_CHECK_S * 1.5)
        assert [pid for pid in workers if is_gone(pid)] == []

        proc.kill()
        await proc.wait()
        left = await survivors(workers, PARENT_CHECK_S + 4.0)
        assert left == [], f"workers {left} outlived the killed hub"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        kill_leftovers(workers)


async def test_close_stops_every_worker_and_later_bodies_still_decode() -> None:
    d = SyncDecoder(workers=2)
    body = big_body()
    workers: list[int] = []
    try:
        results = await asyncio.gather(d.decode(body), d.decode(body))
        workers = pids(d)
        assert len(workers) == 2
        assert all(r == decode_sync_request(body) for r in results)

        d.close()

        assert pids(d) == []
        assert await survivors(workers, 5.0) == []
        assert await d.decode(body) == decode_sync_request(body)  # in a thread now
        assert pids(d) == []
        d.close()  # twice is fine
    finally:
        d.close()
        kill_leftovers(workers)


# --- 5. end to end over HTTP -----------------------------------------------------------


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": MSGPACK_CONTENT_TYPE}


async def test_big_sync_bodies_over_http_are_decoded_by_a_worker(
    store: HubStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(decoding, "default_workers", lambda: 1)  # a worker even on a one-core machine
    agent_id, token = await store.add_agent(["S001"])
    other_id, _ = await store.add_agent(["S002"])
    workers: list[int] = []
    async with serve_hub(store) as served:  # on the way out the app's cleanup closes its decoder
        app, client = served.app, served.client
        # Only a worker can decode: the hub's own copy of the decoder refuses (a fallback would answer 500).
        monkeypatch.setattr(decoding, "decode_sync_request", not_in_this_process)
        ev = EventFactory(agent_id, 1, location="S001", base_ms=time.time_ns() // 1_000_000)  # inside the clock window
        events = [
            ev(Kind.RECEIVE, 1 + i % 4, at_ms=i, sku=f"SKU-{i % 5}")
            if i % 3
            else ev(Kind.SALE, -1, at_ms=i, sku=f"SKU-{i % 5}")
            for i in range(9500)
        ]
        expected: dict[str, int] = {}
        for e in events:
            expected[e.sku] = expected.get(e.sku, 0) + e.qty
        # As maps (~1.0 MB): as columns, the form agents send, any batch is decoded in place beside the writer.
        body = encode_sync_request(SyncRequest(agent_id=agent_id, epoch=1, events=tuple(events)), as_columns=False)
        assert len(body) > DECODE_INLINE_MAX_BYTES

        resp = await client.post("/v1/sync", data=body, headers=_auth(token))
        assert resp.status == 200, await resp.text()
        answer = decode_sync_response(await resp.read())
        workers = pids(app[DECODER_KEY])
        assert len(workers) == 1

        assert (answer.agent_id, answer.epoch, answer.hwm) == (agent_id, 1, 9500)
        assert answer.rejected == () and answer.duplicates == 0
        assert {c.sku: c.on_hand for c in answer.counts if c.location == "S001"} == expected
        counts = await client.get("/v1/locations/S001/counts", headers=_auth(token))
        assert counts.status == 200
        assert {row["sku"]: row["on_hand"] for row in (await counts.json())["counts"]} == expected

        # A second batch with one bad event: 422 listing exactly that event, nothing applied.
        more = [ev(Kind.RECEIVE, 2, at_ms=9500 + i, sku="SKU-NEW") for i in range(8000)]
        wire = [event_to_wire(e) for e in more]
        wire[321] = wire[321] | {"kind": "sale", "qty": 4}
        bad_body = msgpack.packb({"v": 1, "agent_id": agent_id, "epoch": 1, "events": wire}, use_bin_type=True)
        assert len(bad_body) > DECODE_INLINE_MAX_BYTES

        resp = await client.post("/v1/sync", data=bad_body, headers=_auth(token))
        assert resp.status == 422, await resp.text()
        error = json.loads(await resp.read())  # problem details
        assert error["code"] == "invalid_events"
        assert error["rejected"] == [
            {
                "index": 321,
                "event_id": event_id_hex(more[321].event_id),
                "seq": 9822,
                "reason": error["rejected"][0]["reason"],
            }
        ]
        assert "events[321].qty" in error["rejected"][0]["reason"]
        counts = await client.get("/v1/locations/S001/counts", headers=_auth(token))
        assert {row["sku"]: row["on_hand"] for row in (await counts.json())["counts"]} == expected

        # Bad events of another agent sent with this credential: the agent id crossed back from the worker.
        other = [event_to_wire(e) for e in mixed_events(8000, agent_id=other_id, epoch=1)]
        other[5] = other[5] | {"kind": "teleport"}
        forged = msgpack.packb({"v": 1, "agent_id": other_id, "epoch": 1, "events": other}, use_bin_type=True)
        resp = await client.post("/v1/sync", data=forged, headers=_auth(token))
        assert resp.status == 403, await resp.text()

        assert pids(app[DECODER_KEY]) == workers  # the same worker served all three
    assert pids(app[DECODER_KEY]) == []
    left = await survivors(workers, 5.0)
    kill_leftovers(left)
    assert left == [], f"decoder workers {left} outlived the app"


async def test_a_postgresql_hub_decodes_a_full_batch_in_its_own_process(pg_url: str) -> None:
    """No writer thread holds the GIL there: handing the body to a worker would cost more than decoding it."""
    async with open_store(pg_url) as store:
        assert not store.WRITES_ON_A_THREAD
        agent_id, token = await store.add_agent(["S001"])
        async with serve_hub(store) as served:
            decoder = served.app[DECODER_KEY]
            assert decoder.inline_max_bytes == DECODE_INLINE_ALONE_MAX_BYTES
            ev = EventFactory(agent_id, 1, location="S001", base_ms=time.time_ns() // 1_000_000)
            events = [ev(Kind.RECEIVE, 1 + i % 3, at_ms=i, sku=f"SKU-{i % 7}") for i in range(9500)]
            body = encode_sync_request(
                SyncRequest(agent_id=agent_id, epoch=1, events=tuple(events)), as_columns=False
            )  # as maps (an older agent's form): over the SQLite hub's inline limit, not over PostgreSQL's
            assert DECODE_INLINE_MAX_BYTES < len(body) <= DECODE_INLINE_ALONE_MAX_BYTES

            resp = await served.client.post("/v1/sync", data=body, headers=_auth(token))
            assert resp.status == 200, await resp.text()
            answer = decode_sync_response(await resp.read())
            assert answer.hwm == 9500 and answer.rejected == ()
            assert sum(c.on_hand for c in answer.counts) == sum(e.qty for e in events)
            assert pids(decoder) == []  # decoded in place: no worker was started


async def test_a_sqlite_hub_keeps_big_bodies_off_its_writer_thread(store: HubStore) -> None:
    assert store.WRITES_ON_A_THREAD
    async with serve_hub(store) as served:
        assert served.app[DECODER_KEY].inline_max_bytes == DECODE_INLINE_MAX_BYTES


async def test_a_catching_up_agents_full_batch_is_decoded_in_place_beside_the_writer(decoder: SyncDecoder) -> None:
    """After an outage an agent sends the hub's largest batch, as columns (agent.replicator): its decoding is
    waited for by the writer wherever it runs, and in a worker it costs the pickles back besides."""
    ev = EventFactory("agent-0f3a9c1e5b7d4e2a", 1, location="STORE-0001")
    events = [
        ev(Kind.SALE if i % 4 else Kind.RECEIVE, -1 if i % 4 else 5, at_ms=i, sku=f"SKU-{i % 500:05d}")
        for i in range(MAX_BATCH_EVENTS)
    ]  # fmt: skip
    body = request_body(events, agent_id="agent-0f3a9c1e5b7d4e2a", epoch=1)

    assert len(body) <= DECODE_INLINE_MAX_BYTES
    assert await decoder.decode(body) == decode_sync_request(body)
    assert pids(decoder) == []

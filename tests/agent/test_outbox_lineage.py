"""The outbox's lineage chain and its fork to a new epoch (issue 12, point 1), on real SQLite files.

chain(seq) = blake2b(chain(seq - 1) || event_id, 16 bytes), 16 zero bytes before the first row.
The acknowledged mark moves to the hub's mark only when this file holds a row there with the hub's
digest; otherwise the file was restored, copied or rolled back and it forks: a new epoch based at
its own acknowledged mark, every row above it sent again.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from pathlib import Path

import pytest

from agent import Movement, Outbox
from agent.outbox import ZERO_CHAIN, chain_link
from protocol import Kind

AGENT = "store-1"
LOC = "S001"


def sale(sku: str = "SKU-1") -> Movement:
    return Movement(LOC, sku, Kind.SALE, -1, "pos:acme")


def expected_chains(event_ids: list[bytes], start: bytes = ZERO_CHAIN) -> list[bytes]:
    out, chain = [], start
    for event_id in event_ids:
        chain = hashlib.blake2b(chain + event_id, digest_size=16).digest()
        out.append(chain)
    return out


def stored_chains(path: Path) -> list[tuple[int, bytes]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT seq, chain FROM events ORDER BY seq").fetchall()


async def test_every_row_carries_the_chain_of_the_ids_before_it(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    async with Outbox.open(path, agent_id=AGENT, location=LOC) as outbox:
        first = (await outbox.record([sale("A"), sale("B")])).events
        again = await outbox.record([Movement(LOC, "A", Kind.SALE, -1, "pos:acme", event_id=first[0].event_id,
                                              occurred_at=first[0].occurred_at)])  # fmt: skip
        assert again.duplicates == (first[0].event_id,)  # a duplicate does not move the chain
        more = (await outbox.record([sale("C")])).events
        out = await outbox.outgoing(10)
    ids = [ev.event_id for ev in (*first, *more)]
    assert stored_chains(path) == list(zip([1, 2, 3], expected_chains(ids), strict=True))
    assert chain_link(ZERO_CHAIN, ids[0]) == expected_chains(ids)[0]
    assert out.chain == expected_chains(ids)[-1] and out.epoch_base == 0 and out.base_chain is None


async def test_a_handshake_reports_the_chain_at_the_acknowledged_mark(tmp_path: Path) -> None:
    async with Outbox.open(tmp_path / "o.sqlite3", agent_id=AGENT, location=LOC) as outbox:
        assert (await outbox.outgoing(0)).chain == ZERO_CHAIN
        events = (await outbox.record([sale(), sale(), sale()])).events
        chains = expected_chains([ev.event_id for ev in events])
        result = await outbox.mark_acked(2, chains[1])
        assert result.forked_from_epoch is None and result.acked_seq == 2
        assert (await outbox.outgoing(0)).chain == chains[1]
        assert [ev.seq for ev in (await outbox.outgoing(10)).events] == [3]


async def test_an_outbox_written_before_chains_gets_them_on_open(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    async with Outbox.open(path, agent_id=AGENT, location=LOC) as outbox:
        events = (await outbox.record([sale(f"S{n}") for n in range(5)])).events
        await outbox.mark_acked(3)
    with sqlite3.connect(path) as conn:  # make it a schema-1 file: no chain column, no lineage meta
        conn.execute("DELETE FROM events WHERE seq <= 2")  # purged after their retention
        conn.execute("ALTER TABLE events DROP COLUMN chain")
        conn.execute("DELETE FROM meta WHERE key IN ('chain_last', 'ack_chain', 'epoch_base', 'base_chain')")
        conn.execute("UPDATE meta SET value = 1 WHERE key = 'schema_version'")
    async with Outbox.open(path, agent_id=AGENT, location=LOC, create=False) as outbox:  # read-only: unchanged
        assert [ev.seq for ev in await outbox.pending(10)] == [4, 5]
    with sqlite3.connect(path) as conn:
        assert "chain" not in {r[1] for r in conn.execute("PRAGMA table_info(events)")}
    async with Outbox.open(path, agent_id=AGENT, location=LOC) as outbox:
        chains = expected_chains([ev.event_id for ev in events[2:]])  # from zero before the first kept row
        assert stored_chains(path) == list(zip([3, 4, 5], chains, strict=True))
        assert (await outbox.outgoing(0)).chain == chains[0]  # the chain at the acknowledged seq 3
        more = (await outbox.record([sale("new")])).events
        assert stored_chains(path)[-1] == (6, chain_link(chains[-1], more[0].event_id))
        result = await outbox.mark_acked(5, chains[2])
        assert result.forked_from_epoch is None and result.acked_seq == 5
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (2,)


async def test_a_hub_mark_above_the_last_seq_forks_and_keeps_every_row(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with Outbox.open(tmp_path / "o.sqlite3", agent_id=AGENT, location=LOC) as outbox:
        events = (await outbox.record([sale(), sale(), sale()])).events
        chains = expected_chains([ev.event_id for ev in events])
        await outbox.mark_acked(1, chains[0])
        old = outbox.epoch
        with caplog.at_level(logging.WARNING, logger="agent.outbox"):
            result = await outbox.mark_acked(7, b"\x01" * 16)  # a copy of this file got further
        assert (result.forked_from_epoch, result.acked_seq, result.backlog) == (old, 1, 2)
        assert outbox.epoch not in (old, 0)
        out = await outbox.outgoing(10)
        assert [(ev.seq, ev.epoch) for ev in out.events] == [(2, outbox.epoch), (3, outbox.epoch)]
        assert (out.epoch_base, out.base_chain, out.chain) == (1, chains[0], chains[2])
        stats = await outbox.stats()
        assert (stats.epoch, stats.epoch_base, stats.forked_from_epoch, stats.fork_resent) == (outbox.epoch, 1, old, 2)
        assert stats.acked_seq == 1 and stats.backlog == 2
        # the new epoch's handshake has the base's chain; the hub's answer there is accepted
        assert (await outbox.outgoing(0)).chain == chains[0]
        assert (await outbox.mark_acked(3, chains[2])).forked_from_epoch is None
        assert (await outbox.stats()).backlog == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "restored from a backup, copied or rolled back" in warnings[0].getMessage()
    assert f"epoch {old}" in warnings[0].getMessage() and "2 events" in warnings[0].getMessage()


async def test_an_equal_length_divergent_lineage_forks(tmp_path: Path) -> None:
    """The hub's seq 3 is another copy's: same seqs, other events. Nothing is acknowledged by seq alone."""
    async with Outbox.open(tmp_path / "o.sqlite3", agent_id=AGENT, location=LOC) as outbox:
        events = (await outbox.record([sale(), sale(), sale()])).events
        theirs = expected_chains([events[0].event_id, b"\x07" * 16, b"\x08" * 16])
        old = outbox.epoch
        result = await outbox.mark_acked(3, theirs[2])
        assert (result.forked_from_epoch, result.acked_seq, result.backlog) == (old, 0, 3)
        assert [ev.seq for ev in await outbox.pending(10)] == [1, 2, 3]


async def test_a_chain_mismatch_below_the_last_seq_forks(tmp_path: Path) -> None:
    async with Outbox.open(tmp_path / "o.sqlite3", agent_id=AGENT, location=LOC) as outbox:
        events = (await outbox.record([sale() for _ in range(6)])).events
        mine = expected_chains([ev.event_id for ev in events])
        await outbox.mark_acked(2, mine[1])
        theirs = expected_chains([ev.event_id for ev in events[:2]] + [b"\x09" * 16])
        result = await outbox.mark_acked(3, theirs[2])
        assert (result.forked_from_epoch is not None, result.acked_seq, result.backlog) == (True, 2, 4)
        assert [ev.seq for ev in await outbox.pending(10)] == [3, 4, 5, 6]


async def test_a_lost_answer_after_the_hubs_commit_is_no_fork(tmp_path: Path) -> None:
    """The hub committed seqs 1..5 of this file and the answer was lost: the handshake shows its mark
    with this file's own chain, and the mark simply moves."""
    async with Outbox.open(tmp_path / "o.sqlite3", agent_id=AGENT, location=LOC) as outbox:
        events = (await outbox.record([sale() for _ in range(5)])).events
        sent = await outbox.outgoing(10)
        epoch = outbox.epoch
        result = await outbox.mark_acked(5, sent.chain)
        assert (result.forked_from_epoch, result.acked_seq, result.backlog, outbox.epoch) == (None, 5, 0, epoch)
        # and a restored hub (mark back at 2, same lineage) is a rewind, not a fork
        chains = expected_chains([ev.event_id for ev in events])
        result = await outbox.mark_acked(2, chains[1])
        assert (result.forked_from_epoch, result.rewound, result.backlog) == (None, True, 3)


async def test_a_hub_without_chains_is_trusted_below_the_last_seq(tmp_path: Path) -> None:
    async with Outbox.open(tmp_path / "o.sqlite3", agent_id=AGENT, location=LOC) as outbox:
        await outbox.record([sale() for _ in range(3)])
        result = await outbox.mark_acked(2, None)
        assert (result.forked_from_epoch, result.acked_seq) == (None, 2)
        assert (await outbox.mark_acked(9, None)).forked_from_epoch is not None  # never issued: still a fork


async def test_a_restored_hub_below_a_divergent_mark_resends_everything_kept(tmp_path: Path) -> None:
    async with Outbox.open(tmp_path / "o.sqlite3", agent_id=AGENT, location=LOC) as outbox:
        events = (await outbox.record([sale() for _ in range(4)])).events
        mine = expected_chains([ev.event_id for ev in events])
        await outbox.mark_acked(4, mine[3])
        result = await outbox.mark_acked(2, b"\x05" * 16)  # below our mark, and not our history
        assert (result.forked_from_epoch is not None, result.acked_seq, result.backlog) == (True, 0, 4)
        assert (await outbox.outgoing(1)).epoch_base == 0

"""Set-aside movements sent again (``Outbox.requeue``, ``shelfsync-agent resend``).

A movement the hub refused as ``forbidden_location`` (the credential was not bound to the configured location yet)
was set aside for good: once the credential was bound there was no way to send it again. ``resend`` puts it back in
the queue with its event id, after everything recorded before it is run, and refuses the codes no resend can change.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent import Kind, Movement, Outbox
from agent.errors import OutboxError
from protocol import Rejection

ROOT = Path(__file__).resolve().parents[2]
COMMAND_TIMEOUT_S = 60.0


async def _refused(path: Path, codes: list[str]) -> list[bytes]:
    """An outbox at S002 whose movements 1..len(codes) the hub answered with these codes (acknowledged past them),
    and one more movement, unsent; the event ids of all, in seq order."""
    async with Outbox.open(path, agent_id="store-1", location="S002") as outbox:
        done = await outbox.record(
            [Movement("S002", f"SKU-{i}", Kind.RECEIVE, i + 1, "api:test") for i in range(len(codes))]
        )
        await outbox.mark_acked(len(codes))
        rejections = [Rejection(ev.event_id, ev.seq, code, f"no ({code})") for ev, code in zip(done.events, codes)]
        await outbox.set_aside(rejections)
        last = await outbox.record([Movement("S002", "SKU-Z", Kind.SALE, -1, "api:test")])
    return [ev.event_id for ev in done.events + last.events]


async def test_requeued_movements_are_sent_again_in_their_order_with_their_ids_after_what_waits(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    ids = await _refused(path, ["forbidden_location", "conflict", "forbidden_location", "invalid_bundle"])
    async with Outbox.open(path, agent_id="store-1", location="S002") as outbox:
        assert [e.event_id for e in (await outbox.outgoing(100)).events] == [ids[4]]  # before: set aside for good
        done = await outbox.requeue(codes={"forbidden_location"})
        moved = [(r.event.event_id, r.previous_seq, r.event.seq) for r in done.requeued]
        assert moved == [(ids[0], 1, 6), (ids[2], 3, 7)]
        assert done.refused == {}
        outgoing = await outbox.outgoing(100)
        assert [e.event_id for e in outgoing.events] == [ids[4], ids[0], ids[2]]
        assert [(e.sku, e.qty) for e in outgoing.events[1:]] == [("SKU-0", 1), ("SKU-2", 3)]
        stats = await outbox.stats()
        assert (stats.backlog, stats.set_aside, stats.last_seq) == (3, 2, 7)
        assert sorted(r.code for r in await outbox.list_rejected()) == ["conflict", "invalid_bundle"]
        local = await outbox.counts.local_count("S002", "SKU-0")
        assert (local.on_hand, local.pending_events) == (1, 1)  # counted as on its way again
        await outbox.mark_acked(7)  # the hub took them: nothing is sent twice
        assert (await outbox.outgoing(100)).events == ()
        again = await outbox.requeue(codes={"forbidden_location"})
        assert again.requeued == ()


async def test_everything_set_aside_that_a_resend_can_change_is_requeued_and_the_rest_is_said(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    ids = await _refused(path, ["conflict", "invalid_bundle", "unreadable", "forbidden_location", "invalid_transfer"])
    async with Outbox.open(path, agent_id="store-1", location="S002") as outbox:
        done = await outbox.requeue()  # all
        assert [r.event.event_id for r in done.requeued] == [ids[1], ids[3]]
        assert done.refused == {"conflict": 1, "unreadable": 1, "invalid_transfer": 1}
        assert [e.event_id for e in (await outbox.outgoing(100)).events] == [ids[5], ids[1], ids[3]]


async def test_a_code_no_resend_can_change_is_refused_with_why_and_nothing_moves(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    await _refused(path, ["conflict", "forbidden_location"])
    async with Outbox.open(path, agent_id="store-1", location="S002") as outbox:
        with pytest.raises(OutboxError, match="conflict: the hub holds another movement under the same event id"):
            await outbox.requeue(codes={"conflict"})
        with pytest.raises(OutboxError, match=r"seq 1 was refused as conflict: the hub holds another movement"):
            await outbox.requeue(seqs={1, 2})
        with pytest.raises(OutboxError, match="no movement of this outbox is set aside at seq 9"):
            await outbox.requeue(seqs={9})
        assert (await outbox.stats()).set_aside == 2
        done = await outbox.requeue(seqs={2})
        assert [r.previous_seq for r in done.requeued] == [2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, check=False, text=True,
        timeout=COMMAND_TIMEOUT_S, cwd=ROOT,
    )  # fmt: skip


async def test_the_resend_command_says_what_it_requeued_and_what_it_left(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    ids = await _refused(path, ["forbidden_location", "forbidden_location", "conflict"])
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nid = "store-1"\nlocation = "S002"\ndata_dir = "{tmp_path.as_posix()}"\n')
    refused = _cli("resend", "--config", str(config), "--code", "conflict")
    assert refused.returncode == 2, refused.stderr
    assert "cannot be sent again with any success" in refused.stderr and "conflict" in refused.stderr
    nothing = _cli("resend", "--config", str(config))
    assert nothing.returncode == 2 and "--code, --seq or --all" in nothing.stderr
    done = _cli("resend", "--config", str(config), "--code", "forbidden_location")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"seq 1 -> 5  {ids[0].hex()[:8]}  receive 1 SKU-0 at S002 (was forbidden_location)",
        f"seq 2 -> 6  {ids[1].hex()[:8]}  receive 2 SKU-1 at S002 (was forbidden_location)",
        "2 set-aside movements are queued again, after the 1 waiting; the agent sends them when it runs.",
    ]
    status = _cli("status", "--config", str(config))
    assert "set aside    1 events the hub refused (conflict 1)" in status.stdout


async def test_a_movement_set_aside_above_the_acknowledged_mark_is_queued_again_where_it_is(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    async with Outbox.open(path, agent_id="store-1", location="S002") as outbox:
        done = await outbox.record([Movement("S002", f"SKU-{i}", Kind.RECEIVE, 1, "api:test") for i in range(3)])
        await outbox.mark_acked(1)
        await outbox.set_aside([Rejection(done.events[1].event_id, 2, "forbidden_location", "no")])
        assert (await outbox.stats()).backlog == 1
        again = await outbox.requeue(seqs={2})
        assert [(r.previous_seq, r.event.seq) for r in again.requeued] == [(2, 2)]
        stats = await outbox.stats()
        assert (stats.backlog, stats.last_seq, stats.set_aside) == (2, 3, 0)
        assert [e.seq for e in (await outbox.outgoing(100)).events] == [2, 3]


async def test_a_resend_naming_a_code_nothing_is_set_aside_as_says_so_and_what_is(tmp_path: Path) -> None:
    """Found (install attack round): `resend --code forbiden_location`, a typo, said only that nothing was queued
    again, as if nothing were set aside. It names the code and what is set aside, and nothing moves."""
    path = tmp_path / "outbox.sqlite3"
    await _refused(path, ["forbidden_location", "forbidden_location", "conflict"])
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nid = "store-1"\nlocation = "S002"\ndata_dir = "{tmp_path.as_posix()}"\n')
    typo = _cli("resend", "--config", str(config), "--code", "forbiden_location")
    assert typo.returncode == 0, typo.stderr
    said = (
        f"No movement of {path} is set aside as forbiden_location, so none was queued again; set aside now: 1 as"
        " conflict, 2 as forbidden_location (`shelfsync-agent status` counts them by code)."
    )
    assert typo.stdout.splitlines() == [said]
    async with Outbox.open(path, agent_id="store-1", location="S002") as outbox:
        assert (await outbox.stats()).set_aside == 3

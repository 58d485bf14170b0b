"""``shelfsync-hub quarantine release`` names the person who ran it: real subprocesses (``python -m hub``) against a
real SQLite hub file in tmp_path, the OS user given by the environment as a login shell gives it."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from hub.storage import open_store
from hub.storage.base import HubStore
from protocol import Kind, StockEvent, new_event_id, pack_hlc, wall_ms_now
from tests.hub.test_cli import PROCESS_TIMEOUT_S, Run, new_db, one_sentence_error

HOUR_MS = 3_600_000
WINDOW_MS = 60_000


async def run_as(login: str | None, *args: str, cwd: Path) -> Run:
    """``python -m hub *args`` run by the OS user ``login`` (its login name in the environment, as a login shell
    sets it; None: as the test runs)."""
    env = dict(os.environ)
    if login is not None:
        env.update(LOGNAME=login, USER=login, USERNAME=login)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), PROCESS_TIMEOUT_S)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def hold(store: HubStore, location: str, **clock: int | None) -> str:
    """A sale of a new store at ``location`` whose clock is three hours ahead of the hub's, held; its agent id."""
    agent_id, token = await store.add_agent([location])
    who = await store.authenticate(token)
    assert who is not None
    store_now = wall_ms_now() + 3 * HOUR_MS
    sale = StockEvent(new_event_id(), agent_id, 1, 1, location, "SKU-1", Kind.SALE, -1, pack_hlc(store_now, 0),
                      store_now, "api:test")  # fmt: skip
    result = await store.ingest(who, 1, [sale], clock_window_ms=WINDOW_MS, sent_ms=store_now, **clock)
    assert [r.code for r in result.rejected] == ["quarantined"]
    return agent_id


async def test_each_release_names_the_os_user_who_ran_it_or_the_name_given_with_by(tmp_path: Path) -> None:
    """Found: a release made with the command was recorded (``resolved_by``, the released event's ``released_by``)
    and logged as ``shelfsync-hub``, whoever ran it: an override of what the other stores said of the hub's clock
    named no person. Now each names the OS user who ran it, or the name given with ``--by``, and that it was the
    command, where the HTTP route names the admin's credential."""
    db = str(await new_db(tmp_path / "hub.db", tmp_path))
    async with open_store(db) as store:
        lone = await hold(store, "S002")  # the hub could not tell whose clock was wrong
        vouched = await hold(store, "S003", hub_clock_vouched=2)  # two other stores put the hub's clock right
        # last: a row held knowing the hub's clock off records that finding, and rows held after it are the hub's
        by_hub = await hold(store, "S001", hub_clock_off_ms=-3 * HOUR_MS)  # the stores agreed: the hub's clock

    itself = await run_as("mara", "quarantine", "release", "--db", db, cwd=tmp_path)
    assert itself.code == 0, itself.err
    assert itself.out.startswith("Released 1 movement(s) held because of the hub's own clock"), itself.out
    given = await run_as("mara", "quarantine", "release", "--db", db, "--wrong-clock", "store", "--agent", lone,
                         "--by", "Jo Okafor", cwd=tmp_path)  # fmt: skip
    assert given.code == 0, given.err
    sure = await run_as("mara", "quarantine", "release", "--db", db, "--wrong-clock", "hub", "--agent", vouched,
                        "--override-vouched", cwd=tmp_path)  # fmt: skip
    assert sure.code == 0, sure.err
    assert "mara (shelfsync-hub) overrode what up to 2 other store(s) said of the hub's clock" in sure.err, sure.err

    async with open_store(db) as store:
        applied = {q.agent_id: q.resolved_by for q in await store.quarantine(status="applied")}
        released = {r.agent_id: r.attrs.get("released_by") for r in await store.ledger()}
    assert applied == {
        by_hub: "mara (shelfsync-hub)", lone: "Jo Okafor (shelfsync-hub)", vouched: "mara (shelfsync-hub)"
    }  # fmt: skip
    assert (released[by_hub], released[vouched]) == ("mara (shelfsync-hub)",) * 2, "each at its own time, by mara"

    for name, words in (("", "--by must not be empty"), ("Jo\x1b[2J", "--by 'Jo\\x1b[2J' is not a name")):
        bad = await run_as("mara", "quarantine", "release", "--db", db, "--by", name, cwd=tmp_path)
        assert words in one_sentence_error(bad), bad.err

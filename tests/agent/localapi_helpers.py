"""The local API served for a test: a real server on 127.0.0.1 over a real outbox and session store."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from agent.localapi import LocalApiContext, LocalApiServer, StaffDirectory, hash_pin
from agent.outbox import Outbox
from agent.sessions import SessionManager, SessionStore


@contextlib.asynccontextmanager
async def local_api(tmp_path: Path, slots: int) -> AsyncIterator[LocalApiServer]:
    """The local API of store S001's agent (staff ana, PIN 4711), holding at most ``slots`` connections."""
    async with (
        Outbox.open(tmp_path / "outbox.sqlite3", agent_id="store-a", location="S001") as outbox,
        SessionStore.open(tmp_path / "sessions.sqlite3") as store,
    ):
        context = LocalApiContext(
            sessions=SessionManager(store, outbox), outbox=outbox, staff=StaffDirectory({"ana": hash_pin("4711")})
        )
        running = LocalApiServer(context, "127.0.0.1", 0)
        running.guard.limit = slots
        async with running:
            yield running

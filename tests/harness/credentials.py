"""Credentials for the tests' hubs: one is added to the hub's database as ``hub agent add`` adds it.

It is written through the hub's own store (``HubStore.add_agent``, which the command calls), in this process:
a second instead of a second per credential for a new interpreter. tests/hub/test_cli.py and tests/ops run
the command itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hub import open_store

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Credential:
    agent_id: str
    token: str


def add_credential(db: Path | str, *locations: str, role: str = "agent") -> Credential:
    """A new credential of ``role`` bound to ``locations``, in the hub database ``db`` (a path or a URL)."""

    async def add() -> tuple[str, str]:
        async with open_store(str(db)) as store:
            return await store.add_agent(list(locations), role=role)

    return Credential(*_run(add()))


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end, from a plain function or from inside a running event loop (in a thread then)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()

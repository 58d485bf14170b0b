"""The PostgreSQL the hub's PostgreSQL tests run against, and a fresh schema per test.

The server is ``$SHELFSYNC_TEST_PG_URL`` (default: the database .ci/start-postgres
creates). Where it cannot be reached the tests skip and say why — except in CI
(``CI=true``), where they fail: CI starts the server, so its absence is a bug.

The fixtures ``pg_server`` and ``pg_url`` are in tests/conftest.py, so every test may ask for them.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from urllib.parse import urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

from hub.storage.postgres import redacted

DEFAULT_PG_URL = "postgresql://shelfsync:shelfsync@127.0.0.1:5432/shelfsync_test"
PG_URL = os.environ.get("SHELFSYNC_TEST_PG_URL", DEFAULT_PG_URL)
PROBE_TIMEOUT_S = 5.0


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@cache
def unreachable_reason() -> str | None:
    """Why the test server cannot be used, or None when it can (asked once per run)."""

    async def probe() -> None:
        conn = await asyncpg.connect(PG_URL, timeout=PROBE_TIMEOUT_S)
        await conn.close()

    try:
        asyncio.run(probe())
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
        return (
            f"PostgreSQL at {redacted(PG_URL)} is not reachable ({type(err).__name__}: {err}); "
            "start it with .ci/start-postgres or set SHELFSYNC_TEST_PG_URL"
        )
    return None


def with_schema(url: str, schema: str) -> str:
    """``url`` with a ``search_path`` setting: every connection of the store works in ``schema``."""
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode({"search_path": schema})) if q)
    return urlunsplit(parts._replace(query=query))


@asynccontextmanager
async def fresh_schema(prefix: str = "t") -> AsyncIterator[str]:
    """A new, empty schema for one test; yields the store URL working in it, drops it after."""
    schema = f"{prefix}_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(PG_URL, timeout=PROBE_TIMEOUT_S)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        yield with_schema(PG_URL, schema)
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The server URL; skips (fails in CI) when it cannot be reached."""
    reason = unreachable_reason()
    if reason is not None:
        if in_ci():
            pytest.fail(f"CI must run the PostgreSQL tests, but {reason}", pytrace=False)
        pytest.skip(reason)
    return PG_URL


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each hub backend in turn, "sqlite" then "postgres" (which skips, or fails in CI, without a server)."""
    if request.param == "postgres":
        request.getfixturevalue("pg_server")
    return str(request.param)


@pytest.fixture
async def pg_url(pg_server: str) -> AsyncIterator[str]:
    """A store URL over a fresh schema of the test server."""
    async with fresh_schema() as url:
        yield url


def with_database(url: str, name: str) -> str:
    """``url`` naming another database of the same server."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}", query=""))


@asynccontextmanager
async def fresh_database(prefix: str = "shelfsync_t") -> AsyncIterator[str]:
    """A new, empty database of the test server for one test (its backends are the test's alone, so it may
    terminate them); yields its URL, drops it after, ending any session of ours still in it."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_URL, timeout=PROBE_TIMEOUT_S)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield with_database(PG_URL, name)
        finally:
            for _ in range(50):  # not DROP … WITH (FORCE): it refuses while autovacuum works there (tests/ops)
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = $1 AND usename = current_user AND pid <> pg_backend_pid()",
                    name,
                )
                try:
                    await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
                    break
                except asyncpg.ObjectInUseError:
                    await asyncio.sleep(0.2)
            else:
                raise AssertionError(f"database {name} stayed in use for 10 s after the test")
    finally:
        await admin.close()


@pytest.fixture
async def pg_database(pg_server: str) -> AsyncIterator[str]:
    """The URL of a fresh database of the test server, dropped after the test."""
    async with fresh_database() as url:
        yield url


async def schema_tables(url: str) -> list[str]:
    """The tables of the schema ``url`` works in, by name in byte order."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
            ' ORDER BY table_name COLLATE "C"'
        )
        return [row[0] for row in rows]
    finally:
        await conn.close()

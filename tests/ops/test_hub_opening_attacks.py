"""A hostile client against a hub still opening its database (hub.starting), then across the switch to serving.

The hub is held mid-migration (tests/ops/held_migration.py): a real process on loopback.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from hub.storage.sqlite import schema as sqlite_schema
from tests.harness.commands import hub_env
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port, wait_until
from tests.ops.held_migration import HOLD_FILE_ENV
from tests.ops.test_hub_migrating import phase, write_sqlite

HELD = (sys.executable, str(Path(__file__).with_name("held_migration.py")))
READ_TIMEOUT_S = 10.0


def read_head(sock: socket.socket) -> bytes:
    """The status line and headers of the hub's answer (b"" if it closed the connection without a word)."""
    sock.settimeout(READ_TIMEOUT_S)
    got = b""
    while b"\r\n\r\n" not in got and (chunk := sock.recv(65536)):
        got += chunk
    return got


def test_a_connection_opened_while_migrating_is_not_answered_by_the_starting_app_once_the_hub_serves(
    tmp_path: Path,
) -> None:
    """Found by opening a connection while the hub migrated and asking on it once the hub served: the starting
    application answered it, 503 "migrating" from a hub that was serving (and /healthz said not ready)."""
    db = tmp_path / "hub.db"
    write_sqlite(db, sqlite_schema.SCHEMA_VERSION - 1)
    released = tmp_path / "released"
    hub = HubProcess(tmp_path / "hub.log", db=db, port=free_port(), env=hub_env(**{HOLD_FILE_ENV: str(released)}),
                     python=HELD)  # fmt: skip
    try:
        hub.spawn()
        wait_until("the hub begins its migration", lambda: phase(hub.url) == "migrating")
        early = socket.create_connection(("127.0.0.1", hub.port), timeout=READ_TIMEOUT_S)
        try:
            assert phase(hub.url) == "migrating"  # the early connection is accepted while the hub migrates
            released.touch()
            hub.wait_ready()
            try:
                early.sendall(b"GET /healthz HTTP/1.1\r\nHost: hub\r\n\r\n")
                answer = read_head(early)
            except ConnectionError:  # closed by the hub at the switch: the client connects again, to the serving app
                answer = b""
            assert b"migrating" not in answer and b"opening" not in answer, answer.decode(errors="replace")
            assert answer == b"" or answer.startswith(b"HTTP/1.1 200"), answer.decode(errors="replace")
        finally:
            early.close()
        assert hub.stop() == 0
    finally:
        hub.close()


def test_a_hub_opening_its_database_closes_each_connection_after_its_answer_as_the_answer_says(
    tmp_path: Path,
) -> None:
    """Found by pipelining 50 requests while the hub migrated: all 50 were answered on one connection, each saying
    ``Connection: close``, and the connection stayed open afterwards (until keepalive_timeout_s)."""
    db = tmp_path / "hub.db"
    write_sqlite(db, sqlite_schema.SCHEMA_VERSION - 1)
    released = tmp_path / "released"
    env = hub_env(**{HOLD_FILE_ENV: str(released), "SHELFSYNC_HUB_KEEPALIVE_TIMEOUT_S": "600"})
    hub = HubProcess(tmp_path / "hub.log", db=db, port=free_port(), env=env, python=HELD)
    try:
        hub.spawn()
        wait_until("the hub begins its migration", lambda: phase(hub.url) == "migrating")
        with socket.create_connection(("127.0.0.1", hub.port), timeout=READ_TIMEOUT_S) as sock:
            sock.sendall(b"GET /livez HTTP/1.1\r\nHost: hub\r\n\r\n" * 3)
            got = b""
            try:
                while chunk := sock.recv(65536):
                    got += chunk
                closed = True
            except TimeoutError:
                closed = False
        assert got.count(b"HTTP/1.1 200") == 1 and b"Connection: close" in got, got.decode(errors="replace")
        assert closed, "the hub kept the connection open after an answer saying Connection: close"
        released.touch()
        hub.wait_ready()
        assert hub.stop() == 0
    finally:
        hub.close()

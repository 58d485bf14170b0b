"""Socket activation (packaging/systemd/shelfsync-hub.socket): the hub serves the listening socket systemd passes
it, and a connection made while the hub restarts waits in that socket's queue for the next start, not refused.

systemd is emulated: the test holds a listening socket on 127.0.0.1, as systemd holds the socket unit's, and
starts ``python -m hub serve`` through a small launcher that puts it at file descriptor 3, sets ``LISTEN_FDS=1``
and ``LISTEN_PID`` and execs the hub (the same process id), as systemd does."""

from __future__ import annotations

import os
import socket
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.activation import ACTIVATION_VARIABLES, ActivationError, listen_fds, listening_socket
from tests.harness.commands import hub_env
from tests.harness.hub_process import HubProcess
from tests.ops.held_migration import HOLD_FILE_ENV
from tests.ops.test_hub_migrating import HELD, LATEST, write_sqlite

ANSWER_TIMEOUT_S = 30.0  # a queued request is answered once the next hub has opened its database
BACKLOG = 16
# argv: the socket's descriptor, LISTEN_PID ("self": the process that execs the hub), then python's arguments
LAUNCHER = """\
import os, sys
fd, listen_pid = int(sys.argv[1]), sys.argv[2]
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()) if listen_pid == "self" else listen_pid)
os.execv(sys.executable, [sys.executable, *sys.argv[3:]])
"""


@pytest.fixture
def held_socket() -> Iterator[socket.socket]:
    """The socket unit's socket, which systemd holds across the hub's restarts."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(BACKLOG)
        yield sock


def activated_hub(
    tmp_path: Path,
    sock: socket.socket,
    listen_pid: str = "self",
    event_loop: str = "auto",
    script: tuple[str, ...] = (),
    **env: str,
) -> HubProcess:
    """A hub given ``sock`` as systemd would; ``--host 127.0.0.1 --port 0`` is what it binds without it. ``script``:
    run by python before ``-m hub`` (held_migration.py)."""
    return HubProcess(
        tmp_path / "hub.log", db=tmp_path / "hub.db", port=0, env=hub_env(SHELFSYNC_HUB_EVENT_LOOP=event_loop, **env),
        python=(sys.executable, "-c", LAUNCHER, str(sock.fileno()), listen_pid, *script), pass_fds=(sock.fileno(),),
    )  # fmt: skip


def healthz_status(port: int) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/healthz", timeout=ANSWER_TIMEOUT_S) as resp:
        return int(resp.status)


def read_answer(client: socket.socket) -> bytes:
    """Everything the server sends until it closes (the request said Connection: close)."""
    client.settimeout(ANSWER_TIMEOUT_S)
    answer = b""
    while chunk := client.recv(65536):
        answer += chunk
    return answer


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_a_request_made_while_the_hub_restarts_waits_for_the_next_start(
    tmp_path: Path, held_socket: socket.socket, event_loop: str
) -> None:
    port = held_socket.getsockname()[1]
    hub = activated_hub(tmp_path, held_socket, event_loop=event_loop)
    try:
        hub.start()
        assert hub.port == port, hub.run_log  # it serves systemd's socket, not a port of its own
        assert "the hub serves on the socket(s) systemd passed it (127.0.0.1:" in hub.run_log
        assert f"the hub runs on {event_loop}'s event loop" in hub.run_log
        assert healthz_status(port) == 200
        assert hub.stop() == 0, hub.run_log  # SIGTERM: the drain closes its descriptor, not the socket

        # no hub runs: the connection is queued by the kernel in the socket systemd holds, not refused
        with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT_S) as client:
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            hub.start()
            answer = read_answer(client)
        assert hub.port == port
        # the hub answers it once its database is open: a 200, not the starting application's 503
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
        assert b'"status":"ok"' in answer, answer[:300]
        assert hub.stop() == 0, hub.run_log
    finally:
        hub.close()


def test_a_hub_migrating_its_database_answers_the_queued_requests_as_it_does_while_it_opens(
    tmp_path: Path, held_socket: socket.socket
) -> None:
    """The queue is served by the hub once its database is open, or after a while by the starting application if
    opening takes long (a migration): a probe is not left waiting for the whole step."""
    port = held_socket.getsockname()[1]
    write_sqlite(tmp_path / "hub.db", LATEST - 1)
    released = tmp_path / "released"
    hub = activated_hub(tmp_path, held_socket, script=HELD[1:], **{HOLD_FILE_ENV: str(released)})
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT_S) as client:
            client.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            hub.spawn()
            answer = read_answer(client)
        assert answer.startswith(b"HTTP/1.1 200 ") and b'"status":"migrating"' in answer, answer[:400]
        assert "hub listening" not in hub.run_log, hub.run_log
        released.touch()
        hub.wait_ready()
        assert hub.port == port
        assert hub.stop() == 0, hub.run_log
    finally:
        hub.close()


def test_listen_pid_naming_another_process_is_ignored_and_the_hub_binds_its_port(
    tmp_path: Path, held_socket: socket.socket
) -> None:
    # LISTEN_PID is this test's process: the variables were meant for the hub's parent, not for the hub
    hub = activated_hub(tmp_path, held_socket, listen_pid=str(os.getpid()))
    try:
        hub.start()
        assert hub.port != held_socket.getsockname()[1]
        assert healthz_status(hub.port) == 200
        assert "systemd passed" not in hub.run_log
        assert hub.stop() == 0, hub.run_log
    finally:
        hub.close()


def test_listen_fds_names_the_descriptors_from_3_and_removes_the_variables() -> None:
    env = {"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "http:http", "PATH": "/bin"}
    assert listen_fds(env, pid=4242) == [3, 4]
    assert env == {"PATH": "/bin"}  # a process the hub starts does not take them for its own


def test_listen_fds_of_another_process_are_none_and_are_removed_too() -> None:
    env = {"LISTEN_PID": "4241", "LISTEN_FDS": "1"}
    assert listen_fds(env, pid=4242) == []
    assert env == {}
    assert listen_fds({"PATH": "/bin"}, pid=4242) == []  # no socket activation


def test_listen_fds_removes_the_variables_from_this_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "0")
    assert listen_fds() == []
    assert not set(ACTIVATION_VARIABLES) & set(os.environ)


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "two"}, "LISTEN_FDS is 'two', not a number of sockets"),
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "-1"}, "LISTEN_FDS is -1, not a number of sockets"),
        ({"LISTEN_PID": "hub", "LISTEN_FDS": "1"}, "LISTEN_PID is 'hub', not a process id"),
    ],
)
def test_listen_fds_refuses_values_that_are_not_numbers(env: dict[str, str], said: str) -> None:
    with pytest.raises(ActivationError, match=said):
        listen_fds(env, pid=4242)


def test_a_descriptor_that_is_no_listening_tcp_socket_is_refused_with_what_to_fix(
    held_socket: socket.socket,
) -> None:
    read, write = os.pipe()
    try:
        with pytest.raises(ActivationError, match="not a socket .*ListenStream= lines only"):
            listening_socket(read)
        os.fstat(read)  # left open: not the hub's to close
    finally:
        os.close(read)
        os.close(write)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        pytest.raises(ActivationError, match="SOCK_DGRAM socket, not a TCP one"),
    ):
        listening_socket(udp.fileno())
    unix, other = socket.socketpair()  # ListenStream=/run/…: a path, not a port
    with unix, other, pytest.raises(ActivationError, match="AF_UNIX SOCK_STREAM socket, not a TCP one"):
        listening_socket(unix.fileno())
    with (
        socket.create_connection(held_socket.getsockname(), timeout=5.0) as connected,
        pytest.raises(ActivationError, match="not listening .*Accept=no"),
    ):
        listening_socket(connected.fileno())
    served = listening_socket(held_socket.fileno())
    try:
        assert served.getsockname() == held_socket.getsockname()
        assert not served.get_inheritable()
    finally:
        served.detach()  # the fixture closes it

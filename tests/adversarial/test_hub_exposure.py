"""The hub on the open internet, attacked from outside without (and with) a credential.

A real ``python -m hub serve`` process, started with an open-file limit of
1,024 (soft and hard, so it cannot raise it), is hit over real sockets on
127.0.0.1 with what an attacker sends for free: a crowd of idle connections,
request heads and bodies trickled a byte at a time, a gzip bomb, thousands of
malformed requests, secrets in places a log might echo, and JSON (and
msgpack) nested 2,000 deep. Each test asserts what a user sees: the hub keeps
answering ``/healthz``, the attacker gets one clear sentence, the log stays a
few lines long with no traceback and no secret in it.
"""

from __future__ import annotations

import http.client
import json
import re
import resource
import socket
import time
import urllib.error
import zlib
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from hub.limits import LISTEN_BACKLOG
from tests.harness.commands import run_hub
from tests.harness.credentials import Credential, add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port, get_json

FD_LIMIT = 1024
IDLE_SOCKETS = 1_100
MALFORMED_REQUESTS = 2_000
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
KEEPALIVE_TIMEOUT_S = 120.0  # far above the others: a connection cut sooner was cut by them, not by idling
ANSWER_TIMEOUT_S = 15.0  # the most a test waits for one answer or close (bounds the test, asserts no timing)
BOMB_INFLATED_BYTES = 1 << 30
RSS_JUMP_MAX_BYTES = 64 * 1024 * 1024
DEEP = 2_000
SECRET_TOKEN = "s3cr3t-t0ken-that-must-never-be-logged"


def _limit_fds(soft: int = FD_LIMIT) -> None:  # runs in the hub's child process between fork and exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, FD_LIMIT))


class ExposedHub(HubProcess):
    """The fault suite's hub process, started with a low open-file limit and short timeouts."""

    def __init__(self, tmp_path: Path, *, access_log: bool = False, soft_fd_limit: int = FD_LIMIT) -> None:
        config = tmp_path / "hub.toml"
        config.write_text(
            "[hub]\n"
            f"header_timeout_s = {HEADER_TIMEOUT_S}\n"
            f"body_timeout_s = {BODY_TIMEOUT_S}\n"
            f"keepalive_timeout_s = {KEEPALIVE_TIMEOUT_S}\n"
            "rate_limit_per_s = 0\n"
            f"access_log = {'true' if access_log else 'false'}\n"
        )
        super().__init__(
            tmp_path / "hub.log", "--config", str(config), db=tmp_path / "hub.db", port=free_port(),
            preexec_fn=lambda: _limit_fds(soft_fd_limit), start_timeout_s=20.0,
        )  # fmt: skip

    def ps(self) -> psutil.Process:
        return psutil.Process(self.pid)

    def stop_and_log(self) -> str:
        """SIGTERM (the counts still pending are logged on the way out), then the whole log."""
        self.close()
        return self.log


@pytest.fixture
def exposed(tmp_path: Path) -> Iterator[ExposedHub]:
    process = ExposedHub(tmp_path)
    try:
        yield process
    finally:
        process.close()


@pytest.fixture
def agent(exposed: ExposedHub) -> Credential:
    return add_credential(exposed.db, "STORE-1")


@pytest.fixture
def admin(exposed: ExposedHub) -> Credential:
    return add_credential(exposed.db, "STORE-1", role="admin")


# --- raw HTTP -----------------------------------------------------------------------


def healthz(hub: HubProcess, timeout_s: float = ANSWER_TIMEOUT_S) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=timeout_s)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    finally:
        conn.close()


def request(
    hub: HubProcess, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=ANSWER_TIMEOUT_S)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw.startswith(b"{") else {"raw": raw.decode(errors="replace")})
    finally:
        conn.close()


def raw_exchange(hub: HubProcess, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection and read until the hub closes it."""
    with socket.create_connection(("127.0.0.1", hub.port), timeout=ANSWER_TIMEOUT_S) as sock:
        try:
            sock.sendall(data)
        except OSError:  # the hub answered and closed while we were still sending: read what it said
            pass
        return read_to_close(sock)


def read_to_close(sock: socket.socket) -> bytes:
    got = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk


def trickle_until_closed(sock: socket.socket, pieces: Iterator[bytes], every_s: float = 0.25) -> bytes:
    """Send a piece every ``every_s`` until the hub closes the connection; what it answered."""
    sock.settimeout(every_s)
    got = b""
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
            if not chunk:
                return got
            got += chunk
        except TimeoutError:
            try:
                sock.sendall(next(pieces))
            except (BrokenPipeError, ConnectionResetError):
                sock.settimeout(ANSWER_TIMEOUT_S)
                return got + read_to_close(sock)
        except ConnectionResetError:
            return got
    raise AssertionError(f"the hub did not close a trickling connection within {ANSWER_TIMEOUT_S} s; got {got[:200]!r}")


def forever(piece: bytes) -> Iterator[bytes]:
    while True:
        yield piece


def log_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def rss(hub: ExposedHub) -> int:
    return int(hub.ps().memory_info().rss)


# --- idle and slow connections ---------------------------------------------------------


def test_a_thousand_idle_sockets_do_not_keep_healthz_out(exposed: ExposedHub) -> None:
    exposed.start()
    own_soft, own_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if own_soft < IDLE_SOCKETS + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(own_hard, IDLE_SOCKETS + 200), own_hard))
    log_before = exposed.log_path.stat().st_size
    idle: list[socket.socket] = []
    try:
        for n in range(1, IDLE_SOCKETS + 1):
            idle.append(socket.create_connection(("127.0.0.1", exposed.port), timeout=ANSWER_TIMEOUT_S))
            if n % (LISTEN_BACKLOG // 2) == 0:  # answered: the hub accepted every socket before it (one queue), so
                assert healthz(exposed) == 200  # the kernel never drops a connect for a full backlog (a 1 s retry)
        assert healthz(exposed) == 200
        fds = exposed.ps().num_fds()
        assert fds < FD_LIMIT, f"the hub holds {fds} files at a limit of {FD_LIMIT}"
        for _ in range(3):  # and again, with the crowd still there
            assert healthz(exposed) == 200
    finally:
        for sock in idle:
            sock.close()
    grown = exposed.log_path.stat().st_size - log_before
    log = exposed.log
    assert grown < 4_000, f"the log grew {grown} bytes for one crowd of idle sockets:\n{log}"
    assert "Traceback" not in log and "Too many open files" not in log and "could not accept" not in log
    assert "idle connection to make room" in log  # said once, with the budget it works to
    assert re.search(r"at most (\d+) open connections \(max_connections\) for an open-file limit of 1024", log)


def test_the_hub_raises_its_soft_open_file_limit_to_the_hard_one(tmp_path: Path) -> None:
    hub = ExposedHub(tmp_path, soft_fd_limit=256)
    try:
        hub.start()
        assert resource.prlimit(hub.pid, resource.RLIMIT_NOFILE) == (FD_LIMIT, FD_LIMIT)
        log = hub.stop_and_log()
    finally:
        hub.close()
    assert "for an open-file limit of 1024, raised from 256" in log


def hub_id_line(hub: HubProcess) -> bytes:
    """The ``Shelfsync-Hub-Id`` line every answer carries (API 1.6), as this hub's /healthz names its database."""
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=ANSWER_TIMEOUT_S)
    try:
        conn.request("GET", "/healthz")
        hub_id = json.loads(conn.getresponse().read())["db"]["hub_id"]
    finally:
        conn.close()
    return f"\r\nShelfsync-Hub-Id: {hub_id}\r\n".encode()


def test_a_trickled_request_head_is_cut_with_408(exposed: ExposedHub) -> None:
    exposed.start()
    with socket.create_connection(("127.0.0.1", exposed.port), timeout=ANSWER_TIMEOUT_S) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: hub\r\n")
        answer = trickle_until_closed(sock, forever(b"X-Slow: 1\r\n"))
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert hub_id_line(exposed) in answer.partition(b"\r\n\r\n")[0] + b"\r\n", answer[:300]
    assert b"header_timeout_s" in answer
    assert healthz(exposed) == 200
    log = exposed.stop_and_log()
    assert "request head did not arrive within 2 s (header_timeout_s)" in log
    assert "Traceback" not in log


def test_a_connection_that_sends_a_byte_and_stops_is_cut(exposed: ExposedHub) -> None:
    exposed.start()
    with socket.create_connection(("127.0.0.1", exposed.port), timeout=ANSWER_TIMEOUT_S) as sock:
        sock.sendall(b"G")
        answer = read_to_close(sock)  # the keep-alive timeout is 120 s: only the head deadline ends this
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]


def test_a_trickled_body_is_cut_with_408_once_authenticated(exposed: ExposedHub, agent: Credential) -> None:
    exposed.start()
    head = (
        "POST /v1/sync HTTP/1.1\r\nHost: hub\r\nContent-Type: application/msgpack\r\n"
        f"Authorization: Bearer {agent.token}\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", exposed.port), timeout=ANSWER_TIMEOUT_S) as sock:
        sock.sendall(head)
        answer = trickle_until_closed(sock, forever(b"\x00"))
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"body_timeout_s" in answer


def test_a_trickled_body_without_credential_is_refused_and_closed(exposed: ExposedHub) -> None:
    exposed.start()
    head = b"POST /v1/sync HTTP/1.1\r\nHost: hub\r\nContent-Type: application/msgpack\r\nContent-Length: 100000\r\n\r\n"
    with socket.create_connection(("127.0.0.1", exposed.port), timeout=ANSWER_TIMEOUT_S) as sock:
        sock.sendall(head)
        answer = trickle_until_closed(sock, forever(b"\x00"))  # closed after a linger of at most body_timeout_s
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]


# --- compressed bodies -------------------------------------------------------------------


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """About 1 MB of gzip that inflates to 1 GiB of zeros."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    bomb = b"".join(packer.compress(zeros) for _ in range(BOMB_INFLATED_BYTES >> 20)) + packer.flush()
    assert len(bomb) < 2 * 1024 * 1024
    return bomb


def _post_bomb(hub: ExposedHub, bomb: bytes, encoding: str, token: str | None) -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": "application/msgpack", "Content-Encoding": encoding}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return request(hub, "POST", "/v1/sync", bomb, headers)


def test_a_gzip_bomb_without_credential_is_refused_uninflated(
    exposed: ExposedHub, agent: Credential, gzip_bomb: bytes
) -> None:
    exposed.start()
    before = rss(exposed)
    for _ in range(3):
        status, body = _post_bomb(exposed, gzip_bomb, "gzip", None)
        assert status == 401, body
        status, body = _post_bomb(exposed, gzip_bomb, "gzip", "not-a-credential")
        assert status == 401, body
    assert rss(exposed) - before < RSS_JUMP_MAX_BYTES
    assert healthz(exposed) == 200


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "GZIP", "gzip, identity"])
def test_a_compressed_body_with_credential_is_refused_with_415(
    exposed: ExposedHub, agent: Credential, gzip_bomb: bytes, encoding: str
) -> None:
    exposed.start()
    before = rss(exposed)
    for _ in range(3):
        status, body = _post_bomb(exposed, gzip_bomb, encoding, agent.token)
        assert status == 415, body
        message = body["detail"]  # type: ignore[index]
        assert "send the body uncompressed" in message and message.count(". ") == 0
    assert rss(exposed) - before < RSS_JUMP_MAX_BYTES
    assert healthz(exposed) == 200


# --- malformed requests ---------------------------------------------------------------------

MALFORMED: tuple[bytes, ...] = (
    b"GARBAGE\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32),  # a TLS client hello on the HTTP port
    b"GET / HTTP/1.1\r\nHost: hub\r\nBad Header Line\r\n\r\n",
    b"GET /healthz HTTP/9.9\r\nHost: hub\r\n\r\n",
    b"POST /v1/sync HTTP/1.1\r\nHost: hub\r\nContent-Length: abc\r\n\r\n",
    b"POST /v1/sync HTTP/1.1\r\nHost: hub\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",  # smuggling
    b"POST /dashboard/sign-in HTTP/1.1\r\nHost: hub\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: hub\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: hub\r\nX-Bad: \x01\x02\r\n\r\n",
)


def test_a_flood_of_malformed_requests_is_a_few_log_lines(exposed: ExposedHub) -> None:
    exposed.start()
    lines_before = len(log_lines(exposed.log))
    statuses: set[bytes] = set()
    for i in range(MALFORMED_REQUESTS):
        answer = raw_exchange(exposed, MALFORMED[i % len(MALFORMED)])
        statuses.add(answer[:12])
    assert statuses <= {b"HTTP/1.0 400", b""}, statuses  # one sentence (as HTTP/1.0: the version is unknown)
    assert b"HTTP/1.0 400" in statuses
    assert healthz(exposed) == 200
    log = exposed.stop_and_log()
    added = log_lines(log)[lines_before:]
    assert len(added) < 20, "\n".join(added)
    assert "Traceback" not in log and "Error handling request" not in log
    counted = sum(int(n.replace(",", "")) for n in re.findall(r"refused ([\d,]+) malformed requests? in the last", log))
    assert counted == MALFORMED_REQUESTS, log


def test_a_malformed_request_is_answered_with_one_sentence(exposed: ExposedHub) -> None:
    exposed.start()
    answer = raw_exchange(exposed, b"GET / HTTP/1.1\r\nHost: hub\r\nBad Header Line\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 400 ")
    assert hub_id_line(exposed) in head + b"\r\n", head  # an answer below the routes names its database too
    message = json.loads(body)["detail"]
    assert message.startswith("the request is not valid HTTP/1.1") and "Bad Header Line" not in message


# --- secrets --------------------------------------------------------------------------------------


def test_no_secret_reaches_the_log(tmp_path: Path) -> None:
    hub = ExposedHub(tmp_path, access_log=True)
    add_credential(hub.db, "STORE-1")
    try:
        hub.start()
        bearer = f"Authorization: Bearer {SECRET_TOKEN}\r\n".encode()
        attacks = [
            b"POST /v1/sync HTTP/1.1\r\nHost: hub\r\n" + bearer + b"Content-Length: 5\r\nBad Header\r\n\r\nhello",
            b"GET /v1/ledger HTTP/1.1\r\nHost: hub\r\n" + bearer + b"X-Long: " + b"x" * 9000 + b"\r\n\r\n",
            b"GET /v1/ledger HTTP/1.1\r\nX-Pad: " + b"y" * 8000 + b" " + bearer + b"\r\n\r\n",
            f"GET http://user:{SECRET_TOKEN}@hub/healthz?token={SECRET_TOKEN} HTTP/1.1\r\nHost: hub\r\n"
            "Connection: close\r\n\r\n".encode(),
            f"GET /v1/ledger?token={SECRET_TOKEN} HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n".encode()
            + bearer + b"\r\n",
            b"POST /v1/events HTTP/1.1\r\nHost: hub\r\nContent-Type: application/json\r\n" + bearer
            + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{]\r\n0\r\n\r\n",
        ]  # fmt: skip
        for attack in attacks:
            raw_exchange(hub, attack)
        status, _ = request(hub, "POST", "/v1/events", b"{not json", {
            "Authorization": f"Bearer {SECRET_TOKEN}", "Content-Type": "application/json"})  # fmt: skip
        assert status == 401
        assert healthz(hub) == 200
        log = hub.stop_and_log()
    finally:
        hub.close()
    assert SECRET_TOKEN not in log
    assert "Traceback" not in log
    assert '"GET /healthz" 200' in log  # the access log did run, with the path only


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])  # nothing listens there; mysql is not supported
def test_a_database_password_never_reaches_the_log(scheme: str) -> None:
    password = "pg-pa55word-never-logged"
    url = f"{scheme}://shelfsync:{password}@127.0.0.1:{free_port()}/nowhere"
    done = run_hub("serve", "--db", url, "--host", "127.0.0.1", "--port", str(free_port()))
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert password not in output
    assert "***" in output or scheme in output  # it said which database, masked


# --- deep JSON and msgpack --------------------------------------------------------------------------


def deep_json() -> bytes:
    return b"[" * DEEP + b"]" * DEEP


def deep_object() -> bytes:
    return b'{"a":' * DEEP + b"1" + b"}" * DEEP


def deep_msgpack() -> bytes:
    return b"\x91" * DEEP + b"\xc0"  # an array of one array of one … of nil


def test_deeply_nested_bodies_are_4xx_on_every_route_that_reads_one(
    exposed: ExposedHub, agent: Credential, admin: Credential
) -> None:
    exposed.start()
    json_routes: list[tuple[str, str, str]] = [
        ("POST", "/v1/events", agent.token),
        ("PUT", "/v1/catalog", admin.token),
        ("PUT", "/v1/locations/STORE-1/skus/SKU-1/safety-stock", admin.token),
    ]
    answers: list[tuple[str, str, int]] = []
    for method, path, token in json_routes:
        for body in (deep_json(), deep_object(), b'{"events":' + deep_json() + b"}"):
            status, _ = request(exposed, method, path, body, {
                "Authorization": f"Bearer {token}", "Content-Type": "application/json"})  # fmt: skip
            answers.append((method, path, status))
    for path in ("/v1/sync", "/v1/observations", "/v1/import-issues"):
        status, _ = request(exposed, "POST", path, deep_msgpack(), {
            "Authorization": f"Bearer {agent.token}", "Content-Type": "application/msgpack"})  # fmt: skip
        answers.append(("POST", path, status))
    origin = f"http://127.0.0.1:{exposed.port}"
    for content_type in ("application/json", "application/x-www-form-urlencoded"):
        status, _ = request(exposed, "POST", "/dashboard/sign-in", deep_json(), {
            "Content-Type": content_type, "Origin": origin})  # fmt: skip
        answers.append(("POST", "/dashboard/sign-in", status))
    bad = [a for a in answers if not 400 <= a[2] < 500]
    assert bad == [], bad
    assert healthz(exposed) == 200
    log = exposed.stop_and_log()
    assert "Traceback" not in log and "unexpected error" not in log


def test_the_hub_still_serves_its_agent_after_all_this(exposed: ExposedHub, agent: Credential) -> None:
    exposed.start()
    for attack in MALFORMED:
        raw_exchange(exposed, attack)
    try:
        agents = get_json(f"{exposed.url}/v1/agents", agent.token)
    except urllib.error.HTTPError as err:
        assert err.code == 403  # an agent credential may not list agents: the hub answered it all the same
    else:
        assert isinstance(agents, dict)


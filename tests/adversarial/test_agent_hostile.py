"""The store agent attacked from outside, as real processes over real sockets.

A hub that answers far more than any sync answer can be; the same agent
started twice on one outbox; a guesser at one handheld; JSON bombs at the
local API; a password in hub_url; an operator's monitoring reading `status`;
a manual `import` next to a running agent; the dashboard's backlog after a
drain. Each test asserts what a store or an operator would see.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from aiohttp import web

from agent.localapi.auth import FAILURES_MAX
from tests.faults.helpers import Simulation, Store, hub_events, wait_until
from tests.harness.agent_process import AgentProcess, local_api_section
from tests.harness.commands import run_agent
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port, get_json

WAIT_S = 60.0
HUGE_ANSWER_BYTES = 64 << 20
ANSWER_LIMIT_BYTES = 4 << 20
CHUNK_BYTES = 1 << 20
# The agent holds at most a few MB of any answer. Reading one 64 MB answer in full (and the copy aiohttp
# and msgpack make of it) would add well over 64 MB to this.
RSS_BOUND_BYTES = 160 << 20
TOO_LARGE = "more than the 4,194,304 bytes this agent reads"


def _agent_cli(config: Path, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    return run_agent(*args, "--config", str(config), timeout_s=timeout_s)


def _status(config: Path) -> tuple[int, dict[str, object]]:
    done = _agent_cli(config, "status", "--json")
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {}


# --- a hub that answers too much ---------------------------------------------------------------------------


class HugeHub:
    """/v1/sync answers ``size_bytes`` of zeros, chunked (no Content-Length); /healthz answers; nothing else."""

    def __init__(self, size_bytes: int) -> None:
        self.size_bytes = size_bytes
        self.syncs = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._runner: web.AppRunner | None = None

    def __enter__(self) -> HugeHub:
        self._thread.start()
        assert self._ready.wait(10), "the fake hub did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/sync", self._sync)
        app.router.add_get("/healthz", self._health)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "db": {"ok": True}})  # the hub's fields (hub.app.healthz)

    async def _sync(self, request: web.Request) -> web.StreamResponse:
        self.syncs += 1
        await request.read()
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/msgpack"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        chunk = bytes(CHUNK_BYTES)
        try:
            for _ in range(self.size_bytes // CHUNK_BYTES):
                await resp.write(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the agent hung up: what it should do
        return resp


def _write_config(path: Path, hub_url: str, extra: str = "", *, token: str = "hostile-test-token-1") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"""[agent]
id = "store-hostile"
location = "S001"
token = "{token}"
hub_url = "{hub_url}"
data_dir = "{path.parent.as_posix()}"

[replicator]
tick_s = 0.2
retry_base_s = 0.05
retry_max_s = 0.3
timeout_s = 20
answer_max_bytes = {ANSWER_LIMIT_BYTES}
{extra}"""
    )
    return path


def test_a_hub_answering_64_mb_is_cut_off_logged_once_and_retried_with_flat_memory(tmp_path: Path) -> None:
    with HugeHub(HUGE_ANSWER_BYTES) as fake:
        config = _write_config(tmp_path / "store" / "agent.toml", fake.url)
        assert _agent_cli(config, "record", "--sku", "A", "--kind", "receive", "--qty", "5").returncode == 0
        printed: list[str] = []
        run = AgentProcess(config, tmp_path / "agent.log", printed)
        try:
            peak = 0
            deadline = time.monotonic() + WAIT_S
            while fake.syncs < 6 and time.monotonic() < deadline:  # handshakes and resends, each cut off
                peak = max(peak, psutil.Process(run.pid).memory_info().rss)
                time.sleep(0.05)
            assert fake.syncs >= 6, f"the agent tried only {fake.syncs} times"
            assert run.alive()
            peak = max(peak, psutil.Process(run.pid).memory_info().rss)
        finally:
            run.stop()
    log = (tmp_path / "agent.log").read_text()
    assert peak < RSS_BOUND_BYTES, f"the agent grew to {peak >> 20} MiB reading answers of {HUGE_ANSWER_BYTES >> 20} MiB"
    assert log.count(TOO_LARGE) == 1, log  # logged once, then retried quietly with backoff
    assert "Traceback" not in log
    _code, report = _status(config)
    assert report["sync_state"] == "hub_error" and TOO_LARGE in str(report["last_error"])
    assert report["backlog"] == 1  # nothing was acknowledged by an answer that was never read


# --- one agent per outbox -------------------------------------------------------------------------------------


def test_a_second_run_on_the_same_outbox_refuses_and_the_first_keeps_running(
    hub: HubProcess, make_store: Callable[..., Store]
) -> None:
    hub.start()
    store = make_store(hub, hub.url, simulation=Simulation(count=300, rate_per_s=200.0, seed=7))
    first = store.start()
    wait_until("the first agent runs", lambda: _status(store.config)[1].get("agent_running") is True, WAIT_S)
    second = store.start()
    assert second.wait(30) == 3
    assert store.log().count("another shelfsync agent is already running on the outbox") == 1
    wait_until("the simulation completes", store.simulation_complete, WAIT_S)
    assert first.alive()
    wait_until("the hub holds the simulation", lambda: len(hub_events(Path(hub.db))) >= 300, WAIT_S)
    time.sleep(0.5)  # a second simulator would still be adding; the first alone stops at its count
    assert len(hub_events(Path(hub.db))) == 300
    assert sum(1 for line in store.printed if line.startswith("recorded ")) == 300

    first.kill()  # SIGKILL: the lock file stays behind, the lock itself dies with the process
    third = store.start()
    wait_until("a new agent runs after the SIGKILL", lambda: _status(store.config)[0] == 0, WAIT_S)
    assert third.alive()


def test_a_second_agent_with_its_outbox_in_the_first_ones_directory_refuses_to_start(tmp_path: Path) -> None:
    """Found running a back room as a second location from a copy of the shop's configuration, with only `id`,
    `location` and `outbox` changed: both agents started, and both used the sessions, scan journal and catalog
    cache beside their outboxes, the same files. The back room's handheld listed the shop's open delivery, scanned
    into it and closed it, booking it in the back room's outbox for the shop's location, which its credential may
    not write: the delivery reached neither. The second agent now refuses to start, in one sentence."""
    runs: list[AgentProcess] = []

    def start(name: str, location: str) -> Handheld:
        port = free_port()
        config = tmp_path / f"{name}.toml"
        config.write_text(
            f'[agent]\nid = "store-{name}"\nlocation = "{location}"\ndata_dir = "{tmp_path.as_posix()}"\n'
            f'outbox = "{name}.sqlite3"\n\n{local_api_section(port)}'
        )
        runs.append(AgentProcess(config, tmp_path / f"{name}.log"))
        return Handheld(port, "127.0.0.1")

    def answers(handheld: Handheld) -> bool:
        try:
            return handheld.call("GET", "/healthz")[0] == 200
        except OSError:
            return False

    try:
        shop_page = start("shop", "S001")
        wait_until("the shop's local API answers", lambda: answers(shop_page), WAIT_S)
        backroom_page = start("backroom", "S002")
        wait_until("the back room's agent ends or serves", lambda: not runs[1].alive() or answers(backroom_page), WAIT_S)
        assert not runs[1].alive(), "the back room's agent serves beside the shop's, on the same files"
        assert runs[1].wait(30) == 3
        log = (tmp_path / "backroom.log").read_text()
        assert log.count(f"another shelfsync agent is already running with its outbox in {tmp_path}") == 1, log
        assert "give this one its own data_dir" in log
        assert runs[0].alive() and answers(shop_page)
    finally:
        for run in runs:
            if run.alive():
                run.stop()


# --- status exit codes ----------------------------------------------------------------------------------------


def test_status_exit_codes_tell_running_unreachable_refused_and_stopped(
    hub: HubProcess, make_store: Callable[..., Store]
) -> None:
    hub.start()
    store = make_store(hub, hub.url)
    run = store.start()
    wait_until("status says all is well", lambda: _status(store.config)[0] == 0, WAIT_S)
    hub.kill()
    code, report = _status(store.config)
    assert (code, report["hub_reachable_now"], report["agent_running"]) == (4, False, True)
    text = _agent_cli(store.config, "status")
    assert text.returncode == 4 and "NOT reachable" in text.stdout
    run.stop()
    code, report = _status(store.config)
    assert (code, report["agent_running"]) == (3, False)

    hub.start()
    refused = make_store(hub, hub.url, name="store-2", location="STORE-2")
    refused.config.write_text(refused.config.read_text().replace(refused.cred.token, "not-the-right-token-at-all"))
    refused.start()
    wait_until(
        "status says the credentials were refused",
        lambda: _status(refused.config)[1].get("sync_state") == "credentials_refused",
        WAIT_S,
    )
    assert _status(refused.config)[0] == 5


# --- secrets ----------------------------------------------------------------------------------------------------


def test_a_password_in_hub_url_is_refused_without_printing_it_and_no_token_reaches_the_log(
    hub: HubProcess, make_store: Callable[..., Store]
) -> None:
    hub.start()
    store = make_store(hub, hub.url)
    secret = "S3cretPassw0rd-do-not-print"
    bad = store.data_dir / "userinfo.toml"
    bad.write_text(store.config.read_text().replace("http://127.0.0.1", f"http://shelf:{secret}@127.0.0.1"))
    for command in (("run",), ("status",), ("record", "--sku", "A", "--kind", "receive", "--qty", "1")):
        done = _agent_cli(bad, *command)
        assert done.returncode == 2, done.stderr
        assert "user name or password" in done.stderr
        assert secret not in done.stderr + done.stdout
        assert "shelf:" not in done.stderr

    run = store.start()
    assert _agent_cli(store.config, "record", "--sku", "A", "--kind", "receive", "--qty", "2").returncode == 0
    wait_until("the movement reaches the hub", lambda: len(hub_events(Path(hub.db))) == 1, WAIT_S)
    run.stop()
    assert store.cred.token not in store.log()
    assert store.cred.token not in _agent_cli(store.config, "status", "--json").stdout


# --- the local API ----------------------------------------------------------------------------------------------


class Handheld:
    """One device on the store network: HTTP to the local API from its own loopback address."""

    def __init__(self, port: int, address: str) -> None:
        self.port, self.address = port, address
        self.token = ""

    def call(self, method: str, path: str, body: bytes | dict[str, object] | None = None) -> tuple[int, dict[str, object]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10, source_address=(self.address, 0))
        try:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"}
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            conn.request(method, path, body=raw, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, json.loads(data) if data else {}
        finally:
            conn.close()

    def sign_in(self, staff: str, pin: str) -> tuple[int, dict[str, object]]:
        status, body = self.call("POST", "/api/v1/login", {"staff": staff, "pin": pin})
        if status == 200:
            self.token = str(body["token"])
        return status, body


@dataclass
class LocalApi:
    port: int
    config: Path
    log_path: Path
    run: AgentProcess

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def serve_local_api(tmp_path: Path, agent_id: str) -> Iterator[LocalApi]:
    """An agent (recording only) serving its local API on 127.0.0.1, staff ``ana`` with PIN 4711."""
    port = free_port()
    config = tmp_path / "api" / "agent.toml"
    config.parent.mkdir(parents=True)
    config.write_text(
        f"""[agent]
id = "{agent_id}"
location = "S001"
data_dir = "{config.parent.as_posix()}"

{local_api_section(port)}"""
    )
    run = AgentProcess(config, config.parent / "agent.log")
    try:
        probe = Handheld(port, "127.0.0.1")

        def up() -> bool:
            try:
                return probe.call("GET", "/healthz")[0] == 200
            except OSError:
                return False

        wait_until("the local API answers", up, WAIT_S)
        yield LocalApi(port, config, config.parent / "agent.log", run)
    finally:
        run.stop()


@pytest.fixture
def local_api(tmp_path: Path) -> Iterator[int]:
    """The local API's port; no traceback in the agent's log by the end."""
    with serve_local_api(tmp_path, "store-api") as api:
        yield api.port
        assert "Traceback" not in api.log


def test_wrong_pins_on_one_device_lock_nobody_out_of_another(local_api: int) -> None:
    attacker, own = Handheld(local_api, "127.0.0.2"), Handheld(local_api, "127.0.0.3")
    for _ in range(FAILURES_MAX):
        assert attacker.sign_in("ana", "0000")[0] == 401
    status, body = attacker.sign_in("ana", "4711")  # even the right PIN waits on the guessing device
    assert status == 429 and "on this device" in str(body["error"])
    status, body = own.sign_in("ana", "4711")
    assert status == 200 and body["staff"] == "ana"
    assert attacker.sign_in("ana", "0000")[0] == 429  # still braked there; the wait grows with each failure


def test_deep_json_is_a_400_on_every_route(local_api: int) -> None:
    device = Handheld(local_api, "127.0.0.4")
    bomb = b"[" * 2000 + b"]" * 2000
    nested = b'{"staff": ' + b"[" * 100 + b"]" * 100 + b', "pin": "4711"}'
    for payload in (bomb, nested, b'{"a":' * 2000 + b"1" + b"}" * 2000):
        status, body = device.call("POST", "/api/v1/login", payload)
        assert status == 400 and "nests deeper" in str(body["error"]), (status, body)
    assert device.sign_in("ana", "4711")[0] == 200
    for path in ("/api/v1/sessions", "/api/v1/sessions/x/scans", "/api/v1/sessions/x/close"):
        status, body = device.call("POST", path, bomb)
        assert status == 400 and "nests deeper" in str(body["error"]), (path, status, body)


# --- what a running agent picks up from other processes -------------------------------------------------------


def _import_issues(hub_db: Path) -> int:
    conn = sqlite3.connect(hub_db, timeout=30)
    try:
        return int(conn.execute("SELECT count(*) FROM import_issues").fetchone()[0])
    finally:
        conn.close()


def test_rows_quarantined_by_a_manual_import_reach_the_hub_without_a_restart(
    hub: HubProcess, make_store: Callable[..., Store], tmp_path: Path
) -> None:
    hub.start()
    store = make_store(hub, hub.url)
    run = store.start()
    wait_until("the agent runs", lambda: _status(store.config)[0] == 0, WAIT_S)
    bad = tmp_path / "export.csv"
    bad.write_text("date,sku,qty,kind\n2024-01-01,A,x,sale\n2024-01-01,,1,sale\n")
    done = _agent_cli(store.config, "import", str(bad), "--profile", "generic", "--no-progress")
    assert done.returncode == 3, done.stderr  # imported, some rows quarantined
    wait_until("the quarantined rows reach the hub", lambda: _import_issues(Path(hub.db)) == 2, WAIT_S)
    assert run.alive()


def test_the_hub_shows_the_true_backlog_right_after_a_drain(hub: HubProcess, make_store: Callable[..., Store]) -> None:
    hub.start()
    store = make_store(hub, hub.url, simulation=Simulation(count=400, rate_per_s=0, seed=3, batch=50), batch_size=100)
    store.start()
    wait_until("the simulation completes", store.simulation_complete, WAIT_S)
    wait_until("the hub holds every movement", lambda: len(hub_events(Path(hub.db))) == 400, WAIT_S)
    assert _status(store.config)[1]["backlog"] == 0

    def hub_backlog() -> object:
        agents = get_json(f"{hub.url}/v1/agents", store.cred.token)["agents"]
        return next(a["backlog"] for a in agents if a["agent_id"] == store.cred.agent_id)

    # heartbeat_s is 60 s: only the report right after the drain can show 0 within this wait
    wait_until("the hub shows the backlog as 0", lambda: hub_backlog() == 0, 10.0)

"""TLS served by the hub itself, with a certificate made here by the openssl command (a test CA and a hub
certificate for 127.0.0.1), and an agent that checks it against its configured ``ca_file``."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.agent_process import AgentProcess
from tests.harness.commands import hub_env, new_hub_db, run_hub
from tests.harness.hub_process import HubProcess
from tests.harness.net import wait_until

OPENSSL_TIMEOUT_S = 60.0
SYNC_TIMEOUT_S = 60.0
IDLE_CUT_BOUND_S = 20.0  # an idle TLS client is cut after header_timeout_s (0.5 s here); asyncio's default is 60 s
AGENT = (sys.executable, "-m", "agent")


@dataclass(frozen=True, slots=True)
class Pki:
    ca: Path  # the CA certificate an agent trusts
    cert: Path  # the hub's certificate, for 127.0.0.1, signed by the CA
    key: Path  # its private key
    other_key: Path  # a key that does not belong to the certificate


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, check=False, text=True, timeout=OPENSSL_TIMEOUT_S)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    d = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    ca_ext = ("-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=shelfsync test CA",
             *ca_ext, cwd=d)  # fmt: skip
    _openssl("req", *ec, "-keyout", "hub.key", "-out", "hub.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "hub.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    _openssl("x509", "-req", "-in", "hub.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "hub.crt", "-days", "2", "-extfile", "hub.ext", cwd=d)  # fmt: skip
    _openssl("req", *ec, "-keyout", "other.key", "-out", "other.csr", "-subj", "/CN=other", cwd=d)
    return Pki(d / "ca.pem", d / "hub.crt", d / "hub.key", d / "other.key")


def tls_env(pki: Pki, db: Path, **more: str) -> dict[str, str]:
    return hub_env(
        SHELFSYNC_HUB_DB=str(db), SHELFSYNC_HUB_PORT="0", SHELFSYNC_HUB_TLS_CERT=str(pki.cert),
        SHELFSYNC_HUB_TLS_KEY=str(pki.key), **more,
    )  # fmt: skip


def health(url: str, context: ssl.SSLContext) -> int:
    with urllib.request.urlopen(f"{url}/healthz", timeout=10, context=context) as resp:
        return int(resp.status)


def test_the_hub_serves_https_and_an_agent_with_the_ca_file_syncs(tmp_path: Path, pki: Pki) -> None:
    db = tmp_path / "hub.db"
    env = tls_env(pki, db)
    new_hub_db(db, env=env)
    added = run_hub("agent", "add", "--role", "reader", env=env)
    reader = next(line.split(": ", 1)[1] for line in added.stdout.splitlines() if line.startswith("credential: "))
    with HubProcess(tmp_path / "hub.log", env=env) as served:
        assert served.url.startswith("https://127.0.0.1:")
        trusting = ssl.create_default_context(cafile=str(pki.ca))
        assert health(served.url, trusting) == 200
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            health(served.url, ssl.create_default_context())  # the system's CAs do not know the test CA

        config = tmp_path / "store" / "agent.toml"
        config.parent.mkdir()
        # agent add builds the https address itself (TLS is on; the port is passed as the hub picked it)
        made = run_hub("agent", "add", "--id", "store-1", "--location", "S1", "--write", str(config),
                       "--ca-file", str(pki.ca), "--hub-url", served.url, env=env)  # fmt: skip
        assert made.returncode == 0, made.stderr
        recorded = subprocess.run(
            [*AGENT, "record", "--config", str(config), "--sku", "SKU-1", "--kind", "receive", "--qty", "3"],
            capture_output=True, check=False, text=True, timeout=60,
        )  # fmt: skip
        assert recorded.returncode == 0, recorded.stderr
        agent = AgentProcess(config, tmp_path / "agent.log", [])
        try:

            def counted() -> bool:
                req = urllib.request.Request(
                    f"{served.url}/v1/locations/S1/counts", headers={"Authorization": f"Bearer {reader}"}
                )
                with urllib.request.urlopen(req, timeout=10, context=trusting) as resp:
                    rows = json.loads(resp.read())["counts"]
                return [(r["sku"], r["on_hand"]) for r in rows] == [("SKU-1", 3)]

            wait_until("the hub counting the agent's receipt over TLS", counted, SYNC_TIMEOUT_S)
        finally:
            assert agent.stop() == 0
        status = subprocess.run([*AGENT, "status", "--json", "--config", str(config)],
                                capture_output=True, check=False, text=True, timeout=60)  # fmt: skip
        report = json.loads(status.stdout)
        assert report["hub_reachable_now"] is True, report  # status probes the hub with the same ca_file
        assert served.stop() == 0
    assert "hub listening on https://127.0.0.1:" in served.log and "Traceback" not in served.log


def test_an_agent_without_the_ca_file_refuses_the_hub_and_says_why(tmp_path: Path, pki: Pki) -> None:
    env = tls_env(pki, tmp_path / "hub.db")
    with HubProcess(tmp_path / "hub.log", env=env) as served:
        config = tmp_path / "agent.toml"
        made = run_hub("agent", "add", "--id", "store-1", "--location", "S1", "--write", str(config),
                       "--hub-url", served.url, env=env)  # fmt: skip
        assert made.returncode == 0, made.stderr
        subprocess.run([*AGENT, "record", "--config", str(config), "--sku", "A", "--kind", "receive", "--qty", "1"],
                       check=True, capture_output=True, timeout=60)  # fmt: skip
        agent = AgentProcess(config, tmp_path / "agent.log", [])
        try:
            log = tmp_path / "agent.log"
            wait_until("the agent naming the certificate it cannot verify",
                       lambda: "certificate verify failed" in log.read_text(), SYNC_TIMEOUT_S)  # fmt: skip
        finally:
            agent.stop()
        assert served.stop() == 0


def test_plain_http_and_silent_clients_on_the_tls_port_are_closed_quietly(tmp_path: Path, pki: Pki) -> None:
    env = tls_env(pki, tmp_path / "hub.db", SHELFSYNC_HUB_HEADER_TIMEOUT_S="0.5")
    with HubProcess(tmp_path / "hub.log", env=env) as served:
        port = int(served.url.rsplit(":", 1)[1])
        for _ in range(20):  # plain HTTP to the TLS port: no answer a browser could take for the hub's
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert b"200 OK" not in s.recv(4096)
        with socket.create_connection(("127.0.0.1", port), timeout=IDLE_CUT_BOUND_S) as idle:
            assert idle.recv(1) == b""  # the hub hangs up on a client that never starts its handshake
        assert health(served.url, ssl.create_default_context(cafile=str(pki.ca))) == 200  # still serving
        assert served.stop() == 0
    assert "Traceback" not in served.log and len(served.log) < 4_000


def test_an_agent_ca_file_that_is_no_certificate_is_one_sentence(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    config = tmp_path / "agent.toml"
    config.write_text(
        '[agent]\nid = "store-1"\nlocation = "S1"\nhub_url = "https://127.0.0.1:1"\ntoken = "t"\nca_file = "ca.pem"\n'
    )
    run = subprocess.run([*AGENT, "status", "--config", str(config)], capture_output=True, check=False, text=True, timeout=60)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and "ca_file" in lines[0] and str(junk) in lines[0], run.stderr


@pytest.mark.parametrize("mistake", ["key-of-another-certificate", "missing-certificate", "certificate-only"])
def test_a_wrong_certificate_or_key_stops_the_hub_with_one_sentence(tmp_path: Path, pki: Pki, mistake: str) -> None:
    env = tls_env(pki, tmp_path / "hub.db")
    expected = {
        "key-of-another-certificate": f"cannot use tls_cert {pki.cert} with tls_key {pki.other_key}",
        "missing-certificate": f"the hub cannot read its tls_cert {tmp_path / 'nope.crt'}: No such file or directory",
        "certificate-only": "tls_cert is set but tls_key is not",
    }[mistake]
    if mistake == "key-of-another-certificate":
        env["SHELFSYNC_HUB_TLS_KEY"] = str(pki.other_key)
    elif mistake == "missing-certificate":
        env["SHELFSYNC_HUB_TLS_CERT"] = str(tmp_path / "nope.crt")
    else:
        del env["SHELFSYNC_HUB_TLS_KEY"]
    run = run_hub("serve", env=env)
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if line.startswith("shelfsync-hub: ")]
    assert len(errors) == 1 and expected in errors[0], run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "hub.db").exists()  # stopped before opening anything



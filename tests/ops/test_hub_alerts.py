"""The Prometheus alert rules (packaging/prometheus/shelfsync-alerts.yml): valid for promtool, each alert
unit-tested (shelfsync-alerts.test.yml), and every metric they read exported by a real hub.

promtool comes from .ci/test-services (`make test` installs it); without it the promtool tests skip, except in
CI, where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.harness.commands import hub_env, new_hub_db, run_hub
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port, wait_until
from tests.ops.held_migration import HOLD_FILE_ENV
from tests.ops.test_hub_migrating import HELD, LATEST, phase, scrape, write_sqlite

RULES_DIR = Path(__file__).resolve().parents[2] / "packaging" / "prometheus"
RULES = RULES_DIR / "shelfsync-alerts.yml"
RULES_TEST = RULES_DIR / "shelfsync-alerts.test.yml"
DOCS = Path(__file__).resolve().parents[2] / "docs"
PROMTOOL_PLACES = ("/usr/local/bin/promtool", "/usr/bin/promtool")
ALERT_RE = re.compile(r"^\s*- alert: (\w+)\s*$", re.MULTILINE)
TESTED_RE = re.compile(r"^\s*alertname: (\w+)\s*$", re.MULTILINE)
METRIC_RE = re.compile(r"\bshelfsync_[a-z0-9_]+")
SUFFIXES = ("_bucket", "_sum", "_count", "_total")


def promtool() -> str:
    found = shutil.which("promtool") or next((p for p in PROMTOOL_PLACES if os.access(p, os.X_OK)), None)
    if found is None:
        reason = "promtool is not installed; .ci/test-services installs it (make test runs it)"
        if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
            pytest.fail(f"CI must check the alert rules, but {reason}", pytrace=False)
        pytest.skip(reason)
    return found


def test_promtool_finds_the_rules_valid() -> None:
    done = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, check=False, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    alerts = ALERT_RE.findall(RULES.read_text())
    assert f"SUCCESS: {len(alerts)} rules found" in done.stdout


def test_promtool_unit_tests_of_every_alert_pass() -> None:
    done = subprocess.run(
        [promtool(), "test", "rules", RULES_TEST.name], cwd=RULES_DIR, capture_output=True, check=False, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_unit_test_and_a_line_in_the_operations_guide() -> None:
    alerts = ALERT_RE.findall(RULES.read_text())
    assert {
        "ShelfsyncHubDown", "ShelfsyncAgentSilent", "ShelfsyncBacklogGrowing", "ShelfsyncClockSkew",
        "ShelfsyncDatabaseFailing", "ShelfsyncQuarantinePending", "ShelfsyncWebhookFailing", "ShelfsyncEventsRefused",
    } <= set(alerts)  # fmt: skip
    assert sorted(set(alerts) - set(TESTED_RE.findall(RULES_TEST.read_text()))) == []
    guide = DOCS / "operations.md"
    if not guide.exists():
        pytest.skip("docs/operations.md is being written")
    text = guide.read_text()
    assert [a for a in alerts if f"`{a}`" not in text] == [], "alerts missing from docs/operations.md"


def test_every_metric_the_rules_read_is_exported_by_a_running_hub(tmp_path: Path) -> None:
    """A hub with a webhook (so its metrics exist) and an agent that synced: each family the rules name is
    served at /metrics, so a renamed metric cannot silently leave an alert that never fires."""
    wanted = set(METRIC_RE.findall(RULES.read_text()))
    config = tmp_path / "hub.toml"
    config.write_text(
        '[hub]\nrate_limit_per_s = 0\n\n[[webhooks]]\nname = "web-shop"\nurl = "http://127.0.0.1:9/hook"\n'
        'secret = "a-shared-secret-of-16+"\nretry_max_s = 0.5\n'
    )
    env = hub_env(SHELFSYNC_HUB_CONFIG=str(config), SHELFSYNC_HUB_DB=str(tmp_path / "hub.db"), SHELFSYNC_HUB_PORT="0")
    new_hub_db(tmp_path / "hub.db", env=env)
    run = run_hub("agent", "add", "--role", "reader", env=env)
    token = next(line.split(": ", 1)[1] for line in run.stdout.splitlines() if line.startswith("credential: "))
    with HubProcess(tmp_path / "hub.log", env=env) as served:

        def scrape() -> str:
            req = urllib.request.Request(f"{served.url}/metrics", headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                return str(resp.read().decode())

        families = set(re.findall(r"^# TYPE (\S+) ", scrape(), re.MULTILINE))
        wait_until("the webhook metrics", lambda: "shelfsync_webhook_failures" in scrape())
        families |= set(re.findall(r"^# TYPE (\S+) ", scrape(), re.MULTILINE))
        health = json.loads(urllib.request.urlopen(f"{served.url}/healthz", timeout=10).read())
        assert health["status"] == "ok"
        assert served.stop() == 0

    def exported(name: str) -> bool:
        return name in families or any(name.endswith(s) and name[: -len(s)] in families for s in SUFFIXES)

    assert sorted(name for name in wanted if not exported(name)) == []
    assert len(wanted) >= 8


def labels(pairs: dict[str, str]) -> str:
    return "{" + ", ".join(f'{key}="{value}"' for key, value in pairs.items()) + "}"


def test_a_hub_held_mid_migration_is_up_for_prometheus_and_only_the_migrating_alert_fires(tmp_path: Path) -> None:
    """Found by scraping a hub migrating a big ledger: /metrics answered 503, Prometheus counted the hub down and
    ShelfsyncHubDown paged someone two minutes into a planned upgrade. The series a real hub held mid-migration
    serves are fed to promtool as its scrapes for 40 minutes: ShelfsyncHubDown stays quiet, ShelfsyncHubMigrating
    fires after its 30."""
    tool = promtool()
    db = tmp_path / "hub.db"
    write_sqlite(db, LATEST - 1)
    released = tmp_path / "released"
    hub = HubProcess(tmp_path / "hub.log", db=db, port=free_port(), env=hub_env(**{HOLD_FILE_ENV: str(released)}),
                     python=HELD)  # fmt: skip
    try:
        hub.spawn()
        wait_until("the hub begins its migration", lambda: phase(hub.url) == "migrating")
        status, _, text = scrape(hub.url)
        released.touch()
        hub.wait_ready()
        assert hub.stop() == 0
    finally:
        hub.close()
    assert status == 200, text
    starting = re.findall(r'^shelfsync_hub_starting\{phase="(\w+)"\} (\S+)$', text, re.MULTILINE)
    assert ("migrating", "1.0") in starting and len(starting) == 3, text
    target = {"job": "shelfsync-hub", "instance": "hub-1:8470"}
    series = [{"series": f"up{labels(target)}", "values": "1x45"}] + [
        {"series": f"shelfsync_hub_starting{labels({**target, 'phase': name})}", "values": f"{float(value):g}x45"}
        for name, value in starting
    ]
    said = re.search(r"- alert: ShelfsyncHubMigrating\n(?:.*\n)*?\s+summary: (\".*\")\n\s+description: (\".*\")\n",
                     RULES.read_text())  # fmt: skip
    assert said is not None
    summary, description = (json.loads(text).replace("{{ $labels.instance }}", "hub-1:8470") for text in said.groups())
    quiet = [{"eval_time": at, "alertname": "ShelfsyncHubDown", "exp_alerts": []} for at in ("10m", "40m")]
    fired = {
        "exp_labels": {"severity": "warning", **target},
        "exp_annotations": {"summary": summary, "description": description},
    }
    checks = [*quiet, {"eval_time": "10m", "alertname": "ShelfsyncHubMigrating", "exp_alerts": []},
              {"eval_time": "40m", "alertname": "ShelfsyncHubMigrating", "exp_alerts": [fired]}]  # fmt: skip
    shutil.copyfile(RULES, tmp_path / RULES.name)
    tests = tmp_path / "scraped.test.yml"  # JSON is YAML
    tests.write_text(json.dumps({"rule_files": [RULES.name], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": series, "alert_rule_test": checks}]}))  # fmt: skip
    done = subprocess.run([tool, "test", "rules", tests.name], cwd=tmp_path, capture_output=True, check=False,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr

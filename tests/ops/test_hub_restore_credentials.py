"""A hub restored from a backup says that its credentials are the backup's: one revoked since works again.

Found black-box: a store's token leaks, the operator revokes it, and later restores the nightly backup (a disk
failing, a bad upgrade). The restored hub took the leaked token again (200) and said nothing about it; only its
change feed's new history was logged, and the restore procedure ended with `agent list`, which shows the backup's
credentials as if they were current. The agents resend what the hub lost by themselves; a credential revoked or
added since the backup has nobody to put it right but the operator, so the restored start says so, and
docs/operations.md makes it a step of the restore. Real hub processes: SQLite by the documented file procedure,
PostgreSQL by pg_restore into a new database.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tests.harness.commands import hub_env, new_hub_db, run_hub
from tests.harness.hub_process import HubProcess
from tests.ops.test_feed_history import credential
from tests.ops.test_hub_backup import pg_databases  # noqa: F401  (the fixture: two new PostgreSQL databases)

TIMEOUT_S = 10.0
WARNING = "a credential revoked since the copy was made works again"


def status_of(url: str, token: str) -> int:
    req = urllib.request.Request(f"{url}/v1/counts?limit=1", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def backed_up_then_revoked(env: dict[str, str], target: Path, tmp_path: Path) -> tuple[str, str]:
    """A leaked token and a store added later: the backup holds the first valid and not the second."""
    leaked = credential(env, "--location", "S001")
    with HubProcess(tmp_path / "hub.log", env=env) as served:
        done = run_hub("backup", "--to", str(target), env=env)
        assert done.returncode == 0, done.stderr
        assert run_hub("agent", "revoke", leaked[0], env=env).returncode == 0
        late = credential(env, "--location", "S002")
        assert (status_of(served.url, leaked[1]), status_of(served.url, late[1])) == (401, 200)
        assert served.stop() == 0
    assert WARNING not in served.log
    return leaked[1], late[1]


def test_a_sqlite_hub_restored_from_a_backup_says_its_credentials_are_the_backups(tmp_path: Path) -> None:
    db, copy = tmp_path / "hub.db", tmp_path / "backup.db"
    env = hub_env(SHELFSYNC_HUB_DB=str(db), SHELFSYNC_HUB_PORT="0")
    new_hub_db(db, env=env)
    leaked, late = backed_up_then_revoked(env, copy, tmp_path)

    aside = tmp_path / "replaced"  # the restore procedure of docs/operations.md
    aside.mkdir()
    for name in ("hub.db", "hub.db-wal", "hub.db-shm"):
        if (tmp_path / name).exists():
            (tmp_path / name).rename(aside / name)
    shutil.copyfile(copy, db)
    with HubProcess(tmp_path / "restored.log", env=env) as again:
        assert (status_of(again.url, leaked), status_of(again.url, late)) == (200, 401)  # the backup's credentials
        assert again.stop() == 0
    assert WARNING in again.log, again.log
    assert "shelfsync-hub agent revoke" in again.log and "agent list --db" in again.log

    with HubProcess(tmp_path / "restarted.log", env=env) as restarted:  # a restart is no restore: nothing to say
        assert restarted.stop() == 0
    assert WARNING not in restarted.log


def test_a_postgresql_hub_restored_from_a_dump_says_its_credentials_are_the_dumps(
    tmp_path: Path,
    pg_databases: tuple[str, str],  # noqa: F811  (the fixture imported above)
) -> None:
    live, fresh = pg_databases
    env = hub_env(SHELFSYNC_HUB_DB=live, SHELFSYNC_HUB_PORT="0")
    dump = tmp_path / "hub.dump"
    leaked, late = backed_up_then_revoked(env, dump, tmp_path)

    parts = urlsplit(fresh)
    no_password = urlunsplit(parts._replace(netloc=f"{parts.username}@{parts.hostname}:{parts.port}"))
    done = subprocess.run(
        ["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", f"--dbname={no_password}", str(dump)],
        env={**os.environ, "PGPASSWORD": parts.password or ""}, capture_output=True, check=False, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    renv = hub_env(SHELFSYNC_HUB_DB=fresh, SHELFSYNC_HUB_PORT="0")
    with HubProcess(tmp_path / "restored.log", env=renv) as again:
        assert (status_of(again.url, leaked), status_of(again.url, late)) == (200, 401)
        assert again.stop() == 0
    assert WARNING in again.log, again.log

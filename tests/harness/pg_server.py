"""A throwaway PostgreSQL server of the test's own, for tests that stop, restart or break the server itself.

The shared test server (``tests.harness.pg``) serves every other test at the same time, so a test that restarts
PostgreSQL, stops it or makes it read-only starts one of its own: ``initdb`` into a temporary directory, ``pg_ctl``
on a free port of 127.0.0.1, a role ``shelfsync`` (password ``shelfsync``) owning a database ``shelfsync``. Run as
root, the commands run as the ``postgres`` user (PostgreSQL refuses to run as root). Every command is bounded in
time, and ``close()`` stops the server (immediate mode) and removes the directory, whatever state it is in.

The binaries are PostgreSQL's ``bin`` directory: ``$SHELFSYNC_TEST_PG_BIN``, else ``pg_config --bindir``, else
/usr/lib/postgresql/15/bin (where CI has them). Where none is found the tests skip and say why — except in CI,
where they fail.

    with ThrowawayPostgres() as server:
        server.url  # postgresql://shelfsync:shelfsync@127.0.0.1:PORT/shelfsync
        server.restart("immediate")
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Self

import pytest

from tests.harness.net import free_port
from tests.harness.pg import in_ci

DEFAULT_BIN = Path("/usr/lib/postgresql/15/bin")
COMMAND_TIMEOUT_S = 60.0
ROLE = PASSWORD = DATABASE = "shelfsync"


def pg_bin() -> Path | None:
    """PostgreSQL's ``bin`` directory (with ``initdb`` and ``pg_ctl``), or None."""
    given = os.environ.get("SHELFSYNC_TEST_PG_BIN")
    candidates = [Path(given)] if given else []
    if (pg_config := shutil.which("pg_config")) is not None:
        done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False, timeout=10)
        if done.returncode == 0:
            candidates.append(Path(done.stdout.strip()))
    candidates.append(DEFAULT_BIN)
    return next((c for c in candidates if (c / "initdb").exists() and (c / "pg_ctl").exists()), None)


class ThrowawayPostgres:
    """A PostgreSQL server in a temporary directory of its own, on a free port of 127.0.0.1; ``close()`` (or the
    ``with``) removes it."""

    def __init__(self) -> None:
        found = pg_bin()
        if found is None:
            reason = "PostgreSQL's initdb and pg_ctl were not found; set SHELFSYNC_TEST_PG_BIN to their directory"
            if in_ci():
                pytest.fail(f"CI must run the PostgreSQL server tests, but {reason}", pytrace=False)
            pytest.skip(reason)
        self.bin = found
        self.dir = Path(tempfile.mkdtemp(prefix="shelfsync-pg-"))  # not under pytest's tmp_path: root's, mode 0700
        self.data = self.dir / "data"
        self.log_path = self.dir / "server.log"
        self.port = free_port()
        self.url = f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"
        self._as_postgres = os.geteuid() == 0
        self._started = False

    def _run(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(a) for a in args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=COMMAND_TIMEOUT_S)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr}{self.log()}")
        return done

    def log(self) -> str:
        """What the server logged (every start)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def init(self) -> Self:
        """Make the cluster, start it, and make the role and its database."""
        (self.dir / "password").write_text(PASSWORD)
        if self._as_postgres:
            owner = pwd.getpwnam("postgres")
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
            os.chown(self.dir / "password", owner.pw_uid, owner.pw_gid)
        self._run(
            self.bin / "initdb", "-D", self.data, "-U", ROLE, f"--pwfile={self.dir / 'password'}",
            "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C",
        )  # fmt: skip
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.dir}'\n"
                "fsync = off\nmax_connections = 60\n"
            )
        self.start()
        self.psql(f"CREATE DATABASE {DATABASE} OWNER {ROLE}", database="postgres")
        return self

    def psql(self, sql: str, database: str = DATABASE) -> str:
        """Run ``sql`` as the superuser over the server's Unix socket; its output."""
        done = self._run(
            self.bin / "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", self.dir, "-p", str(self.port),
            "-U", ROLE, "-d", database, "-c", sql,
        )  # fmt: skip
        return done.stdout.strip()

    def copy_to(self, other: ThrowawayPostgres) -> None:
        """Copy the database into ``other``'s (empty) one, as a standby holds the primary's data."""
        dump = self.dir / "copy.dump"
        self._run(self.bin / "pg_dump", "-h", self.dir, "-p", str(self.port), "-U", ROLE, "-Fc", "-f", dump, DATABASE)
        other._run(other.bin / "pg_restore", "-h", other.dir, "-p", str(other.port), "-U", ROLE, "-d", DATABASE, dump)

    def read_only(self, on: bool = True) -> None:
        """Make the server refuse every write from now on, in every session, as a primary demoted to a standby
        does (``default_transaction_read_only``, reloaded); ``on=False`` undoes it."""
        setting = "SET default_transaction_read_only = on" if on else "RESET default_transaction_read_only"
        self.psql(f"ALTER SYSTEM {setting}")
        self.psql("SELECT pg_reload_conf()")

    def start(self) -> None:
        self._run(self.bin / "pg_ctl", "-D", self.data, "-l", self.log_path, "-w", "-t", "30", "start")
        self._started = True

    def stop(self, mode: str = "fast") -> None:
        self._run(self.bin / "pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "30", "stop")
        self._started = False

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def close(self) -> None:
        """Stop the server if it runs, and remove its directory. Safe twice."""
        if self._started and self.data.exists():
            self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "-t", "30", "stop", check=False)
            self._started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.init()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

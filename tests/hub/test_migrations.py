"""Each backend's migrations are numbered without a gap and each number means the same step on both."""

from __future__ import annotations

import re

import pytest

from hub.storage.migrations import migrations
from hub.storage.postgres.schema import MIGRATIONS as POSTGRES_MIGRATIONS
from hub.storage.postgres.schema import SCHEMA_VERSION as POSTGRES_VERSION
from hub.storage.sqlite.schema import MIGRATIONS as SQLITE_MIGRATIONS
from hub.storage.sqlite.schema import SCHEMA_VERSION as SQLITE_VERSION


def test_both_backends_are_at_the_same_version_with_the_same_steps() -> None:
    assert SQLITE_VERSION == POSTGRES_VERSION == len(SQLITE_MIGRATIONS) >= 7
    assert [m.name for m in SQLITE_MIGRATIONS.values()] == [m.name for m in POSTGRES_MIGRATIONS.values()]
    assert SQLITE_MIGRATIONS[6].name == "channels_and_bundles"
    for migration in (*SQLITE_MIGRATIONS.values(), *POSTGRES_MIGRATIONS.values()):
        # each step changes the schema, or says in its first line that this backend has nothing to change
        text = migration.read()
        assert "CREATE" in text or "ALTER" in text or "nothing changes" in text.splitlines()[0], migration.name
    assert "nothing changes" in SQLITE_MIGRATIONS[7].read().splitlines()[0]
    assert "DROP TABLE event_ids" in POSTGRES_MIGRATIONS[7].read()


# Steps whose corrections of the counts a later step puts on the change feed: step 20 corrected in transit in the
# stock table alone; step 25 appends a change row for every transfer destination's counts.
ANNOUNCED_BY = {20: 25}
MOVES_COUNTS = re.compile(
    r"UPDATE stock\b[^;]*\bSET\b[^;]*\b(on_hand|reserved|in_transit|safety_stock)\s*=", re.IGNORECASE
)


def test_a_step_that_moves_counts_puts_them_on_the_change_feed() -> None:
    """Found: step 20 corrected in transit without a change row, so a channel connector following GET /v1/changes
    never learned of it. A step that changes a stock row's counts writes the change rows too (or a later step, for
    the step 20 hubs already ran)."""
    moving = []
    for steps, feed in ((SQLITE_MIGRATIONS, "INSERT INTO changes"), (POSTGRES_MIGRATIONS, "INSERT INTO change_runs")):
        for version, migration in steps.items():
            if MOVES_COUNTS.search(migration.read()):
                moving.append((version, migration.name))
                announcer = steps[ANNOUNCED_BY.get(version, version)]
                assert feed in announcer.read(), (version, migration.name)
    assert sorted(set(moving)) == [(20, "transfers_by_destination"), (25, "transfer_returns_and_book_outs")]


def test_a_gap_in_the_numbers_is_refused(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "gappy"
    (package / "migrations").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "migrations" / "001_first.sql").write_text("CREATE TABLE a (x INTEGER);")
    (package / "migrations" / "003_third.sql").write_text("CREATE TABLE c (x INTEGER);")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RuntimeError, match="without a gap"):
        migrations("gappy")
    (package / "migrations" / "002_second.sql").write_text("CREATE TABLE b (x INTEGER);")
    assert [m.name for m in migrations("gappy").values()] == ["first", "second", "third"]

"""The reports loop: POS observations and quarantined rows reach a hub on 127.0.0.1, exactly as the contract says."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from agent.outbox import Outbox
from agent.pos import Observation, PosStore, Quarantined
from agent.pos.source import scan_file
from agent.reports import ReportSender, ReportsState, issue_id, observation_id
from tests.agent.agent_scan_helpers import ContractHub

WAIT_S = 10.0
FAST = {"tick_s": 30.0, "retry_base_s": 0.01, "retry_max_s": 0.05, "auth_retry_s": 30.0}


def observations(n: int, location: str = "S001", start_ms: int = 1_709_650_000_000) -> list[Observation]:
    return [Observation(location, f"SKU-{i}", "shopify", i - 2, start_ms + i, "inventory.csv") for i in range(n)]


async def quarantine(store: PosStore, tmp_path: Path, rows: list[Quarantined]) -> None:
    export = tmp_path / "sales.csv"
    export.write_text("date,sku,qty,kind\n" + "\n".join("bad,row" for _ in rows) + "\n", encoding="utf-8")
    scan = scan_file(export)
    import_id = await store.begin_import(scan, export.name, "generic")
    await store.add_quarantine(import_id, export.name, scan.sha256, rows)


async def settled(sender: ReportSender) -> ReportsState:
    return await asyncio.wait_for(sender.wait_for(lambda s: s.pending is False and s.failures == 0), WAIT_S)


async def test_observations_and_quarantined_rows_are_sent_once_and_marked_sent(tmp_path: Path) -> None:
    async with ContractHub() as hub, PosStore.open(tmp_path / "pos-import.sqlite") as store:
        await store.add_observations(observations(7))
        await quarantine(
            store, tmp_path, [Quarantined(2, "Qty 'two' is not a number", "x,\tSKU-1,two"), Quarantined(3, "no sku")]
        )
        async with ReportSender(
            store, hub.url, hub.token, agent_id="store-1", location="S001", batch_size=3, **FAST
        ) as sender:
            state = await settled(sender)
        assert (state.observations_sent, state.issues_sent, state.rejected) == (7, 2, 0)
        assert await store.pending_observations() == [] and await store.pending_quarantine() == []
    assert sorted(o.sku for o in hub.observations.values()) == [f"SKU-{i}" for i in range(7)]
    assert {o.on_hand for o in hub.observations.values()} == set(range(-2, 5))
    # batches of 3: observations 3 + 3 + 1, then both rows in one
    assert [path for path, _ in hub.report_posts] == ["/v1/observations"] * 3 + ["/v1/import-issues"]
    issues = sorted(hub.issues.values(), key=lambda x: x.line)
    assert [(x.file, x.line, x.reason, x.location) for x in issues] == [
        ("sales.csv", 2, "Qty 'two' is not a number", "S001"),
        ("sales.csv", 3, "no sku", "S001"),
    ]
    assert issues[0].raw == "x,\tSKU-1,two"  # the row as read, tab and all


async def test_ids_are_derived_from_content_so_a_recreated_store_resends_duplicates_only(tmp_path: Path) -> None:
    async with ContractHub() as hub:
        for attempt in range(2):  # the same export imported into a fresh POS store
            path = tmp_path / f"pos-{attempt}.sqlite"
            async with PosStore.open(path) as store:
                await store.add_observations(observations(4))
                async with ReportSender(
                    store, hub.url, hub.token, agent_id="store-1", location="S001", **FAST
                ) as sender:
                    await settled(sender)
        assert len(hub.observations) == 4
    o = observations(1)[0]
    assert observation_id(o) == observation_id(Observation(o.location, o.sku, o.system, 99, o.observed_at_ms, "other"))
    assert len(observation_id(o)) <= 64


async def test_a_failing_hub_is_retried_with_backoff_and_rejected_items_are_not_resent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.reports")
    async with ContractHub() as hub, PosStore.open(tmp_path / "pos-import.sqlite") as store:
        hub.fail_next = [503, 503, 500]
        hub.reject_locations = {"W009"}
        await store.add_observations(observations(2) + observations(1, location="W009", start_ms=5))
        async with ReportSender(store, hub.url, hub.token, agent_id="store-1", location="S001", **FAST) as sender:
            state = await settled(sender)
        assert (state.observations_sent, state.rejected) == (2, 1)
        assert await store.pending_observations() == []
    assert [status for _, status in hub.report_posts] == [503, 503, 500, 200]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("Reports to the hub failed" in w for w in warnings) == 1  # the 500 (the 503s: said once, below)
    assert sum("does not serve for now: scripted 503" in w for w in warnings) == 1  # agent.hub_loop, for the agent
    assert any("refused 1 observation" in w and "W009" in w for w in warnings)
    assert any("reach the hub again after 3 failed attempts" in r.getMessage() for r in caplog.records)


async def test_refused_credentials_stop_sending_until_they_are_updated(tmp_path: Path) -> None:
    async with ContractHub() as hub, PosStore.open(tmp_path / "pos-import.sqlite") as store:
        await store.add_observations(observations(1))
        async with ReportSender(store, hub.url, "wrong", agent_id="store-1", location="S001", **FAST) as sender:
            state = await asyncio.wait_for(sender.wait_for(lambda s: s.failures >= 1), WAIT_S)
            assert "refused this agent's credentials (HTTP 401" in (state.last_error or "")
            assert len(await store.pending_observations()) == 1
            sender.update_credentials(hub.token)
            state = await settled(sender)
        assert state.observations_sent == 1
    assert [status for _, status in hub.report_posts] == [401, 200]


async def test_kick_sends_new_rows_at_once_instead_of_waiting_for_the_tick(tmp_path: Path) -> None:
    async with (
        ContractHub() as hub,
        PosStore.open(tmp_path / "pos-import.sqlite") as store,
        ReportSender(store, hub.url, hub.token, agent_id="store-1", location="S001", **FAST) as sender,
    ):
        await settled(sender)
        await quarantine(store, tmp_path, [Quarantined(5, "date 1899-01-01 is before 2000")])
        sender.kick()
        await hub.wait_for(lambda: len(hub.issues) == 1)
    [entry] = hub.issues.values()
    assert entry.id.startswith("row-") and entry.id.endswith("-5")


def test_issue_ids_name_the_file_digest_and_line() -> None:
    from agent.pos import QuarantineEntry

    entry = QuarantineEntry(1, "a.csv", "ab" * 32, 12, "why", "raw", 0)
    assert issue_id(entry) == "row-" + ("ab" * 20) + "-12"


async def test_reports_are_sent_again_once_the_agent_finds_the_hub_restored(tmp_path: Path) -> None:
    # Found by an operator's restore: the hub's database put back to last night's backup lost the POS rows the agent
    # had quarantined and the observations it had reported since (the exceptions list showed no import_quarantine
    # for sales rows that were never booked), and the agent, which marks each report sent once the hub took it,
    # never sent them again; its movements alone were resent. Once the agent finds the hub restored (its outbox
    # counts each time the count cache had to follow the hub's feed again from the start), every report it keeps
    # is sent again: the hub keeps one per (agent, id), so what it still held is a duplicate.
    async with (
        ContractHub() as hub,
        PosStore.open(tmp_path / "pos-import.sqlite") as store,
        Outbox.open(tmp_path / "outbox.sqlite3", agent_id="store-1", location="S001") as outbox,
    ):
        await store.add_observations(observations(3))
        await quarantine(store, tmp_path, [Quarantined(2, "no sku")])

        async def restores() -> int:
            return (await outbox.feed_position()).restarts

        async with ReportSender(
            store, hub.url, hub.token, agent_id="store-1", location="S001", restores=restores, **FAST
        ) as sender:
            await settled(sender)
            assert (len(hub.observations), len(hub.issues)) == (3, 1)
            hub.observations.clear()  # the hub's database restored from a backup made before them
            hub.issues.clear()
            await outbox.restart_feed()  # what the count cache does when it finds the hub's feed went back
            await store.add_observations(observations(1, start_ms=1_709_700_000_000))
            sender.kick()
            await asyncio.wait_for(sender.wait_for(lambda s: (s.observations_sent, s.issues_sent) == (7, 2)), WAIT_S)
        assert (len(hub.observations), len(hub.issues)) == (4, 1)  # everything the store holds, the new one too
        async with ReportSender(
            store, hub.url, hub.token, agent_id="store-1", location="S001", restores=restores, **FAST
        ) as again:
            state = await settled(again)  # a restart of the agent is no restore: nothing is sent again
        assert state.observations_sent == 0 and len(hub.report_posts) == 4

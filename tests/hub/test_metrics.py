"""GET /metrics: Prometheus text from a per-app registry, fed by the ingest routes."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from hub.metrics import RecentIngest
from protocol import Kind, StockEvent, new_event_id, pack_hlc, wall_ms_now
from tests.hub.feed_helpers import Hub, running_hub


async def scrape(hub: Hub) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = await hub.client.get("/metrics", headers=hub.auth())
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


async def test_ingest_counters_latency_and_per_agent_gauges_are_exposed(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub:
        agent = await hub.agent()
        await agent.sync((Kind.RECEIVE, 5), (Kind.SALE, -1))
        await agent.sync()  # an empty handshake still counts as a batch
        again = agent.events(Kind.SALE, -1, at_ms=50)
        await agent.send([again])
        await agent.send([again])  # a resend: one duplicate
        web_id, web_token = await hub.store.add_agent(["WEB"])
        resp = await hub.client.post(
            "/v1/events",
            json={
                "events": [
                    {
                        "id": "x",
                        "location": "S1",
                        "sku": "A",
                        "kind": "receive",
                        "qty": 1,
                        "occurred_at": "2025-11-25T09:00:00Z",
                    }
                ]
            },
            headers=hub.auth(web_token),
        )
        assert (await resp.json())["events"][0]["code"] == "forbidden_location"

        m = await scrape(hub)
        assert m[("shelfsync_events_ingested_total", (("route", "sync"),))] == 3
        assert m[("shelfsync_events_duplicate_total", (("route", "sync"),))] == 1
        assert m[("shelfsync_ingest_batches_total", (("route", "sync"),))] == 4
        assert m[("shelfsync_events_rejected_total", (("code", "forbidden_location"), ("route", "events")))] == 1
        assert m[("shelfsync_ingest_seconds_count", (("route", "sync"),))] == 4
        assert m[("shelfsync_agent_hwm", (("agent_id", agent.agent_id), ("epoch", "1")))] == 3
        assert m[("shelfsync_agent_events_last_hour", (("agent_id", agent.agent_id),))] == 4
        assert m[("shelfsync_agent_events_last_hour", (("agent_id", web_id),))] == 1
        assert 0 <= m[("shelfsync_agent_last_sync_age_seconds", (("agent_id", agent.agent_id),))] < 3600
        assert m[("shelfsync_changes_latest_id", ())] == await hub.store.latest_change_id() > 0


async def test_each_app_has_its_own_registry(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with running_hub(tmp_path / "a") as one, running_hub(tmp_path / "b") as two:
        await (await one.agent()).sync((Kind.RECEIVE, 1))
        assert (await scrape(one))[("shelfsync_events_ingested_total", (("route", "sync"),))] == 1
        assert ("shelfsync_events_ingested_total", (("route", "sync"),)) not in await scrape(two)


async def test_metrics_need_a_credential_and_take_no_parameters(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub:
        assert (await hub.client.get("/metrics")).status == 401
        resp = await hub.client.get("/metrics?x=1", headers=hub.auth())
        assert resp.status == 400


async def test_a_422_counts_its_invalid_events(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub:
        _, token = await hub.store.add_agent(["WEB"])
        bad = {"id": "b", "location": "WEB", "sku": "A", "kind": "sale", "qty": 1, "occurred_at": 1_764_061_200_000}
        resp = await hub.client.post("/v1/events", json={"events": [bad, bad]}, headers=hub.auth(token))
        assert resp.status == 422
        m = await scrape(hub)
        assert m[("shelfsync_events_rejected_total", (("code", "request_invalid"), ("route", "events")))] == 2


def test_recent_ingest_forgets_what_is_older_than_an_hour() -> None:
    recent = RecentIngest()
    recent.add("a", 5, now_s=1_000_000.0)
    recent.add("a", 2, now_s=1_000_000.0 + 1_800)
    assert recent.last_hour("a", now_s=1_000_000.0 + 1_800) == 7
    assert recent.last_hour("a", now_s=1_000_000.0 + 3_700) == 2
    assert recent.last_hour("a", now_s=1_000_000.0 + 9_000) == 0
    assert recent.last_hour("nobody") == 0


async def test_exceptions_are_counted_by_kind_and_a_kind_gone_goes_to_nothing(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub:
        agent = await hub.agent()
        m = await scrape(hub)
        assert not [k for k in m if k[0] == "shelfsync_exceptions_listed"]
        await agent.sync((Kind.SALE, -2))  # sold what the hub never saw arrive: a negative on hand
        m = await scrape(hub)
        assert m[("shelfsync_exceptions_listed", (("kind", "negative_on_hand"),))] == 1
        await agent.sync((Kind.RECEIVE, 5))
        m = await scrape(hub)
        assert ("shelfsync_exceptions_listed", (("kind", "negative_on_hand"),)) not in m


async def test_the_pending_quarantine_gauge_counts_every_held_event_not_the_first_thousand(tmp_path: Path) -> None:
    """Found: the gauge read one page of held events (1,000) and reported its length, so 1,200 held read 1,000 — the
    figure an alert on a growing quarantine watches. It now reads the hub's totals of what is pending."""
    async with running_hub(tmp_path) as hub:
        agent_id, token = await hub.store.add_agent(["S1"])
        who = await hub.store.authenticate(token)
        assert who is not None
        store_now = wall_ms_now() + 3 * 3_600_000  # three hours ahead of the hub: held
        sales = [
            StockEvent(new_event_id(), agent_id, 1, seq, "S1", "A", Kind.SALE, -1,
                       pack_hlc(store_now - 600_000 + seq, 0), store_now - 600_000 + seq, "pos:till")
            for seq in range(1, 1_201)
        ]  # fmt: skip
        result = await hub.store.ingest(who, 1, sales, clock_window_ms=3_600_000, sent_ms=store_now)
        assert [r.code for r in result.rejected] == ["quarantined"] * 1_200

        m = await scrape(hub)
        assert m[("shelfsync_quarantine_pending_events", ())] == 1_200

"""The shelfsync store agent: the outbox, the replicator, the local count cache, scanners and the catalog.

async with Outbox.open(path, agent_id="store-1", location="S001") as outbox:
    async with Replicator(outbox, "http://127.0.0.1:8080", token):
        await outbox.record([Movement("S001", "SKU-1", Kind.SALE, -1, "pos:acme")])

The names below load on first use (PEP 562): ``import agent.outbox`` costs the outbox
and what it imports, not aiohttp, biip and the local API as well.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.catalog import AgentCatalog, Catalog, CatalogError, CatalogItem, CatalogLoad, CatalogProblem
    from agent.config import AgentConfig, AgentSection, ReplicatorSection, ScannerSection, SimulateSection, load_config
    from agent.counts import CountCache, HubCount, LocalCount
    from agent.errors import (
        AgentError,
        ConfigError,
        EventConflict,
        InvalidMovement,
        OutboxClosed,
        OutboxError,
        OutboxMissing,
        OutboxOfAnotherAgent,
    )
    from agent.feed import CountFeed, FeedState
    from agent.outbox import AnswerResult, Movement, Outbox, OutboxStats, Rebound, RecordResult, RejectedEvent
    from agent.replicator import Replicator, ReplicatorState
    from agent.reports import ReportSender, ReportsState
    from agent.scan_journal import JournalEntry, JournalError, ReaderState, ScanJournal
    from agent.scanning import MODES, ModeRouter, ScanOutcome, ScanResult, ScanRouter, ScanService
    from agent.simulate import Simulator
    from protocol import Kind

_WHERE: dict[str, str] = {
    "AgentCatalog": "agent.catalog",
    "Catalog": "agent.catalog",
    "CatalogError": "agent.catalog",
    "CatalogItem": "agent.catalog",
    "CatalogLoad": "agent.catalog",
    "CatalogProblem": "agent.catalog",
    "AgentConfig": "agent.config",
    "AgentSection": "agent.config",
    "ReplicatorSection": "agent.config",
    "ScannerSection": "agent.config",
    "SimulateSection": "agent.config",
    "load_config": "agent.config",
    "CountCache": "agent.counts",
    "HubCount": "agent.counts",
    "LocalCount": "agent.counts",
    "AgentError": "agent.errors",
    "ConfigError": "agent.errors",
    "EventConflict": "agent.errors",
    "InvalidMovement": "agent.errors",
    "OutboxClosed": "agent.errors",
    "OutboxError": "agent.errors",
    "OutboxMissing": "agent.errors",
    "OutboxOfAnotherAgent": "agent.errors",
    "CountFeed": "agent.feed",
    "FeedState": "agent.feed",
    "AnswerResult": "agent.outbox",
    "Movement": "agent.outbox",
    "Outbox": "agent.outbox",
    "OutboxStats": "agent.outbox",
    "Rebound": "agent.outbox",
    "RecordResult": "agent.outbox",
    "RejectedEvent": "agent.outbox",
    "Replicator": "agent.replicator",
    "ReplicatorState": "agent.replicator",
    "ReportSender": "agent.reports",
    "ReportsState": "agent.reports",
    "JournalEntry": "agent.scan_journal",
    "JournalError": "agent.scan_journal",
    "ReaderState": "agent.scan_journal",
    "ScanJournal": "agent.scan_journal",
    "MODES": "agent.scanning",
    "ModeRouter": "agent.scanning",
    "ScanOutcome": "agent.scanning",
    "ScanResult": "agent.scanning",
    "ScanRouter": "agent.scanning",
    "ScanService": "agent.scanning",
    "Simulator": "agent.simulate",
    "Kind": "protocol",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'agent' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "MODES",
    "AgentCatalog",
    "AgentConfig",
    "AgentError",
    "AgentSection",
    "AnswerResult",
    "Catalog",
    "CatalogError",
    "CatalogItem",
    "CatalogLoad",
    "CatalogProblem",
    "ConfigError",
    "CountCache",
    "CountFeed",
    "EventConflict",
    "FeedState",
    "HubCount",
    "InvalidMovement",
    "JournalEntry",
    "JournalError",
    "Kind",
    "LocalCount",
    "ModeRouter",
    "Movement",
    "Outbox",
    "OutboxClosed",
    "OutboxError",
    "OutboxMissing",
    "OutboxOfAnotherAgent",
    "OutboxStats",
    "ReaderState",
    "Rebound",
    "RecordResult",
    "RejectedEvent",
    "Replicator",
    "ReplicatorSection",
    "ReplicatorState",
    "ReportSender",
    "ReportsState",
    "ScanJournal",
    "ScanOutcome",
    "ScanResult",
    "ScanRouter",
    "ScanService",
    "ScannerSection",
    "SimulateSection",
    "Simulator",
    "load_config",
]

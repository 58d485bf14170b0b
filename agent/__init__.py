"""The shelfsync store agent: the outbox, the replicator, the local count cache, scanners and the catalog.

async with Outbox.open(path, agent_id="store-1", location="S001") as outbox:
    async with Replicator(outbox, "http://127.0.0.1:8080", token):
        await outbox.record([Movement("S001", "SKU-1", Kind.SALE, -1, "pos:acme")])
"""

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

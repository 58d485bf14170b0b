"""The shelfsync store agent: the outbox, the replicator, the local count cache.

async with Outbox.open(path, agent_id="store-1", location="S001") as outbox:
    async with Replicator(outbox, "http://127.0.0.1:8080", token):
        await outbox.record([Movement("S001", "SKU-1", Kind.SALE, -1, "pos:acme")])
"""

from agent.config import AgentConfig, AgentSection, ReplicatorSection, SimulateSection, load_config
from agent.counts import CountCache, HubCount, LocalCount
from agent.errors import AgentError, ConfigError, InvalidMovement, OutboxClosed, OutboxError, OutboxMissing
from agent.outbox import AnswerResult, Movement, Outbox, OutboxStats, RecordResult, RejectedEvent
from agent.replicator import Replicator, ReplicatorState
from agent.simulate import Simulator
from protocol import Kind

__all__ = [
    "AgentConfig",
    "AgentError",
    "AgentSection",
    "AnswerResult",
    "ConfigError",
    "CountCache",
    "HubCount",
    "InvalidMovement",
    "Kind",
    "LocalCount",
    "Movement",
    "Outbox",
    "OutboxClosed",
    "OutboxError",
    "OutboxMissing",
    "OutboxStats",
    "RecordResult",
    "RejectedEvent",
    "Replicator",
    "ReplicatorSection",
    "ReplicatorState",
    "SimulateSection",
    "Simulator",
    "load_config",
]

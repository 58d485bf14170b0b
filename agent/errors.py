"""The agent's exceptions: one base, a few kinds a caller may want to tell apart."""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose; its message is one sentence."""


class DiskFull(AgentError):
    """A write the disk refused (full, or a file-size limit): nothing of it was stored, and it works again once
    there is room, not by itself in a moment. Mixed into a store's own failure; the local API answers it 507."""


def disk_full(err: BaseException | None) -> bool:
    """Whether ``err``, or an error it was raised from, is a write the disk refused (``DiskFull``)."""
    while err is not None:
        if isinstance(err, DiskFull):
            return True
        err = err.__cause__
    return False


class ConfigError(AgentError):
    """The configuration file is missing, unreadable or wrong."""


class OutboxError(AgentError):
    """The outbox refused a write or could not be read."""


class OutboxFull(OutboxError, DiskFull):
    """The outbox could not be written: the disk is full (or a file-size limit); the message says what to do."""


class OutboxClosed(OutboxError):
    def __init__(self, path: str) -> None:
        super().__init__(f"the outbox {path} is closed")


class OutboxMissing(OutboxError):
    def __init__(self, path: str) -> None:
        super().__init__(
            f"there is no outbox at {path} yet; start the agent once with `shelfsync-agent run` to create it"
        )


class OutboxOfAnotherAgent(OutboxError):
    """The outbox was created for another agent id than the configuration's; ``recovery`` says what to do."""

    def __init__(
        self,
        path: str,
        outbox_agent: str,
        configured_agent: str,
        waiting: int,
        *,
        outbox_location: str | None = None,
        configured_location: str | None = None,
    ) -> None:
        self.path, self.outbox_agent, self.configured_agent, self.waiting = path, outbox_agent, configured_agent, waiting
        self.outbox_location, self.configured_location = outbox_location, configured_location
        super().__init__(self.recovery("shelfsync-agent rebind"))

    def recovery(self, command: str) -> str:
        """One sentence naming both ids and ``command``, the rebind command line to run."""
        if self.outbox_location and self.configured_location and self.outbox_location != self.configured_location:
            # Another id and another location: most likely another store's agent on the same data_dir (two
            # configurations in one folder, a folder copied from another store), which a rebind would take over.
            return (
                f"the outbox {self.path} belongs to agent {self.outbox_agent!r} at {self.outbox_location}, not"
                f" {self.configured_agent!r} at {self.configured_location} as this configuration says; if this is"
                " another store's agent, give it its own data_dir (two agents never share an outbox); if it is this"
                f" store's agent under a new id, run `{command}` to send its {self.waiting:,} waiting movements"
                f" as {self.configured_agent!r}"
            )
        return (
            f"the outbox {self.path} belongs to agent {self.outbox_agent!r}, not {self.configured_agent!r} as this"
            f" configuration says; to send its {self.waiting:,} waiting movements as {self.configured_agent!r}, run"
            f" `{command}` (or set id back to {self.outbox_agent!r})"
        )


class InvalidMovement(OutboxError):
    """A movement that breaks the event contract; nothing of its batch was recorded."""


class EventConflict(InvalidMovement):
    """An event id already recorded with different content (docs/design.md: an error, not a duplicate).

    Nothing of the batch was recorded. A producer that derives ids from its
    input (the POS import) tells "this row changed since it was first recorded"
    from an outbox that cannot be written by catching this.
    """

"""Zeroconf as both sides speak it: the service types, the TXT keys, and how a TXT record is read.

* The hub announces ``_shelfsync-hub._tcp`` with TXT ``id`` (the hub's id, from its database, so it stays the
  same when the hub moves) and ``v`` (the TXT version, ``HUB_TXT_VERSION``). Agents match a hub by that id and
  treat its address as data (hub/discovery.py announces, agent/discovery.py follows).
* The agent announces its local API as ``_shelfsync-agent._tcp`` with TXT ``id`` (agent id), ``location`` and
  ``path`` (the handheld page), so handhelds find the store's agent.

A TXT record arrives as bytes keys and bytes (or None) values; ``read_hub_txt`` and ``read_agent_txt`` turn one
into a value, or None when it lacks the id. Text that is not UTF-8 is read with U+FFFD in place of the bad bytes.
An unknown key is ignored, so a newer side may add keys without breaking an older one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

HUB_SERVICE_TYPE: Final = "_shelfsync-hub._tcp.local."
AGENT_SERVICE_TYPE: Final = "_shelfsync-agent._tcp.local."
INSTANCE_MAX_LEN: Final = 63  # a DNS label

# TXT keys
TXT_ID: Final = "id"  # both: the announcer's stable id
TXT_VERSION: Final = "v"  # hub: the TXT version
TXT_LOCATION: Final = "location"  # agent: its location code
TXT_PATH: Final = "path"  # agent: the handheld page of its local API

HUB_TXT_VERSION: Final = "1"

TxtProperties = Mapping[bytes, bytes | None]


@dataclass(frozen=True, slots=True)
class HubTxt:
    """A hub's TXT record: its id and TXT version ("" when the record has none)."""

    hub_id: str
    version: str = HUB_TXT_VERSION


@dataclass(frozen=True, slots=True)
class AgentTxt:
    """An agent's TXT record: its id, location and the path of its handheld page."""

    agent_id: str
    location: str = ""
    path: str = "/"


def instance_name(role: str, ident: str) -> str:
    """The service instance name of the ``role`` ("hub", "agent") with id ``ident``, cut to one DNS label."""
    return f"shelfsync {role} {ident}"[:INSTANCE_MAX_LEN]


def hub_txt(hub: HubTxt) -> dict[str, str]:
    """The TXT properties a hub announces."""
    return {TXT_ID: hub.hub_id, TXT_VERSION: hub.version}


def agent_txt(agent: AgentTxt) -> dict[str, str]:
    """The TXT properties an agent announces."""
    return {TXT_ID: agent.agent_id, TXT_LOCATION: agent.location, TXT_PATH: agent.path}


def _text(properties: TxtProperties, key: str) -> str:
    raw = properties.get(key.encode("ascii"))
    return "" if raw is None else raw.decode("utf-8", "replace")


def read_hub_txt(properties: TxtProperties | None) -> HubTxt | None:
    """The hub a TXT record names, or None when it names none (no ``id``, or an empty one)."""
    props = properties or {}
    hub_id = _text(props, TXT_ID)
    return HubTxt(hub_id, _text(props, TXT_VERSION)) if hub_id else None


def read_agent_txt(properties: TxtProperties | None) -> AgentTxt | None:
    """The agent a TXT record names, or None when it names none (no ``id``, or an empty one)."""
    props = properties or {}
    agent_id = _text(props, TXT_ID)
    if not agent_id:
        return None
    return AgentTxt(agent_id, _text(props, TXT_LOCATION), _text(props, TXT_PATH) or "/")

"""Starting the staff side of a running agent: the session store, the local API, the zeroconf announcement.

Called by ``shelfsync-agent run`` with its exit stack, so everything started
here stops with the agent, in reverse order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from agent.discovery import AgentAdvertiser, DiscoveryError, agent_mdns_name, local_addresses
from agent.localapi.app import LocalApiContext
from agent.localapi.auth import StaffDirectory
from agent.localapi.server import LocalApiServer
from agent.outbox import Outbox
from agent.sessions import FILENAME as SESSIONS_FILENAME
from agent.sessions import ItemLookup, SessionManager, SessionStore

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.pos import PosFolderState

log = logging.getLogger(__name__)


async def start_staff_services(
    stack: AsyncExitStack,
    config: AgentConfig,
    outbox: Outbox,
    catalog: ItemLookup | None,
    hub_url: Callable[[], str | None],
    pos_state: Callable[[], PosFolderState | None] = lambda: None,
) -> SessionManager | None:
    """Open the sessions (finishing closes a crash interrupted) and serve the local API if it is enabled.

    Returns the session manager for the scan router, or None when sessions are
    off (no ``[localapi]`` and no session file from an earlier run).
    """
    api, discovery = config.localapi, config.discovery
    path = api.sessions_db or config.agent.outbox.with_name(SESSIONS_FILENAME)
    if not api.enabled and not path.exists():
        return None
    store = await stack.enter_async_context(SessionStore.open(path, synchronous=config.agent.synchronous))
    if outbox.reserve is not None and outbox.reserve.on_disk_of(path):
        store.reserve = outbox.reserve  # a line is a scan: a full disk gives back the agent's disk reserve first
    sessions = SessionManager(store, outbox, catalog=catalog)
    await sessions.recover()
    if not api.enabled:
        return sessions
    advertised = discovery.enabled and discovery.advertise
    context = LocalApiContext(
        sessions=sessions,
        outbox=outbox,
        staff=StaffDirectory(dict(api.staff), login_ttl_s=api.login_ttl_h * 3600),
        hub_url=hub_url,
        pos_state=pos_state,
        readers=tuple(s.id for s in config.scanners),
        login_ttl_s=api.login_ttl_h * 3600,
        allowed_hosts=api.allowed_hosts + ((agent_mdns_name(config.agent.id),) if advertised else ()),
        same_code_s=api.same_code_s,
    )
    server = await stack.enter_async_context(LocalApiServer(context, api.host, api.port))
    if advertised:
        try:
            addresses = list(discovery.interfaces) or local_addresses(api.host)
            advertiser = AgentAdvertiser(
                config.agent.id,
                config.agent.location,
                server.port,
                addresses=addresses,
                interfaces=list(discovery.interfaces) or None,
            )
            await stack.enter_async_context(advertiser)
        except DiscoveryError as err:  # the API still serves; handhelds need its address typed in
            log.warning("The local API is not announced by zeroconf: %s", err)
    return sessions

"""Zeroconf at the agent: find the hub (``_shelfsync-hub._tcp``) and announce this agent (``_shelfsync-agent._tcp``).

Identity is stable, addresses are data (docs/design.md). A hub is known by
the ``id`` in its TXT record. With ``[discovery] hub_id`` set, only that hub
is followed; without it, the first hub found is adopted and followed from then
on (another hub on the network is ignored, with a warning once). Whenever the
followed hub is announced at a new address or port, ``on_hub`` is called with
the new location — the agent passes it to the replicator
(``Replicator.update_credentials(token, url)``). A hub that goes away is only
logged: the replicator keeps its last address and backs off until the hub
comes back, wherever it comes back.

The agent announces its local API as ``_shelfsync-agent._tcp`` with TXT
``id`` (agent id), ``location`` and ``path`` (the handheld page), so
handhelds can find the store's agent. Service types, TXT keys and how a TXT
record is read are protocol.discovery's, shared with the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Self

import ifaddr
from zeroconf import InterfaceChoice, IPVersion, NonUniqueNameException, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from agent.errors import AgentError
from protocol.discovery import (
    AGENT_SERVICE_TYPE,
    HUB_SERVICE_TYPE,
    AgentTxt,
    agent_txt,
    instance_name,
    read_hub_txt,
)

log = logging.getLogger(__name__)

RESOLVE_TIMEOUT_MS = 3000


class DiscoveryError(AgentError):
    """Zeroconf could not be started or used; the message says why."""


@dataclass(frozen=True, slots=True)
class HubLocation:
    """Where the hub with ``hub_id`` answers now."""

    hub_id: str
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


OnHub = Callable[[HubLocation], Awaitable[None] | None]


def _zeroconf(interfaces: Sequence[str] | None) -> AsyncZeroconf:
    try:
        return AsyncZeroconf(
            interfaces=list(interfaces) if interfaces else InterfaceChoice.All, ip_version=IPVersion.V4Only
        )
    except OSError as err:
        raise DiscoveryError(
            f"zeroconf could not start on {', '.join(interfaces or ['all interfaces'])}: {err}"
        ) from err


class HubFinder:
    """Browses for hubs and follows one. ``async with HubFinder(on_hub, hub_id=...) as finder:``."""

    def __init__(
        self,
        on_hub: OnHub | None = None,
        *,
        hub_id: str | None = None,
        interfaces: Sequence[str] | None = None,
    ) -> None:
        self._on_hub = on_hub
        self.wanted_id = hub_id
        self.interfaces = interfaces
        self.current: HubLocation | None = None
        self.changed = asyncio.Condition()
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ignored: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def hub_id(self) -> str | None:
        """The id followed: the configured one, or the first hub adopted."""
        return self.wanted_id or (self.current.hub_id if self.current else None)

    async def start(self) -> None:
        if self._zc is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._zc = _zeroconf(self.interfaces)
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, [HUB_SERVICE_TYPE], handlers=[self._on_change])
        log.info("Looking for %s by zeroconf.", f"hub {self.wanted_id}" if self.wanted_id else "a shelfsync hub")

    async def stop(self) -> None:
        """Stop browsing. Safe twice."""
        browser, self._browser = self._browser, None
        zc, self._zc = self._zc, None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if browser is not None:
            await browser.async_cancel()
        if zc is not None:
            await zc.async_close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_for(self, predicate: Callable[[HubLocation | None], bool]) -> HubLocation | None:
        """Wait until the followed location satisfies ``predicate`` (bound it with a timeout)."""
        async with self.changed:
            await self.changed.wait_for(lambda: predicate(self.current))
            return self.current

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            if self.current is not None:
                log.info("A hub announcement went away (%s); the replicator keeps the last address.", name)
            return
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._spawn, name)

    def _spawn(self, name: str) -> None:
        if self._zc is None:
            return
        task = asyncio.get_running_loop().create_task(self._resolve(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, name: str) -> None:
        if self._zc is None:
            return
        info = AsyncServiceInfo(HUB_SERVICE_TYPE, name)
        if not await info.async_request(self._zc.zeroconf, RESOLVE_TIMEOUT_MS):
            log.debug("The hub announcement %s did not resolve in time.", name)
            return
        txt = read_hub_txt(info.properties)
        addresses = info.parsed_addresses(IPVersion.V4Only)
        if txt is None or not addresses or not info.port:
            log.warning("Ignoring the hub announcement %s: it lacks an id, an address or a port.", name)
            return
        hub_id = txt.hub_id
        followed = self.hub_id
        if followed is not None and hub_id != followed:
            if hub_id not in self._ignored:
                self._ignored.add(hub_id)
                log.warning(
                    "Ignoring hub %s found by zeroconf: this agent follows hub %s (set [discovery] hub_id to choose).",
                    hub_id,
                    followed,
                )
            return
        current = self.current
        host = current.host if current is not None and current.host in addresses else addresses[0]
        location = HubLocation(hub_id, host, info.port)
        if location == current:
            return
        if current is None:
            log.info("Found hub %s by zeroconf at %s.", hub_id, location.url)
        else:
            log.info("Hub %s moved from %s to %s; following it.", hub_id, current.url, location.url)
        self.current = location
        if self._on_hub is not None:
            try:
                result = self._on_hub(location)
                if result is not None:
                    await result
            except Exception:  # a failing listener must not stop discovery; the next change calls it again
                log.exception("Passing the address of hub %s on failed.", hub_id)
        async with self.changed:
            self.changed.notify_all()


class AgentAdvertiser:
    """Announces this agent's local API as ``_shelfsync-agent._tcp`` until stopped."""

    def __init__(
        self,
        agent_id: str,
        location: str,
        port: int,
        *,
        addresses: Sequence[str],
        interfaces: Sequence[str] | None = None,
        path: str = "/",
    ) -> None:
        if not addresses:
            raise DiscoveryError("cannot announce the agent: no IPv4 address to announce")
        self.agent_id = agent_id
        self.location = location
        self.port = port
        self.addresses = list(addresses)
        self.interfaces = interfaces
        self.path = path
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None

    async def start(self) -> None:
        if self._zc is not None:
            return
        info = AsyncServiceInfo(
            AGENT_SERVICE_TYPE,
            f"{instance_name('agent', self.agent_id)}.{AGENT_SERVICE_TYPE}",
            addresses=[socket.inet_aton(a) for a in self.addresses],
            port=self.port,
            properties=agent_txt(AgentTxt(self.agent_id, self.location, self.path)),
            server=f"{agent_mdns_name(self.agent_id)}.",
        )
        zc = _zeroconf(self.interfaces)
        try:
            await (await zc.async_register_service(info, allow_name_change=True))
        except (OSError, NonUniqueNameException) as err:
            await zc.async_close()
            raise DiscoveryError(f"the agent could not announce itself by zeroconf: {err}") from err
        self._zc, self._info = zc, info
        log.info("Announcing the local API by zeroconf as %r on port %d.", info.name, self.port)

    async def stop(self) -> None:
        """Withdraw the announcement. Safe twice."""
        zc, self._zc = self._zc, None
        if zc is None:
            return
        try:
            if self._info is not None:
                await (await zc.async_unregister_service(self._info))
        finally:
            await zc.async_close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def agent_mdns_name(agent_id: str) -> str:
    """The ``.local`` host name an agent announces its local API under (the local API answers to it)."""
    return f"shelfsync-agent-{_label(agent_id)}.local"


def _label(text: str) -> str:
    """``text`` as one DNS label: letters, digits and hyphens, at most 40 characters."""
    return "".join(c if c.isascii() and c.isalnum() else "-" for c in text)[:40].strip("-") or "agent"


def local_addresses(host: str) -> list[str]:
    """The IPv4 addresses to announce for a server listening on ``host`` (every non-loopback one for 0.0.0.0)."""
    if host not in ("", "0.0.0.0"):
        try:
            return [str(ipaddress.IPv4Address(socket.gethostbyname(host)))]
        except (OSError, ValueError) as err:
            raise DiscoveryError(f"cannot announce {host!r}: it is not an IPv4 address ({err})") from err
    return [
        ip.ip
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if isinstance(ip.ip, str) and not ipaddress.IPv4Address(ip.ip).is_loopback
    ]

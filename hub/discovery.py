"""Zeroconf: the hub announces itself on the store network as ``_shelfsync-hub._tcp``.

The TXT record carries the hub's id (``id``, from the database, so it stays
the same when the hub moves to another machine or port) and the TXT version
(``v``); the service type and the keys are protocol.discovery's. Agents match a
hub by that id and treat its address as data: when the hub comes back
elsewhere, they follow it (agent/discovery.py).

Turned on by the ``advertise`` setting. The addresses announced are the one
the hub listens on, or, when it listens on every interface (0.0.0.0), every
IPv4 address of the machine but loopback; the announcement is made on the
same interfaces.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Sequence
from typing import Self

from hub.storage.base import HubError
from protocol.discovery import HUB_SERVICE_TYPE, HubTxt, hub_txt, instance_name

try:
    import ifaddr
    from zeroconf import InterfaceChoice, IPVersion, NonUniqueNameException
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf
except ImportError as err:  # a hub installed without zeroconf starts; only ``advertise`` needs it
    NO_ZEROCONF: str | None = (
        f"advertise needs the zeroconf package, which cannot be loaded ({err}); install shelfsync[hub,discovery]"
        " or turn advertise off"
    )
else:
    NO_ZEROCONF = None

log = logging.getLogger(__name__)


class DiscoveryError(HubError):
    """The hub could not announce itself; the message says why."""


def advertised_addresses(host: str) -> list[str]:
    """The IPv4 addresses to announce for a hub listening on ``host``."""
    if host not in ("", "0.0.0.0"):
        try:
            address = ipaddress.IPv4Address(socket.gethostbyname(host))
        except (OSError, ValueError) as err:
            raise DiscoveryError(f"cannot announce the hub: {host!r} is not an IPv4 address ({err})") from err
        return [str(address)]
    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ipaddress.IPv4Address(ip.ip).is_loopback:
                found.append(ip.ip)
    return found


class HubAdvertiser:
    """``async with HubAdvertiser(hub_id, port, addresses=[...]):`` announces the hub until the block ends."""

    def __init__(
        self,
        hub_id: str,
        port: int,
        *,
        addresses: Sequence[str],
        interfaces: Sequence[str] | None = None,
    ) -> None:
        if not hub_id:
            raise DiscoveryError("cannot announce the hub: its database holds no hub id")
        if not addresses:
            raise DiscoveryError("cannot announce the hub: this machine has no IPv4 address to announce")
        self.hub_id = hub_id
        self.port = port
        self.addresses = list(addresses)
        self.interfaces = list(interfaces) if interfaces is not None else None
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None

    @property
    def name(self) -> str:
        return self._info.name if self._info is not None else ""

    async def start(self) -> None:
        if self._zc is not None:
            return
        info = AsyncServiceInfo(
            HUB_SERVICE_TYPE,
            f"{instance_name('hub', self.hub_id)}.{HUB_SERVICE_TYPE}",
            addresses=[socket.inet_aton(a) for a in self.addresses],
            port=self.port,
            properties=hub_txt(HubTxt(self.hub_id)),
            server=f"shelfsync-hub-{self.hub_id[:12]}.local.",
        )
        zc = AsyncZeroconf(
            interfaces=self.interfaces if self.interfaces is not None else InterfaceChoice.All,
            ip_version=IPVersion.V4Only,
        )
        try:
            await (await zc.async_register_service(info, allow_name_change=True))
        except (OSError, NonUniqueNameException) as err:
            await zc.async_close()
            raise DiscoveryError(f"the hub could not announce itself by zeroconf: {err}") from err
        self._zc, self._info = zc, info
        log.info(
            "Announcing hub %s by zeroconf as %r at %s port %d.",
            self.hub_id,
            info.name,
            ", ".join(self.addresses),
            self.port,
        )

    async def stop(self) -> None:
        """Withdraw the announcement (a goodbye packet). Safe twice."""
        zc, self._zc = self._zc, None
        if zc is None:
            return
        try:
            if self._info is not None:
                await (await zc.async_unregister_service(self._info))
        finally:
            await zc.async_close()
        log.info("Stopped announcing hub %s.", self.hub_id)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def start_advertiser(hub_id: str, host: str, port: int) -> HubAdvertiser:
    """Announce a hub listening on ``host``:``port`` (on the interfaces of the announced addresses)."""
    if NO_ZEROCONF is not None:
        raise DiscoveryError(NO_ZEROCONF)
    addresses = advertised_addresses(host)
    interfaces = None if host in ("", "0.0.0.0") else addresses
    advertiser = HubAdvertiser(hub_id, port, addresses=addresses, interfaces=interfaces)
    await advertiser.start()
    return advertiser

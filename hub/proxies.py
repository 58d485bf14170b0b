"""The client's address behind a reverse proxy: taken from the proxy's header only when the proxy is trusted.

Behind nginx or Caddy every connection comes from the proxy, so the hub saw every client as the proxy's address:
the budget of refused attempts it keeps per client address (hub.ratelimit.RefusedAttempts) was one budget for
everyone, and its logs and the ``peer`` kept with an agent's sync named the proxy. A proxy says whom it serves in
a header: ``X-Forwarded-For`` (nginx's ``$proxy_add_x_forwarded_for``, Caddy's default), or RFC 7239's
``Forwarded: for=…`` (``trusted_proxy_header``); each proxy on the way appends the address it was reached from.

Anyone can send those headers, so they are read only when the connection comes from an address of
``trusted_proxies`` (addresses and CIDR networks; empty by default: no header is read, as before). The client is
then the rightmost address in the header that is not itself a trusted proxy (all of them trusted: the leftmost):
what a client wrote into the header itself stands left of what its proxy appended, and is never taken. The scheme
the client used (``X-Forwarded-Proto``, or the ``proto=`` of the same ``Forwarded`` element) is taken likewise, so
the dashboard's session cookie is ``Secure`` behind a proxy that ends TLS.

A header from a trusted proxy that cannot be read (an element that is not an IP address: ``unknown``, an
obfuscated name, garbage) leaves the request counted by the proxy's address, and is logged once a minute with a
count; it never fails the request. ``client_of`` is the one place the hub asks whom a request comes from; the
answer is kept with the request, so the Expect handler (hub.heads), the middlewares and the access log agree.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aiohttp import web

from protocol.logsafety import RepeatLog, one_line

log = logging.getLogger(__name__)

X_FORWARDED_FOR = "X-Forwarded-For"
X_FORWARDED_PROTO = "X-Forwarded-Proto"
FORWARDED = "Forwarded"
HEADERS = (X_FORWARDED_FOR, FORWARDED)  # what ``trusted_proxy_header`` may name
SCHEMES = frozenset({"http", "https"})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class UnreadableHeader(ValueError):
    """A trusted proxy's header names no address where the client's should be; the message says what it holds."""


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``trusted_proxies`` as networks: each an address (``10.0.0.5``, ``::1``) or a CIDR network (``10.0.0.0/8``);
    a ValueError names the first that is neither."""
    networks: list[IPNetwork] = []
    for value in values:
        try:
            network = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise ValueError(
                f"{value[:80]!r} is not an IP address or a CIDR network (like 10.0.0.5 or 10.0.0.0/8)"
            ) from None
        networks.append(network)
    return tuple(networks)


def header_name(value: str) -> str:
    """``trusted_proxy_header`` spelt as ``HEADERS`` spells it (any case); a ValueError for another header."""
    for name in HEADERS:
        if value.strip().lower() == name.lower():
            return name
    raise ValueError(f"must be {' or '.join(HEADERS)}, got {value[:80]!r}")


def address_of(text: str) -> IPAddress | None:
    """The IP address in one element of a proxy's header: ``192.0.2.7``, ``192.0.2.7:4711``, ``2001:db8::1``,
    ``[2001:db8::1]``, ``[2001:db8::1]:4711`` (an IPv4-mapped IPv6 address as IPv4); None for anything else."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]")
        if not bracket or (port and not (port.startswith(":") and port[1:].isdigit())):
            return None
        text = host
    elif text.count(":") == 1:  # IPv4 with a port (an IPv6 address has two colons at least)
        text, _, port = text.partition(":")
        if not port.isdigit():
            return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True, slots=True)
class Client:
    """Whom a request comes from: ``address`` (the peer's, unless a trusted proxy said another), and ``scheme``,
    the one the client used as a trusted proxy says it (``http`` or ``https``; None: not said)."""

    address: str | None
    scheme: str | None = None


class TrustedProxies:
    """The proxies (``networks``) whose ``header`` the hub reads for the client's address."""

    def __init__(self, networks: Sequence[IPNetwork], header: str = X_FORWARDED_FOR) -> None:
        self.networks = tuple(networks)
        self.header = header_name(header)
        self.unreadable = RepeatLog(
            log, "took the proxy's address for",
            f"request whose {self.header} header names no client address|"
            f"requests whose {self.header} header names no client address",
            level=logging.WARNING,
        )  # fmt: skip

    def trusts(self, ip: IPAddress | None) -> bool:
        return ip is not None and any(ip in network for network in self.networks)

    def resolve(self, request: web.BaseRequest) -> Client:
        """Whom ``request`` comes from: its peer, or the client its trusted proxy names (see the module)."""
        peer = request.remote
        if not self.networks or not self.trusts(address_of(peer or "")):
            return Client(peer)
        try:
            if self.header == FORWARDED:
                return self._from_forwarded(request) or Client(peer)
            return self._from_x_forwarded(request) or Client(peer)
        except UnreadableHeader as err:
            self.unreadable.record(peer, str(err))
            return Client(peer)

    def _client(self, hops: Sequence[str]) -> tuple[int, IPAddress]:
        """The index and address of the client among ``hops`` (the header's elements, the nearest proxy's last):
        the rightmost that is not a trusted proxy, else the leftmost."""
        for index in range(len(hops) - 1, -1, -1):
            ip = address_of(hops[index])
            if ip is None:
                raise UnreadableHeader(f"{one_line(hops[index], 60)!r} is not an IP address")
            if not self.trusts(ip) or index == 0:
                return index, ip
        raise AssertionError("unreachable: hops is not empty")

    def _from_x_forwarded(self, request: web.BaseRequest) -> Client | None:
        values = request.headers.getall(X_FORWARDED_FOR, [])
        if not "".join(values).strip():
            return None  # the proxy named nobody: its own request
        hops = [hop.strip() for hop in ",".join(values).split(",")]
        index, ip = self._client(hops)
        protos = [p.strip().lower() for p in ",".join(request.headers.getall(X_FORWARDED_PROTO, [])).split(",")]
        protos = [p for p in protos if p]
        # One value per hop: the client's; else the one the nearest proxy set (nginx's $scheme replaces any other)
        proto = (protos[index] if len(protos) == len(hops) else protos[-1]) if protos else None
        return Client(str(ip), proto if proto in SCHEMES else None)

    def _from_forwarded(self, request: web.BaseRequest) -> Client | None:
        elements = request.forwarded  # aiohttp's RFC 7239 parser: one mapping per element, empty for garbage
        if not elements:
            return None
        hops = [element.get("for", "") for element in elements]
        index, ip = self._client(hops)
        proto = elements[index].get("proto", "").lower()
        return Client(str(ip), proto if proto in SCHEMES else None)


PROXIES_KEY = web.AppKey("trusted_proxies", TrustedProxies)
CLIENT_KEY = web.RequestKey("client", Client)  # whom the request comes from, once asked


def setup(app: web.Application, trusted_proxies: Sequence[str], header: str = X_FORWARDED_FOR) -> None:
    """Read ``header`` of the requests that come from ``trusted_proxies`` (none: every request is its peer's)."""
    if trusted_proxies:
        proxies = app[PROXIES_KEY] = TrustedProxies(parse_networks(trusted_proxies), header)

        async def flush(_: web.Application) -> None:
            proxies.unreadable.flush()

        app.on_cleanup.append(flush)


def client(request: web.BaseRequest) -> Client:
    """Whom ``request`` comes from (see the module), worked out once a request."""
    known: Client | None = request.get(CLIENT_KEY)
    if known is not None:
        return known
    proxies = None
    if isinstance(request, web.Request) and request.match_info is not None:  # routed: it has an app
        proxies = request.config_dict.get(PROXIES_KEY)
    found = request[CLIENT_KEY] = Client(request.remote) if proxies is None else proxies.resolve(request)
    return found


def client_of(request: web.BaseRequest) -> str | None:
    """The address ``request`` comes from: its client's behind a trusted proxy, else its peer's (``remote``)."""
    return client(request).address


def forwarded_https(request: web.BaseRequest) -> bool:
    """Whether a trusted proxy says the client reached it over HTTPS."""
    return client(request).scheme == "https"
